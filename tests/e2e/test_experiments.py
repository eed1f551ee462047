"""Experiments over HTTP: create (and again: the same answer), members' events scored by
their arm, results per arm against the control, end with a promotion that becomes the
rule set in effect, and the bad inputs answered 4xx."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.test_earning import ORDER_RULES, event, make_program, now_iso

DOUBLE = [
    {**rule, "award": {**rule["award"], "rate": "0.02"}} if rule["id"] == "order_points" else rule
    for rule in ORDER_RULES
]


def window(days: int = 30) -> dict[str, str]:
    start = datetime.now(UTC) - timedelta(hours=1)
    return {
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(days=days)).isoformat(),
    }


def arms(*weights: int, version_b: int = 2) -> list[dict[str, Any]]:
    return [
        {"name": "control", "rule_version": 1, "weight": weights[0]},
        {"name": "double", "rule_version": version_b, "weight": weights[1]},
    ]


async def test_an_experiment_scores_members_by_arm_and_promotes_the_winner(
    client: httpx.AsyncClient,
) -> None:
    program = await make_program(client)
    future = (datetime.now(UTC) + timedelta(days=3650)).isoformat()
    v2 = await client.put(
        f"/v1/programs/{program}/rules", json={"rules": DOUBLE, "effective_from": future}
    )
    assert v2.status_code == 201 and v2.json()["version"] == 2
    url = f"/v1/programs/{program}/experiments/dbl"
    body = {"arms": arms(50, 50), **window()}
    created = await client.put(url, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running" and created.json()["control"] == "control"
    again = await client.put(url, json=body)
    assert again.status_code == 200 and again.json() == created.json()
    other = await client.put(url, json={**body, "arms": arms(60, 40)})
    assert other.status_code == 409, other.text

    seen: dict[str, str] = {}
    for i in range(30):
        member = f"x{i}"
        answer = await client.post(
            f"/v1/programs/{program}/events", json=event(member, amount=10_000)
        )
        assert answer.status_code == 201, answer.text
        arm = answer.json()["experiment"]["arm"]
        seen[member] = arm
        assert answer.json()["points"] == (200 if arm == "double" else 100)
    assert set(seen.values()) == {"control", "double"}

    results = await client.get(url + "/results")
    assert results.status_code == 200, results.text
    by_arm = {arm["arm"]: arm for arm in results.json()["arms"]}
    counts = {name: list(seen.values()).count(name) for name in ("control", "double")}
    assert by_arm["control"]["members"] == counts["control"]
    assert by_arm["double"]["members"] == counts["double"]
    assert by_arm["control"]["points_per_member"] == 100
    assert by_arm["double"]["points_per_member"] == 200
    assert by_arm["double"]["vs_control"]["points_per_member"] == 100
    low, high = by_arm["double"]["vs_control"]["points_per_member_ci95"]
    assert low <= 100 <= high  # no variance within an arm here: a zero-width interval

    ended = await client.post(url + "/end", json={"promote": "double"})
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "ended" and ended.json()["promoted_version"] == 3
    assert (await client.post(url + "/end", json={"promote": "double"})).status_code == 200
    assert (await client.post(url + "/end", json={"promote": None})).status_code == 409
    # The promoted rules are in effect for everyone from now on (an event that occurred
    # before the promotion keeps the rules of its time); the experiment scores no more.
    later = {**event("new", amount=10_000), "occurred_at": now_iso(2)}
    after = await client.post(f"/v1/programs/{program}/events", json=later)
    assert after.status_code == 201, after.text
    assert after.json()["points"] == 200 and after.json()["rule_version"] == 3
    assert "experiment" not in after.json()
    listed = await client.get(f"/v1/programs/{program}/experiments")
    assert [e["experiment_id"] for e in listed.json()["items"]] == ["dbl"]


async def test_bad_experiments_are_4xx(client: httpx.AsyncClient) -> None:
    program = await make_program(client)
    url = f"/v1/programs/{program}/experiments/bad"
    cases = [
        ({"arms": arms(50, 40, version_b=1), **window()}, 422, "add up to 90"),
        ({"arms": arms(50, 50, version_b=7), **window()}, 422, "does not exist"),
        ({"arms": arms(50, 50, version_b=1), **window(-1)}, 422, "before ends_at"),
        ({"arms": arms(50, 50, version_b=1)[:1], **window()}, 422, ""),
    ]
    for body, status, says in cases:
        answer = await client.put(url, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert says in answer.text
    missing = await client.put(
        "/v1/programs/nope-nope/experiments/x", json={"arms": arms(50, 50), **window()}
    )
    assert missing.status_code == 404
    assert (await client.get(url)).status_code == 404
    assert (await client.get(url + "/results")).status_code == 404
    assert (await client.post(url + "/end", json={})).status_code == 404
