"""One Ray session and one deployed Points service for the whole e2e run."""

import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN_KEY = "pts_e2e_" + secrets.token_hex(16)
WEBHOOK_SECRET = "whsec_e2e_" + secrets.token_hex(16)


@dataclass
class Service:
    url: str
    database_url: str
    headers: dict[str, str]
    # How it was deployed (a test deploys it again: a rolling update).
    settings: Any = None
    redis_url: str | None = None


@pytest.fixture(scope="session")
def service(database_url: str, redis_url: str) -> Iterator[Service]:
    from serve_app import runtime
    from serve_app.settings import load_settings

    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        admin_key=ADMIN_KEY,
        data_dir=Path(tempfile.mkdtemp(prefix="points-e2e-")),
        port=runtime.free_port(),
        shards=2,
        # Two ingress replicas: what one replica learns (a revoked key) the other must too.
        replicas=2,
        # Every test client is 127.0.0.1: room for the suite's deliberate bad keys
        # (tests/e2e/test_access.py empties it on purpose, then resets it).
        auth_failures_burst=300,
        auth_failures_per_min=60,
        webhook_secret=WEBHOOK_SECRET,
        webhook_attempts=2,
        webhook_backoff_s=0.05,
        recovery_interval_s=1.0,
    )
    runtime.prepare_database(settings, database_url)
    started = runtime.start_ray(settings)
    try:
        url = runtime.deploy(settings, database_url, redis_url)
        yield Service(
            url, database_url, {"Authorization": f"Bearer {ADMIN_KEY}"}, settings, redis_url
        )
    finally:
        runtime.stop_ray(settings, started)


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(
        base_url=service.url, headers=service.headers, timeout=60, limits=limits
    ) as http:
        yield http


@pytest.fixture
async def program(client: httpx.AsyncClient) -> str:
    program_id = f"e2e-{secrets.token_hex(4)}"
    response = await client.put(f"/v1/programs/{program_id}", json={"name": "E2E"})
    assert response.status_code == 201, response.text
    return program_id
