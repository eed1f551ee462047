"""A real Prometheus (Debian's) scrapes the running service through the file-based
discovery file `points up` writes, with deploy/prometheus/prometheus.yml and its alert
rules: the counters equal the operations driven here, and every panel query of the
Grafana dashboard returns data."""

import asyncio
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy_files import ALERT_RULES, PROMETHEUS_CONFIG, dashboard_queries
from tests.e2e.conftest import Service
from tests.e2e.test_api import credit, key
from tests.e2e.test_rewards import put_reward, redeem, wait_for_status

PLACEHOLDER = "/path/to/points-data-dir/prometheus/targets.json"
SCRAPE_INTERVAL = "2s"
# Ray's metrics agent exports every few seconds, Prometheus scrapes every 2: values settle
# well within this.
SETTLE_S = 90.0
CREDIT_ROUTE = "/v1/programs/{program_id}/members/{member_id}/credits"
DEBIT_ROUTE = "/v1/programs/{program_id}/members/{member_id}/debits"


@pytest.fixture(scope="module")
def prometheus(service: Service) -> Iterator[str]:
    """Debian's Prometheus on a free port, scraping the service's discovery file."""
    from serve_app import runtime, scrape

    binary = shutil.which("prometheus")
    assert binary, "install Prometheus (Debian: apt-get install prometheus; .ci/run does)"
    targets_file = scrape.targets_path(service.settings.data_dir)
    # What `points up` writes once the service is up (and keeps current).
    scrape.write_targets(targets_file, runtime.scrape_targets())
    config = PROMETHEUS_CONFIG.read_text()
    assert PLACEHOLDER in config
    config = config.replace(PLACEHOLDER, str(targets_file))
    config = config.replace("scrape_interval: 10s", f"scrape_interval: {SCRAPE_INTERVAL}")
    config = config.replace("refresh_interval: 30s", "refresh_interval: 2s")
    workdir = Path(tempfile.mkdtemp(prefix="points-prometheus-"))
    (workdir / "prometheus.yml").write_text(config)
    shutil.copy(ALERT_RULES, workdir / ALERT_RULES.name)
    port = runtime.free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def query(prom: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    response = await prom.get("/api/v1/query", params={"query": expr})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def scalar_of(prom: httpx.AsyncClient, expr: str) -> float:
    """The value of a query that sums to one series (0 when it has none)."""
    result = await query(prom, expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else 0.0


async def settled(prom: httpx.AsyncClient, exprs: dict[str, str]) -> dict[str, float]:
    """Values that stopped changing: equal across two reads a few scrapes apart."""
    deadline = time.monotonic() + SETTLE_S
    previous: dict[str, float] | None = None
    while True:
        now = {name: await scalar_of(prom, expr) for name, expr in exprs.items()}
        if now == previous:
            return now
        assert time.monotonic() < deadline, f"metrics kept changing: {previous} -> {now}"
        previous = now
        await asyncio.sleep(8)


async def wait_for(
    prom: httpx.AsyncClient, exprs: dict[str, str], expected: dict[str, float]
) -> dict[str, float]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = {name: await scalar_of(prom, expr) for name, expr in exprs.items()}
        if now == expected or time.monotonic() > deadline:
            return now
        await asyncio.sleep(2)


def http_count(route: str, code: int) -> str:
    return f'sum(points_http_requests_total{{route="{route}",code="{code}"}})'


async def test_counters_equal_the_operations_and_every_panel_has_data(
    client: httpx.AsyncClient, service: Service, program: str, prometheus: str
) -> None:
    from serve_app import runtime

    async with httpx.AsyncClient(base_url=prometheus, timeout=10) as prom:
        # Scraping works: every target up, our metrics under their own names.
        deadline = time.monotonic() + SETTLE_S
        while not await query(prom, 'up{job="points"} == 1'):
            assert time.monotonic() < deadline, await query(prom, "up")
            await asyncio.sleep(1)
        http = {
            "credits_201": http_count(CREDIT_ROUTE, 201),
            "debits_201": http_count(DEBIT_ROUTE, 201),
            "debits_409": http_count(DEBIT_ROUTE, 409),
        }
        before = await settled(prom, http)

        # Known traffic on a fresh program.
        members = [f"m{i}" for i in range(12)]
        for member in members:
            await credit(client, program, member, 50)
        replayed_key = key()
        for _ in range(4):  # one credit, then three replays of it
            response = await client.post(
                f"/v1/programs/{program}/members/m0/credits",
                json={"points": 7, "reason": "replayed"},
                headers=replayed_key,
            )
            assert response.status_code == 201, response.text
        for member in members[:5]:
            response = await client.post(
                f"/v1/programs/{program}/members/{member}/debits",
                json={"points": 20, "reason": "spend"},
                headers=key(),
            )
            assert response.status_code == 201, response.text
        refused = await client.post(
            f"/v1/programs/{program}/members/m11/debits",
            json={"points": 10_000, "reason": "too much"},
            headers=key(),
        )
        assert refused.status_code == 409, refused.text
        # A redemption whose webhook fails: completed reservation, failed fulfilment, a
        # refund (the saga's compensation) and a webhook failure.
        dead_url = f"http://127.0.0.1:{runtime.free_port()}/x"  # nothing listens there
        await put_reward(
            client,
            program,
            "mug",
            stock=5,
            cost_points=30,
            fulfillment={"type": "webhook", "url": dead_url},
        )
        redemption = await redeem(client, program, "m6", "mug")
        assert redemption.status_code == 201, redemption.text
        failed = await wait_for_status(client, program, redemption.json()["id"], {"failed"})
        assert failed["status"] == "failed"

        issued = 12 * 50 + 7
        redeemed = 5 * 20 + 30
        scope = f'program="{program}"'
        ledger = {
            "issued": f'sum(points_ledger_points_total{{{scope},flow="issued"}})',
            "redeemed": f'sum(points_ledger_points_total{{{scope},flow="redeemed"}})',
            "refunded": f'sum(points_ledger_points_total{{{scope},flow="refunded"}})',
            "credits": f'sum(points_ledger_transactions_total{{{scope},kind="credit"}})',
            "debits": f'sum(points_ledger_transactions_total{{{scope},kind="debit"}})',
            "failed": f'sum(points_redemptions_total{{{scope},status="failed"}})',
            "stock": f'max(points_reward_stock{{{scope},reward="mug"}})',
        }
        expected = {
            "issued": issued,
            "redeemed": redeemed,
            "refunded": 30,
            "credits": 13,
            "debits": 6,
            "failed": 1,
            "stock": 5,
        }
        assert await wait_for(prom, ledger, expected) == expected
        grown = {"credits_201": 12 + 4, "debits_201": 5, "debits_409": 1}
        want = {name: before[name] + grown[name] for name in http}
        assert await wait_for(prom, http, want) == want
        # The replays were answered by the shard from the stored answer.
        replays = await scalar_of(prom, "sum(points_shard_replays_total)")
        assert replays >= 3
        assert await scalar_of(prom, "sum(points_webhook_failures_total)") >= 1

        # Every panel of the dashboard: its query returns data (this program's flows
        # included: each is exported at 0 from the program's first commit on).
        empty = []
        deadline = time.monotonic() + SETTLE_S
        while True:
            empty = [
                (title, expr)
                for title, expr in dashboard_queries(program=program)
                if not await query(prom, expr)
            ]
            if not empty or time.monotonic() > deadline:
                break
            await asyncio.sleep(3)
        assert not empty, empty

        # The alert rules loaded, and none of the critical ones fire on a healthy service.
        rules = (await prom.get("/api/v1/rules")).json()["data"]["groups"]
        assert sum(len(group["rules"]) for group in rules) >= 12
        alerts = (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]
        firing = [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"]
        assert "PointsLedgerInvariantViolated" not in firing, alerts


def test_request_id_names_the_group_commit(service: Service) -> None:
    """X-Request-Id comes back on the answer, and the account shard's log line of the
    group commit that wrote the request names it."""
    import glob

    request_id = "trace-" + secrets.token_hex(8)
    program = f"trace-{secrets.token_hex(4)}"
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as http:
        assert http.put(f"/v1/programs/{program}", json={"name": "T"}).status_code == 201
        response = http.post(
            f"/v1/programs/{program}/members/ann/credits",
            json={"points": 5, "reason": "traced"},
            headers={**key(), "X-Request-Id": request_id},
        )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-Id"] == request_id
    import ray

    logs_dir = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    deadline = time.monotonic() + 30
    found: list[str] = []
    while not found and time.monotonic() < deadline:
        for path in glob.glob(str(logs_dir / "worker-*.err")):
            with open(path, errors="replace") as lines:
                found += [line for line in lines if request_id in line and "committed" in line]
        time.sleep(0.5)
    assert found, f"no group commit line names {request_id}"
    assert "account-" in found[0]
