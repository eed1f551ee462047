"""Keys (format, checksum, the replica's key table) and the route × role matrix."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.routing import APIRoute

from serve_app import access
from serve_app.auth import (
    CHECK_LENGTH,
    KeyRecord,
    KeyRing,
    Refusal,
    Role,
    hash_key,
    key_id_of,
    key_prefix,
    new_key,
)
from serve_app.openapi import X_ROLES

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def record(key: str, key_id: str, role: Role = Role.SERVICE, **fields: object) -> KeyRecord:
    values: dict[str, object] = {
        "key_id": key_id,
        "key_hash": hash_key(key),
        "role": role,
        "programs": None,
        "expires_at": None,
        "rate": None,
        "revoked": False,
    }
    values.update(fields)
    return KeyRecord(**values)  # type: ignore[arg-type]


def test_a_new_key_names_itself_and_carries_a_checksum() -> None:
    key = new_key("abc123")
    assert key.startswith("pts_abc123_") and len(key) == len("pts_abc123_") + 36
    assert key_id_of(key) == "abc123"
    assert key_prefix("abc123") == "pts_abc123"
    # Any one character changed breaks the checksum: no lookup for a made-up key.
    for position in range(len("pts_abc123_"), len(key)):
        replacement = "A" if key[position] != "A" else "B"
        assert key_id_of(key[:position] + replacement + key[position + 1 :]) is None
    assert key_id_of(key[:-CHECK_LENGTH] + "000000") is None or key.endswith("000000")
    assert new_key() != new_key() and key_id_of(new_key()) is not None


def test_the_ring_finds_keys_by_id_or_by_hash_and_refuses_the_rest() -> None:
    ring = KeyRing()
    key = new_key("svc1")
    legacy = "pts_e2e_" + "ab" * 16  # a key of another form (POINTS_ADMIN_KEY, pre-0006)
    ring.apply([record(key, "svc1"), record(legacy, "admin", Role.ADMIN)])
    assert isinstance(found := ring.verify(key, NOW), KeyRecord) and found.key_id == "svc1"
    assert isinstance(found := ring.verify(legacy, NOW), KeyRecord) and found.role is Role.ADMIN
    assert ring.verify(new_key("svc1"), NOW) is Refusal.UNKNOWN  # right id, other secret
    assert ring.verify(new_key("nobody"), NOW) is Refusal.UNKNOWN
    assert ring.verify(key[:-1] + ("x" if key[-1] != "x" else "y"), NOW) is Refusal.MALFORMED
    assert ring.verify("", NOW) is Refusal.MALFORMED
    assert ring.verify("x" * 300, NOW) is Refusal.MALFORMED
    assert ring.verify("pts_whatever", NOW) is Refusal.UNKNOWN
    # A key of this form installed under another id (POINTS_ADMIN_KEY): found by its hash.
    elsewhere = new_key("made4another")
    ring.apply([record(elsewhere, "admin", Role.ADMIN)])
    assert isinstance(found := ring.verify(elsewhere, NOW), KeyRecord) and found.key_id == "admin"


def test_revocation_and_expiry_take_effect_in_the_ring() -> None:
    ring = KeyRing()
    key = new_key("k1")
    ring.apply([record(key, "k1", expires_at=NOW + timedelta(seconds=5))])
    assert isinstance(ring.verify(key, NOW), KeyRecord)
    assert ring.verify(key, NOW + timedelta(seconds=5)) is Refusal.EXPIRED
    ring.apply([record(key, "k1", revoked=True)])
    assert ring.verify(key, NOW) is Refusal.UNKNOWN and len(ring) == 0
    # A key replaced under its id (the admin key installed again) drops the old hash.
    other = "pts_legacy_" + "cd" * 16
    ring.apply([record(other, "admin", Role.ADMIN)])
    newer = "pts_legacy_" + "ef" * 16
    ring.apply([record(newer, "admin", Role.ADMIN)])
    assert ring.verify(other, NOW) is Refusal.UNKNOWN
    assert isinstance(ring.verify(newer, NOW), KeyRecord)


def test_program_scope() -> None:
    scoped = record("k", "k", programs=frozenset({"shop"}))
    assert scoped.sees("shop") and not scoped.sees("school")
    assert record("k", "k").sees("anything")


def _app_routes() -> set[tuple[str, str]]:
    from serve_app.app import create_app

    found = set()
    for route in create_app().routes:
        if isinstance(route, APIRoute) and route.include_in_schema:  # not /docs, /redoc
            found |= {(method, route.path_format) for method in route.methods}
    return found


def test_the_matrix_and_the_app_name_the_same_routes() -> None:
    routes = _app_routes()
    assert routes - set(access.ACCESS) == set(), "a route with no row in ACCESS is refused"
    assert set(access.ACCESS) - routes == set(), "a row in ACCESS for no route"


@pytest.mark.parametrize(
    ("method", "path", "roles"),
    [
        ("POST", "/v1/keys", {"admin"}),
        ("PUT", "/v1/admin/topology", {"admin"}),
        (
            "POST",
            "/v1/programs/{program_id}/members/{member_id}/debits",
            {"admin", "operator", "service"},
        ),
        ("PUT", "/v1/programs/{program_id}", {"admin", "operator"}),
        ("POST", "/v1/programs/{program_id}/redemptions", {"admin", "service"}),
        (
            "GET",
            "/v1/programs/{program_id}/members/{member_id}",
            {"admin", "operator", "service", "viewer"},
        ),
        ("GET", "/v1/programs/{program_id}/rules", {"admin", "operator", "viewer"}),
        ("GET", "/healthz", set()),
    ],
)
def test_the_matrix_says_what_the_issue_says(method: str, path: str, roles: set[str]) -> None:
    assert {role.value for role in access.allowed(method, path) or ()} == roles


def test_viewers_only_read_and_every_write_needs_more_than_a_viewer() -> None:
    for (method, _path), roles in access.ACCESS.items():
        if method != "GET" and roles:
            assert Role.VIEWER not in roles
        if method == "GET" and roles:
            assert Role.ADMIN in roles


def test_the_openapi_document_lists_each_routes_roles() -> None:
    from serve_app.app import create_app

    document = create_app().openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            roles = access.allowed(method.upper(), path)
            if roles:
                assert set(operation[X_ROLES]) == {role.value for role in roles}
                assert {"401", "403", "429", "503"} <= set(operation["responses"])
                assert "RateLimit-Remaining" in operation["responses"]["429"]["headers"]
                if "{program_id}" in path:
                    assert "404" in operation["responses"]
            else:
                assert X_ROLES not in operation


def test_the_docs_table_is_the_matrix() -> None:
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "access.md").read_text()
    assert access.markdown_table() in docs, "run: python -m serve_app.access, paste into docs"
