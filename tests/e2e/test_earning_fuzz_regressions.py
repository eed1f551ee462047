"""Regression tests for bugs found by fuzzing the earning endpoints (each failed before its
fix): out-of-range times are 422 not 500, NUL in attributes is 422 (and cannot fail the
other events of a group commit), a full reversal ignores a non-numeric amount attribute."""

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service
from tests.e2e.test_api import key, scalar
from tests.e2e.test_earning import event, make_program

PROBLEM = "application/problem+json"
FIXED_VISIT = [{"id": "visit", "event_type": "visit", "award": {"type": "fixed", "points": 100}}]


def assert_validation_problem(response: httpx.Response) -> None:
    assert response.status_code == 422, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    assert response.json()["code"] == "validation_error", response.text


async def versions(client: httpx.AsyncClient, program: str) -> list[Any]:
    listed = await client.get(f"/v1/programs/{program}/rules?limit=200")
    assert listed.status_code == 200, listed.text
    return [item["version"] for item in listed.json()["items"]]


@pytest.mark.parametrize("starts_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_campaign_time_out_of_datetime_range_is_422_not_500(
    client: httpx.AsyncClient, starts_at: str
) -> None:
    """A campaign bound whose UTC value falls outside year 1..9999 crashed
    `_moment` (OverflowError in astimezone): 500 internal."""
    program = await make_program(client)
    before = await versions(client, program)
    rule = {
        "id": "camp",
        "event_type": "order",
        "award": {
            "type": "multiplier",
            "campaign": {
                "starts_at": starts_at,
                "ends_at": "9999-12-31T23:59:59Z",
                "factor": "2",
            },
        },
    }
    response = await client.put(f"/v1/programs/{program}/rules", json={"rules": [rule]})
    assert_validation_problem(response)
    assert await versions(client, program) == before


@pytest.mark.parametrize(
    "effective_from", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
)
async def test_effective_from_out_of_datetime_range_is_422_not_500(
    client: httpx.AsyncClient, effective_from: str
) -> None:
    """PostgreSQL stores the instant (year 0 BC / 10000 in UTC) but psycopg cannot read it
    back in RETURNING: 500 internal (the transaction rolls back)."""
    program = await make_program(client)
    before = await versions(client, program)
    response = await client.put(
        f"/v1/programs/{program}/rules",
        json={"rules": FIXED_VISIT, "effective_from": effective_from},
    )
    assert_validation_problem(response)
    assert await versions(client, program) == before


@pytest.mark.parametrize(
    "attributes", [{"note": "a\x00b"}, {"amount": "\x00"}, {"\x00": 1}, {"x": ["\x00"]}]
)
async def test_nul_in_event_attributes_is_422_not_503(
    client: httpx.AsyncClient, service: Service, attributes: dict[str, Any]
) -> None:
    """A NUL in an attribute string or key passes validation, then PostgreSQL's jsonb refuses
    it at commit: 503 `unavailable` "commit failed, retry", although no retry can succeed
    (over the Redis stream it is redelivered up to deliveries_max times)."""
    program = await make_program(client, rules=FIXED_VISIT)
    bad = {**event("nul-member", "visit"), "attributes": attributes}
    response = await client.post(f"/v1/programs/{program}/events", json=bad)
    assert_validation_problem(response)
    assert (await client.get(f"/v1/programs/{program}/members/nul-member")).status_code == 404
    assert scalar(service, "SELECT count(*) FROM events WHERE program_id=%s", program) == 0


async def test_nul_event_in_batch_does_not_fail_other_members_events(
    client: httpx.AsyncClient, service: Service
) -> None:
    """The NUL event makes the shard's whole group commit fail, so valid events of other
    members committed in the same batch also answer 503 (docs: a failed event "does not
    affect the others")."""
    program = await make_program(client, rules=FIXED_VISIT)
    good = [event(f"good-{i}", "visit") for i in range(20)]
    bad = {**event("bad-member", "visit"), "attributes": {"note": "a\x00b"}}
    # The bad event in the middle: it shares a group commit with the events queued with it
    # (first in the batch, it was committed alone and did no harm).
    events = [*good[:10], bad, *good[10:]]
    response = await client.post(f"/v1/programs/{program}/events/batch", json={"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    others = results[:10] + results[11:]
    assert [result["status"] for result in others] == [201] * len(good), [
        (result["status"], result["body"].get("detail")) for result in others
    ]
    assert results[10]["status"] == 422 and results[10]["body"]["code"] == "validation_error"
    assert scalar(service, "SELECT count(*) FROM events WHERE program_id=%s", program) == 20


@pytest.mark.parametrize("amount", ["abc", [1], {"value": 1}, "9" * 40])
async def test_full_reversal_of_event_with_non_numeric_amount_attribute(
    client: httpx.AsyncClient, amount: Any
) -> None:
    """docs/earning.md: `{}` reverses the whole event. An event whose `amount` attribute is
    not a number (it earned by a fixed rule) cannot be reversed at all: 422 "attributes.amount
    must be an integer or a decimal string", so its points can never be clawed back."""
    program = await make_program(client, rules=FIXED_VISIT)
    visit = event("rev-member", "visit", amount=amount)
    applied = await client.post(f"/v1/programs/{program}/events", json=visit)
    assert applied.status_code == 201 and applied.json()["points"] == 100, applied.text
    reversed_ = await client.post(
        f"/v1/programs/{program}/events/{visit['id']}/reverse", json={}, headers=key()
    )
    assert reversed_.status_code == 201, reversed_.text
    assert reversed_.json()["clawed_back"] == 100
