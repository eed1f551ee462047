"""The fulfilment webhook sender against a real HTTP server on loopback: retries, backoff,
permanent refusals, and signatures a receiver can verify."""

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from actors.webhook import WebhookSender
from domain.rewards import RESERVED, Redemption, SagaState
from domain.webhooks import SIGNATURE_HEADER, verify

SECRET = b"whsec_integration"


@pytest.fixture
async def receiver() -> AsyncIterator[dict[str, Any]]:
    """Answers with the statuses in `script`, in order (then 200); records what it got."""
    state: dict[str, Any] = {"script": [], "calls": []}

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        signed = verify(SECRET, request.headers.get(SIGNATURE_HEADER, ""), raw, int(time.time()))
        state["calls"].append((signed, request.headers.get("Idempotency-Key"), raw))
        status = state["script"].pop(0) if state["script"] else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state["url"] = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


def redemption(url: str) -> Redemption:
    now = datetime.now(UTC)
    return Redemption(
        uuid.uuid4(),
        "p",
        "gift",
        "m",
        "k",
        "h",
        1,
        10,
        10,
        SagaState.PENDING_FULFILLMENT,
        RESERVED,
        {"type": "webhook", "url": url},
        now,
        now,
    )


async def test_retries_transient_failures_then_succeeds(receiver: dict[str, Any]) -> None:
    receiver["script"] = [500, 503]
    sender = WebhookSender(SECRET, attempts=3, backoff_s=0.01)
    r = redemption(receiver["url"])
    assert await sender.send(r) == (True, "")
    assert len(receiver["calls"]) == 3
    assert all(signed for signed, _, _ in receiver["calls"])
    assert {key for _, key, _ in receiver["calls"]} == {str(r.redemption_id)}
    await sender.close()


async def test_a_4xx_is_permanent_and_not_retried(receiver: dict[str, Any]) -> None:
    receiver["script"] = [422]
    sender = WebhookSender(SECRET, attempts=5, backoff_s=0.01)
    ok, reason = await sender.send(redemption(receiver["url"]))
    assert not ok and "HTTP 422" in reason
    assert len(receiver["calls"]) == 1
    await sender.close()


async def test_gives_up_after_the_attempts_and_on_a_dead_endpoint(
    receiver: dict[str, Any],
) -> None:
    receiver["script"] = [500] * 10
    sender = WebhookSender(SECRET, attempts=3, backoff_s=0.01)
    ok, reason = await sender.send(redemption(receiver["url"]))
    assert not ok and "after 3 attempts" in reason and "HTTP 500" in reason
    assert len(receiver["calls"]) == 3
    ok, reason = await sender.send(redemption("http://127.0.0.1:9/nothing-listens"))
    assert not ok and "ConnectError" in reason
    await sender.close()
