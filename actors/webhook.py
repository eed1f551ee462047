"""Fulfilment by webhook: POST a signed JSON body, bounded retries with backoff.

Success: fulfilled. A client error other than request timeout, too early or too many
requests: a permanent refusal, no retry. Anything else
(5xx, timeouts, connection errors) is retried up to `attempts` times with exponential
backoff. The receiver must treat `Idempotency-Key` (the redemption id) as the dedup key:
after a crash, recovery may send the same redemption again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson

from actors.metrics import WebhookMetrics
from domain.rewards import Redemption, redemption_view
from domain.webhooks import SIGNATURE_HEADER, sign

# The receiver's client errors that may pass: retried like server errors.
RETRYABLE_CLIENT_ERRORS = frozenset(
    {httpx.codes.REQUEST_TIMEOUT, httpx.codes.TOO_EARLY, httpx.codes.TOO_MANY_REQUESTS}
)


class WebhookSender:
    def __init__(
        self,
        secret: bytes,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        assert secret and attempts >= 1 and backoff_s >= 0 and timeout_s > 0
        self._secret = secret
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.metrics = WebhookMetrics()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        return self._client

    def payload(self, redemption: Redemption) -> bytes:
        body: dict[str, Any] = {
            "type": "redemption.fulfill",
            "redemption": redemption_view(redemption),
        }
        return orjson.dumps(body)

    async def send(self, redemption: Redemption) -> tuple[bool, str]:
        """(fulfilled, reason if not)."""
        url = redemption.fulfillment.get("url")
        if not isinstance(url, str):
            return False, "webhook fulfilment without a url"
        body = self.payload(redemption)
        last = "no attempt"
        for attempt in range(self._attempts):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
                "Idempotency-Key": str(redemption.redemption_id),
                "User-Agent": "points-webhook/1",
            }
            try:
                response = await self._http().post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"[:200]
                self.metrics.attempt(False)
            else:
                self.metrics.attempt(response.is_success)
                if response.is_success:
                    return True, ""
                last = f"HTTP {response.status_code}"
                if response.is_client_error and response.status_code not in RETRYABLE_CLIENT_ERRORS:
                    self.metrics.failed()
                    return False, f"webhook refused the fulfilment: {last}"
            if attempt + 1 < self._attempts:
                await asyncio.sleep(self._backoff_s * 2**attempt)
        self.metrics.failed()
        return False, f"webhook failed after {self._attempts} attempts: {last}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
