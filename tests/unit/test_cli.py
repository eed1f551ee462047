"""The CLI's own logic: start-up banner, admin key provenance, `programs list` paging.

No Ray, no database: the admin key's database calls are replaced, and the HTTP API is an
httpx.MockTransport (the CLI's own client, nothing else).
"""

import io
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from serve_app import cli, runtime
from serve_app.runtime import AdminKeySource
from serve_app.settings import load_settings

LONG_URL = "http://points-ingress.a-rather-long-internal-domain.example.com:18000/" + "x" * 90


def test_piped_banner_keeps_long_urls_on_one_line() -> None:
    buffer = io.StringIO()  # not a terminal: Rich would wrap at 80 columns
    out = cli.make_console(buffer)
    assert not out.is_terminal
    cli.print_banner(
        out,
        LONG_URL,
        "postgresql://points:secret@db.example.com:5432/points",
        "redis://127.0.0.1:6379/0",
        runtime.admin_key_note("k" * 43, AdminKeySource.GENERATED, Path("/a/long/path/admin_key")),
    )
    lines = buffer.getvalue().splitlines()
    assert f"Points is up at {LONG_URL}" in lines
    assert f"  API docs:   {LONG_URL}/docs" in lines
    assert f"  Console:    {LONG_URL}/admin (sign in with the admin key)" in lines
    assert "  Database:   postgresql://points:***@db.example.com:5432/points" in lines
    assert any(line.startswith("  Admin key:  " + "k" * 43) for line in lines)
    assert len(lines) == 7


def test_admin_key_note_says_where_the_key_came_from() -> None:
    key_file = Path("/data/admin_key")
    new = runtime.admin_key_note("secret-key", AdminKeySource.GENERATED, key_file)
    assert "secret-key" in new and "generated now" in new and str(key_file) in new
    from_file = runtime.admin_key_note("secret-key", AdminKeySource.KEY_FILE, key_file)
    assert from_file == f"read from the key file {key_file}"
    given = runtime.admin_key_note("secret-key", AdminKeySource.ENVIRONMENT, key_file)
    assert given == "given by POINTS_ADMIN_KEY"
    assert "secret-key" not in from_file + given  # only a new key is shown, and only once


@pytest.fixture
def key_db(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The admin key hashes 'installed' in a stand-in for the database."""
    installed: list[str] = []
    monkeypatch.setattr(
        runtime, "ensure_admin_key", lambda dsn, key_hash, *_: installed.append(key_hash)
    )
    monkeypatch.setattr(runtime, "admin_key_installed", lambda dsn: bool(installed))
    return installed


def test_admin_key_is_generated_once_then_read_from_its_file(
    tmp_path: Path, key_db: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POINTS_ADMIN_KEY", raising=False)
    settings = load_settings(data_dir=tmp_path)
    key, source = runtime.provision_admin_key(settings, "dsn")
    assert source is AdminKeySource.GENERATED
    assert settings.admin_key_file.read_text().strip() == key
    assert settings.admin_key_file.stat().st_mode & 0o077 == 0
    again, source = runtime.provision_admin_key(settings, "dsn")
    assert (again, source) == (key, AdminKeySource.KEY_FILE)
    assert len(key_db) == 1


def test_admin_key_from_the_environment_wins(
    tmp_path: Path, key_db: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POINTS_ADMIN_KEY", "from-env")
    settings = load_settings(data_dir=tmp_path)
    assert runtime.provision_admin_key(settings, "dsn") == ("from-env", AdminKeySource.ENVIRONMENT)
    assert not settings.admin_key_file.exists()
    assert len(key_db) == 1


def _program(index: int) -> dict[str, Any]:
    return {
        "program_id": f"p{index:03d}",
        "name": f"Program {index}",
        "policy": {},
        "policy_version": 1,
        "created_at": f"2026-01-01T00:00:{index % 60:02d}Z",
        "updated_at": f"2026-01-01T00:00:{index % 60:02d}Z",
    }


class FakeApi:
    """GET /v1/programs over `programs`, keyset-paginated like the service."""

    def __init__(self, programs: list[dict[str, Any]]) -> None:
        self.programs = programs
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != "Bearer admin-key":
            return httpx.Response(401, json={"code": "unauthorized"})
        assert request.url.path == "/v1/programs"
        limit = int(request.url.params["limit"])
        after = request.url.params.get("cursor")
        rest = [p for p in self.programs if after is None or p["program_id"] > after]
        page = rest[:limit]
        more = len(rest) > limit
        return httpx.Response(
            200, json={"items": page, "next_cursor": page[-1]["program_id"] if more else None}
        )

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url="http://points.test",
            headers={"Authorization": "Bearer admin-key"},
            transport=httpx.MockTransport(self),
        )


def test_fetch_programs_follows_every_page() -> None:
    api = FakeApi([_program(i) for i in range(7)])
    programs = cli.fetch_programs(api.client(), page_size=3)
    assert [p["program_id"] for p in programs] == [f"p{i:03d}" for i in range(7)]
    assert [r.url.params.get("cursor") for r in api.requests] == [None, "p002", "p005"]
    assert {r.url.params["limit"] for r in api.requests} == {"3"}


def test_fetch_programs_reports_a_refusal() -> None:
    api = FakeApi([])
    client = api.client()
    client.headers["Authorization"] = "Bearer wrong"
    with pytest.raises(cli.ListRefused, match="401"):
        cli.fetch_programs(client)


def test_fetch_programs_stops_at_the_page_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "PROGRAMS_PAGES_MAX", 3)
    endless = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"items": [], "next_cursor": "again"})
    )
    with pytest.raises(cli.ListRefused, match="after 3 pages"):
        cli.fetch_programs(httpx.Client(base_url="http://points.test", transport=endless))


def _run(monkeypatch: pytest.MonkeyPatch, api: FakeApi, *args: str) -> str:
    monkeypatch.setattr(cli, "_api_client", lambda url, key: api.client())
    result = CliRunner().invoke(cli.app, ["programs", "list", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_programs_list_prints_a_table_of_all_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    programs = [_program(i) for i in range(250)]  # two pages of PROGRAMS_PAGE_SIZE
    programs[1]["name"] = "[bold]not markup[/bold]"
    api = FakeApi(programs)
    output = _run(monkeypatch, api)
    assert len(api.requests) == 2
    assert "p000" in output and "p249" in output and "2026-01-01T00:00:09Z" in output
    assert "[bold]not markup[/bold]" in output


def test_programs_list_json_is_every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    programs = [_program(i) for i in range(5)]
    assert json.loads(_run(monkeypatch, FakeApi(programs), "--json")) == programs


def test_programs_list_with_none_says_how_to_create_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "points programs create" in _run(monkeypatch, FakeApi([]))


def test_status_says_where_each_shard_runs() -> None:
    from serve_app.cli import _where

    ping = {"shard": 0, "node_id": "9f1c2d3e4f5a", "node_ip": "10.0.0.5", "pid": 4242}
    assert _where(ping) == "; on node 10.0.0.5 (9f1c2d3e), pid 4242"
    assert _where({"shard": 0}) == ""  # a shard of an older version: nothing to say


def test_points_up_stops_on_signals_arriving_together() -> None:
    """Two signals at once (Ctrl-C reaches `timeout points up` and `points up` both) once
    deadlocked `points up` inside its own handler; the flag it waits on takes no lock."""
    import os
    import signal
    import threading

    flag = cli.StopFlag()
    previous = signal.signal(signal.SIGUSR1, lambda *_: flag.set())

    def twice() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)

    try:
        threading.Timer(0.1, twice).start()
        flag.wait()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert flag.is_set()


def test_up_serves_until_its_cluster_has_not_answered_long_enough() -> None:
    """`points up` stops by itself once its Ray cluster is gone; a short outage (a GCS
    restarting) is waited for."""
    now = [0.0]
    answers = [True, False, False, True, False, False, False, False]

    def probe() -> bool:
        now[0] += 5.0
        return answers.pop(0)

    gone = runtime.serve_until_stopped(
        threading.Event(), probe, interval_s=0, gone_after_s=12, clock=lambda: now[0]
    )
    # Silent 5-15 s, answered at 20 s, then silent from 25 s: gone at 35 s (15 s >= 12 s).
    assert gone and now[0] == 35.0 and answers == [False]


def test_up_serves_until_stopped_while_its_cluster_answers() -> None:
    stop = threading.Event()
    probes: list[bool] = []

    def probe() -> bool:
        probes.append(True)
        if len(probes) == 3:
            stop.set()  # Ctrl-C, say
        return True

    assert runtime.serve_until_stopped(stop, probe, interval_s=0, gone_after_s=0) is False
    assert len(probes) == 3


def test_a_process_not_connected_to_ray_has_no_cluster_answering() -> None:
    assert runtime.cluster_answers(timeout_s=0.1) is False
