"""Benchmark: the Points service against its serving ceiling and a naive reference app.

    python -m loadtests.bench [--duration 15] [--cached-members 100000] [--json out.json]

Why these phases: a debit is only worth optimizing down to what Serve itself costs, so
(a) measures the serving ceiling (`GET /healthz`, no work). (b) spreads debits over many
members (the normal case) and (c) sends them all to one member (a hot account, where a
row-lock design collapses); (d) runs the same two loads against `loadtests.naive_app`, the
one-transaction-per-request design most people would write. The targets printed at the end
compare those figures; every figure printed is measured during this run.

How: wrk (64 connections, Lua scripts written at run time) generates the load; every debit
carries a unique Idempotency-Key so each one really applies. Members start with 10^9 points
so no debit can fail for lack of points: any non-2xx answer is a failure. The benchmark
creates its own database (dropped at the end) on the given PostgreSQL, or on an embedded
one when none is given and nothing listens on 127.0.0.1:5432.

The Points service and the naive app never run at the same time: on a small machine the
idle one would steal CPU from the one being measured. Memory is sampled (psutil, every
0.5 s) over the Ray processes of this run only (descendants of this process). Each phase
also reports how much CPU other processes on the machine used meanwhile, because a
figure measured on a busy shared machine is not comparable with one measured on an idle one.

/readyz (shard stats) is read only between phases, after in-flight requests drain: a
shard answers it on the same PostgreSQL connection its batches use, and a /readyz that
lands during a batch can break that batch (its debits answer 503).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import psycopg
from psycopg import sql

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PROGRAM = "bench"
HOT_MEMBER = "hot"
SEED_POINTS = 10**9
MIB = 1024 * 1024

# Targets: throughput ratios (at least) and a latency ceiling (at most).
TARGET_B_OVER_A = 0.65
TARGET_C_OVER_B = 0.90
TARGET_C_OVER_NAIVE_C = 1.5
TARGET_P99_MS = 100.0

# --------------------------------------------------------------------------- wrk scripts
# Templates use $name placeholders (string.Template): Lua itself never uses `$`.
# Each wrk run gets a fresh token, so no Idempotency-Key is ever reused across runs
# (a reused key would replay instead of applying, and flatter the figures).

DEBIT_LUA = Template(r"""
-- Debits of 1 point, each with a unique Idempotency-Key (written by loadtests.bench).
local prefix = "/v1/programs/$program/members/"
local members = $members  -- 0: every debit goes to the hot member
local token = "$token"
local body = '{"points":1,"reason":"bench"}'
local headers = {
  ["Authorization"] = "Bearer $key",
  ["Content-Type"] = "application/json",
}
local counter = 0
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
end

function request()
  counter = counter + 1
  headers["Idempotency-Key"] = token .. "-" .. tid .. "-" .. counter
  local member = "$hot"
  if members > 0 then
    member = "m" .. math.random(0, members - 1)
  end
  return wrk.format("POST", prefix .. member .. "/debits", headers, body)
end
""")

# Credits exactly `total` new members (ids from a per-thread counter). Once a thread has
# sent its quota, its connections send GET /healthz (200) until every credit (201, or an
# error) is answered; then the thread drops a marker file and stops. wrk itself always
# runs for its full -d duration, so the bench sends it SIGINT once every thread's marker
# is there: the run ends when the last credit is answered.
CREDIT_LUA = Template(r"""
-- Credits of 1 point to $total new members (written by loadtests.bench).
local prefix = "/v1/programs/$program/members/"
local total = $total
local nthreads = $threads
local token = "$token"
local body = '{"points":1,"reason":"cache"}'
local headers = {
  ["Authorization"] = "Bearer $key",
  ["Content-Type"] = "application/json",
}
local issued = 0
local next_tid = 0
local threads = {}

function setup(thread)
  local quota = math.floor(total / nthreads)
  if next_tid < total % nthreads then
    quota = quota + 1
  end
  thread:set("tid", next_tid)
  thread:set("quota", quota)
  table.insert(threads, thread)
  next_tid = next_tid + 1
end

function init(args)
  answered = 0
  failed = 0
  finished = false
  -- wrk calls request() once on thread 0 before the run, to check the script, and never
  -- sends that request: start one lower there so every thread sends exactly its quota.
  if tid == 0 then
    issued = -1
  end
end

function request()
  if issued < quota then
    issued = issued + 1
    local id = token .. "-" .. tid .. "-" .. issued
    headers["Idempotency-Key"] = id
    return wrk.format("POST", prefix .. "c" .. id .. "/credits", headers, body)
  end
  return wrk.format("GET", "/healthz")
end

function response(status, response_headers, response_body)
  if status ~= 200 then
    answered = answered + 1
    if status ~= 201 then
      failed = failed + 1
    end
  end
  if answered >= quota and not finished then
    finished = true
    io.open("$marker_dir/done-" .. tid, "w"):close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local a, f = 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("answered")
    f = f + t:get("failed")
  end
  io.write(string.format("CREDITS answered=%d failed=%d\n", a, f))
end
""")


# --------------------------------------------------------------------------- wrk runs


@dataclass
class WrkResult:
    """One wrk run, as parsed from its `--latency` report."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    output: str = field(repr=False)
    # Where the machine's CPU went meanwhile (CpuMeter), in % of all CPUs.
    cpu: dict[str, float] = field(default_factory=dict)
    # CPU by process kind during the measured run, in % of one CPU (biggest first).
    cpu_by_process: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _to_ms(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """wrk's text report → figures. Fails loudly if wrk's format is not what we expect."""
    percentiles = {
        m[1]: _to_ms(m[2], m[3])
        for m in re.finditer(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    }
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if total is None or rps is None or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    names = ("connect", "read", "write", "timeout")
    return WrkResult(
        requests=int(total[1]),
        duration_s=_to_ms(total[2], total[3]) / 1000,
        rps=float(rps[1]),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=(
            {n: int(v) for n, v in zip(names, errors.groups(), strict=True)}
            if errors
            else dict.fromkeys(names, 0)
        ),
        output=output,
    )


@dataclass
class LoadConfig:
    """How wrk drives every phase (the same for the service and the naive app)."""

    connections: int
    threads: int
    duration_s: float
    warmup_s: float
    timeout_s: float
    key: str
    script_dir: Path
    run_token: str
    _runs: int = 0

    def token(self) -> str:
        """A token no other wrk run of this benchmark uses (Idempotency-Keys, member ids)."""
        self._runs += 1
        return f"{self.run_token}r{self._runs}"

    def write_script(self, name: str, text: str) -> Path:
        path = self.script_dir / f"{name}-{self._runs}.lua"
        path.write_text(text)
        return path


def run_wrk(cfg: LoadConfig, url: str, duration_s: float, script: Path | None = None) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{cfg.threads}",
        f"-c{cfg.connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(cfg.timeout_s))}s",
        "--latency",
    ]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration_s + 120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return parse_wrk(done.stdout)


def debits(cfg: LoadConfig, members: int) -> Callable[[], Path]:
    """Script maker for debit runs: members > 0 spreads them uniformly over
    m0..m{members-1}; 0 sends them all to the hot member. Fresh keys on every call."""

    def script() -> Path:
        text = DEBIT_LUA.substitute(
            program=PROGRAM, members=members, hot=HOT_MEMBER, token=cfg.token(), key=cfg.key
        )
        return cfg.write_script("debits", text)

    return script


def none() -> None:
    """Script maker for plain GET runs: no script."""
    return None


def measure(cfg: LoadConfig, url: str, script: Callable[[], Path | None]) -> WrkResult:
    """A short warm-up run (not reported), then the measured run; `script` is called for
    each run so every run gets fresh Idempotency-Keys."""
    if cfg.warmup_s > 0:
        run_wrk(cfg, url, cfg.warmup_s, script())
    meter = CpuMeter()
    result = run_wrk(cfg, url, cfg.duration_s, script())
    result.cpu = meter.stop()
    result.cpu_by_process = meter.by_process
    return result


class CpuMeter:
    """Where the machine's CPU time went between start and stop.

    `stop()` answers shares in % of all CPUs. On a shared machine the "other" share
    (neither this benchmark's processes nor PostgreSQL) says how much other work competed
    with the figures being measured. This benchmark's processes: this one, its live
    descendants (Ray, the naive app) and its reaped children (wrk, once finished).
    `by_process` then says which kinds of process used it, in % of one CPU: where a
    phase's CPU goes is the first question when a target is not met.
    """

    def __init__(self) -> None:
        self.by_process: dict[str, float] = {}
        self._started = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, dict[tuple[int, float], tuple[str, float]], float]:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        me = psutil.Process()
        own = me.cpu_times()
        own_s = own.user + own.system + own.children_user + own.children_system
        tracked: dict[tuple[int, float], tuple[str, float]] = {}
        for proc, kind in [
            *((p, "") for p in me.children(recursive=True)),
            *((p, "postgres") for p in _postgres_processes()),
        ]:
            with contextlib.suppress(psutil.Error):
                cpu = proc.cpu_times()
                label = kind or service_label(proc) or _process_name(proc)
                tracked[(proc.pid, proc.create_time())] = (label, cpu.user + cpu.system)
        return time.monotonic(), busy, tracked, own_s

    def stop(self) -> dict[str, float]:
        wall0, busy0, tracked0, own0 = self._started
        wall1, busy1, tracked1, own1 = self._snapshot()
        wall = wall1 - wall0
        capacity = wall * (psutil.cpu_count() or 1)
        by_label: dict[str, float] = {"wrk + bench script": own1 - own0}
        for ident, (label, seconds) in tracked1.items():
            delta = seconds - tracked0.get(ident, (label, 0.0))[1]
            by_label[label] = by_label.get(label, 0.0) + delta
        postgres = by_label.get("postgres", 0.0)
        ours = sum(by_label.values()) - postgres
        busy = busy1 - busy0
        self.by_process = {
            label: round(100 * seconds / wall, 1)
            for label, seconds in sorted(by_label.items(), key=lambda item: -item[1])
            if seconds > 0.005 * wall
        }

        def share(seconds: float) -> float:
            return round(100 * max(0.0, seconds) / capacity, 1)

        return {
            "busy": share(busy),
            "bench": share(ours),
            "postgres": share(postgres),
            "other": share(busy - ours - postgres),
        }


def _process_name(proc: psutil.Process) -> str:
    """A short name: `uvicorn` for the naive app, else the executable's name."""
    cmdline = proc.cmdline()
    if "uvicorn" in cmdline:
        return "uvicorn (naive app)"
    return proc.name()


def _postgres_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            found.append(proc)
    return found


# --------------------------------------------------------------------------- memory


def service_label(proc: psutil.Process) -> str | None:
    """`ray::Name` for Ray workers, `raylet` / `gcs_server`, `haproxy`; None otherwise.

    Ray retitles workers `ray::<Actor>` or `ray::<Actor>.<method>` while a call runs; the
    method part is dropped so one process keeps one label.
    """
    name = proc.name()
    if name in ("raylet", "gcs_server", "haproxy"):
        return name
    cmdline = proc.cmdline()
    if not cmdline or not any("ray::" in part for part in cmdline):
        return None
    title = next(part for part in cmdline if "ray::" in part).split()[0]
    head, _, tail = title.partition("::")
    return f"{head}::{tail.split('.')[0].removesuffix('()')}"


def service_processes() -> list[tuple[psutil.Process, str]]:
    """Ray processes started by this benchmark: descendants of this process only, so other
    Ray clusters on the same machine are never counted."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            label = service_label(proc)
            if label is not None:
                found.append((proc, label))
    return found


def foreign_raylets() -> list[int]:
    """Raylets not started by this benchmark: another Ray cluster competes for the CPUs."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "raylet" and proc.pid not in ours:
            found.append(proc.pid)
    return found


def rss_by_process() -> dict[int, tuple[str, int]]:
    sizes = {}
    for proc, label in service_processes():
        with contextlib.suppress(psutil.Error):
            sizes[proc.pid] = (label, proc.memory_info().rss)
    return sizes


def counted(label: str) -> bool:
    """In the service sum: Ray workers, raylet and gcs_server (HAProxy is shown apart)."""
    return label != "haproxy"


def account_shard_rss() -> int:
    return sum(rss for label, rss in rss_by_process().values() if "AccountShard" in label)


class RssSampler:
    """Peak RSS (sum and per process) of the service processes, sampled in a thread."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples = 0
        self.peak_sum = 0
        self.peaks: dict[int, int] = {}
        self.labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        sizes = rss_by_process()
        total = 0
        for pid, (label, rss) in sizes.items():
            if label != "ray::IDLE" or pid not in self.labels:
                self.labels[pid] = label
            self.peaks[pid] = max(self.peaks.get(pid, 0), rss)
            total += rss if counted(label) else 0
        self.peak_sum = max(self.peak_sum, total)
        self.samples += 1


# --------------------------------------------------------------------------- databases


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def free_port() -> int:
    from serve_app.runtime import free_port as runtime_free_port

    return runtime_free_port()


def with_dbname(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@contextlib.contextmanager
def bench_database(admin_url: str | None, tmp: Path) -> Iterator[str]:
    """A fresh database for this run (dropped afterwards); yields its URL.

    Without an admin URL, an embedded PostgreSQL is started in `tmp` (and stopped).
    """
    embedded = None
    if admin_url is None:
        from db.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(tmp)
        admin_url = embedded.start()
        print(f"no PostgreSQL on 127.0.0.1:5432: using an embedded one ({admin_url})")
    name = f"points_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield with_dbname(admin_url, name)
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    finally:
        if embedded is not None:
            embedded.stop()


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# --------------------------------------------------------------------------- the service


@contextlib.contextmanager
def points_service(
    dsn: str, redis_url: str | None, key: str, data_dir: Path, port: int, profile: str | None
) -> Iterator[tuple[str, Any]]:
    """The Points service on a local Ray head; yields (base URL, settings).

    Always shuts Ray down, also on error or Ctrl-C: detached shard actors, the Ray head and
    HAProxy must not outlive the benchmark.
    """
    from serve_app import runtime
    from serve_app.settings import load_settings

    settings = load_settings(
        database_url=dsn,
        redis_url=redis_url,
        admin_key=key,
        data_dir=data_dir,
        port=port,
        serve_profile=profile,
    )
    services = runtime.start_services(settings)
    try:
        runtime.prepare_database(settings, services.database_url)
        started = runtime.start_ray(settings)  # also gives HAProxy free metrics/stats ports
        try:
            yield runtime.deploy(settings, services.database_url, services.redis_url), settings
        finally:
            runtime.stop_ray(settings, started)
    finally:
        services.stop()


SEED_ATTEMPTS = 5
# httpx slows down sharply as one client's pool grows (measured here: 8 connections in one
# client ~4× faster than 64), so the seeding concurrency is spread over several small clients.
SEED_CONNECTIONS_PER_CLIENT = 8


async def _seed_points_async(
    base_url: str, key: str, members: list[str], concurrency: int, token: str
) -> int:
    """Returns how many credits had to be retried (always with the same Idempotency-Key,
    which is what makes retrying a credit safe)."""
    per_client = min(concurrency, SEED_CONNECTIONS_PER_CLIENT)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    headers = {"Authorization": f"Bearer {key}"}
    clients = [
        httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60)
        for _ in range(-(-concurrency // per_client))
    ]
    pending = iter(members)
    failures: list[str] = []
    retries = 0

    async def credit(client: httpx.AsyncClient, member: str) -> None:
        nonlocal retries
        problem = ""
        for attempt in range(SEED_ATTEMPTS):
            if attempt:
                retries += 1
                await asyncio.sleep(0.2 * attempt)
            try:
                answer = await client.post(
                    f"/v1/programs/{PROGRAM}/members/{member}/credits",
                    json={"points": SEED_POINTS, "reason": "seed"},
                    headers={"Idempotency-Key": f"seed-{token}-{member}"},
                )
            except httpx.TransportError as exc:
                problem = repr(exc)
                continue
            if answer.status_code == 201:
                return
            problem = f"{answer.status_code} {answer.text[:200]}"
            if answer.status_code < 500:
                break
        failures.append(f"{member}: {problem}")

    async def worker(client: httpx.AsyncClient) -> None:
        for member in pending:
            await credit(client, member)

    try:
        answer = await clients[0].put(f"/v1/programs/{PROGRAM}", json={"name": "Benchmark"})
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"PUT program: {answer.status_code} {answer.text}")
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    if failures:
        raise RuntimeError(f"{len(failures)} seed credits failed, e.g. {failures[:3]}")
    return retries


def seed_points(
    base_url: str, key: str, members: list[str], concurrency: int, token: str
) -> tuple[float, int]:
    """Credits every member through the API (bounded concurrency).

    Returns (seconds taken, credits retried after a dropped connection or a 5xx)."""
    started = time.perf_counter()
    retries = asyncio.run(_seed_points_async(base_url, key, members, concurrency, token))
    return time.perf_counter() - started, retries


def shard_stats(base_url: str, attempts: int = 10) -> list[dict[str, Any]]:
    """Shard stats from /readyz, retried for a while: it answers 503 when its ping collides
    with a shard's batch (see the module docstring)."""
    for attempt in range(attempts):
        answer = httpx.get(base_url + "/readyz", timeout=30)
        if answer.status_code == 200:
            shards: list[dict[str, Any]] = answer.json().get("shards", [])
            return shards
        print(f"  /readyz answered {answer.status_code}: {answer.text[:300]}", flush=True)
        if attempt + 1 < attempts:
            time.sleep(1)
    raise RuntimeError(f"/readyz kept failing: {answer.status_code} {answer.text[:300]}")


def queue_peaks(base_url: str) -> dict[str, int]:
    """The longest the queues got so far (issue 10's bounds are set against these): this
    replica's lanes towards the shards, and each kind of shard's group-commit queue."""
    answer = httpx.get(base_url + "/readyz", timeout=30)
    if answer.status_code != 200:
        return {}
    ready = answer.json()
    return {
        "lane": int(ready.get("lanes", {}).get("queued_peak", 0)),
        "account_shard": max((int(s.get("queued_peak", 0)) for s in ready["shards"]), default=0),
        "reward_shard": max(
            (int(s.get("queued_peak", 0)) for s in ready["reward_shards"]), default=0
        ),
        "shed": int(ready.get("lanes", {}).get("shed", 0))
        + sum(int(s.get("shed", 0)) for s in ready["shards"] + ready["reward_shards"]),
    }


def applied_ops(base_url: str) -> int:
    """Operations the shards have committed so far (a cross-check of wrk's counts)."""
    return int(sum(s.get("ops", 0) for s in shard_stats(base_url)))


def cached_accounts(base_url: str) -> list[int]:
    return [int(s.get("cached_accounts", 0)) for s in shard_stats(base_url)]


@dataclass
class CacheResult:
    members: int
    seconds: float
    answered: int
    failed: int
    cached_before: list[int]
    cached_after: list[int]
    shard_rss_before: int
    shard_rss_after: int

    @property
    def bytes_per_member(self) -> float:
        return (self.shard_rss_after - self.shard_rss_before) / self.members


def cache_members(cfg: LoadConfig, base_url: str, members: int, settle_s: float) -> CacheResult:
    """Credits `members` new members with wrk and measures the AccountShard RSS it adds."""
    cached_before = cached_accounts(base_url)
    time.sleep(settle_s)
    rss_before = account_shard_rss()
    markers = Path(tempfile.mkdtemp(dir=cfg.script_dir))
    script = cfg.write_script(
        "credits",
        CREDIT_LUA.substitute(
            program=PROGRAM,
            total=members,
            threads=cfg.threads,
            token=cfg.token(),
            key=cfg.key,
            marker_dir=markers,
        ),
    )
    cmd = [
        "wrk",
        f"-t{cfg.threads}",
        f"-c{cfg.connections}",
        "-d1h",
        f"--timeout={max(1, round(cfg.timeout_s))}s",
        "-s",
        str(script),
        base_url,
    ]
    started = time.perf_counter()
    # A credit that never gets an answer (a wrk timeout) would keep its thread waiting:
    # give up after a generous deadline; the report then shows answered < members.
    deadline = time.monotonic() + max(300.0, members / 20)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as wrk:
        try:
            while (
                len(list(markers.iterdir())) < cfg.threads
                and wrk.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            wrk.send_signal(signal.SIGINT)  # ends wrk's sleep: it reports and exits
            out, err = wrk.communicate(timeout=60)
        finally:
            if wrk.poll() is None:
                wrk.kill()
    found = re.search(r"CREDITS answered=(\d+) failed=(\d+)", out)
    if wrk.returncode != 0 or found is None:
        raise RuntimeError(f"wrk (credits) failed: {err}\n{out}")
    time.sleep(settle_s)
    return CacheResult(
        members=members,
        seconds=seconds,
        answered=int(found[1]),
        failed=int(found[2]),
        cached_before=cached_before,
        cached_after=cached_accounts(base_url),
        shard_rss_before=rss_before,
        shard_rss_after=account_shard_rss(),
    )


# --------------------------------------------------------------------------- the naive app


@contextlib.contextmanager
def naive_app(dsn: str, key: str, port: int, pool_size: int, log_path: Path) -> Iterator[str]:
    """`loadtests.naive_app` under uvicorn in a subprocess; always terminated on exit."""
    import importlib.util

    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "loadtests.naive_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if importlib.util.find_spec("uvloop"):
        cmd += ["--loop", "uvloop"]
    if importlib.util.find_spec("httptools"):
        cmd += ["--http", "httptools"]
    env = {
        **os.environ,
        "NAIVE_DATABASE_URL": dsn,
        "NAIVE_API_KEY": key,
        "NAIVE_POOL_SIZE": str(pool_size),
    }
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        # Own session: a Ctrl-C reaches only this script, which then stops the app itself.
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"naive app exited:\n{log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"naive app not up:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def seed_naive(dsn: str, members: int) -> float:
    """The naive app's members, straight into its table (its speed is not under test)."""
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO naive_accounts (program_id, member_id, balance) "
            "SELECT %s, 'm' || g, %s FROM generate_series(0, %s - 1) AS g "
            "UNION ALL SELECT %s, %s, %s",
            (PROGRAM, SEED_POINTS, members, PROGRAM, HOT_MEMBER, SEED_POINTS),
        )
    return time.perf_counter() - started


# --------------------------------------------------------------------------- report


@dataclass
class Target:
    name: str
    value: float
    threshold: float
    unit: str
    at_most: bool = False
    digits: int = 2

    @property
    def met(self) -> bool:
        return self.value <= self.threshold if self.at_most else self.value >= self.threshold

    def describe(self) -> str:
        sign = "≤" if self.at_most else "≥"
        return (
            f"{self.value:.{self.digits}f}{self.unit} (target {sign} {self.threshold:g}{self.unit})"
        )


@dataclass
class Report:
    meta: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, WrkResult] = field(default_factory=dict)
    phase_titles: dict[str, str] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    cache: CacheResult | None = None

    def add(self, key: str, title: str, result: WrkResult) -> None:
        self.phases[key] = result
        self.phase_titles[key] = title
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in result.cpu.items())
        print(
            f"  {title}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}, "
            f"socket errors {sum(result.socket_errors.values())}; CPU: {cpu}",
            flush=True,
        )

    def ratios(self) -> dict[str, float]:
        rps = {k: r.rps for k, r in self.phases.items()}
        pairs = {"b/a": ("b", "a"), "c/b": ("c", "b"), "c/naive_c": ("c", "naive_c")}
        pairs["b/naive_b"] = ("b", "naive_b")
        return {
            name: rps[num] / rps[den]
            for name, (num, den) in pairs.items()
            if num in rps and den in rps and rps[den] > 0
        }

    def targets(self) -> list[Target]:
        ratios = self.ratios()
        found = [
            Target(label, ratios[name], threshold, "×")
            for name, label, threshold in (
                ("b/a", "(b) ≥ 65% of (a)", TARGET_B_OVER_A),
                ("c/b", "(c) ≥ 90% of (b)", TARGET_C_OVER_B),
                ("c/naive_c", "(c) ≥ 1.5× naive (c)", TARGET_C_OVER_NAIVE_C),
            )
            if name in ratios
        ]
        found += [
            Target(f"p99 ({phase}) ≤ 100 ms", self.phases[phase].p99_ms, TARGET_P99_MS, " ms", True)
            for phase in ("b", "c")
            if phase in self.phases
        ]
        # Not a performance target, but a figure is only worth something if it holds:
        # members hold 10^9 points, so every debit must succeed.
        failed = sum(r.failures for k, r in self.phases.items() if k != "a")
        found.append(Target("no failed requests (b-d)", failed, 0, "", at_most=True, digits=0))
        return found

    def print(self) -> None:
        print()
        print("=" * 100)
        print("RESULTS")
        print("=" * 100)
        for name, value in self.meta.items():
            print(f"{name:<22} {value}")
        print()
        header = (
            f"{'phase':<38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} "
            f"{'non-2xx':>7} {'sock.err':>8} {'other CPU':>9}"
        )
        print(header)
        print("-" * len(header))
        for key, r in self.phases.items():
            other = f"{r.cpu['other']:.0f}%" if r.cpu else "?"
            print(
                f"{self.phase_titles[key]:<38} {r.rps:>8,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                f"{r.requests:>9,} {r.non_2xx:>7,} {sum(r.socket_errors.values()):>8,} "
                f"{other:>9}"
            )
        print(
            "(other CPU: share of the machine's CPU time during the measured run not used by\n"
            " this benchmark's processes or PostgreSQL: other users' processes, kernel work.\n"
            " Above a few % the figures are disturbed.)"
        )
        print()
        print(
            "CPU by process during each measured run (% of one CPU; the machine has "
            f"{psutil.cpu_count()}):"
        )
        for key, r in self.phases.items():
            items = [f"{label} {pct:.0f}%" for label, pct in r.cpu_by_process.items() if pct >= 2]
            for index, line in enumerate(_wrap_items(items or ["?"], width=100 - 41)):
                title = self.phase_titles[key] if index == 0 else ""
                print(f"  {title:<38} {line}")
        if self.applied:
            print()
            print("Debits committed by the shards (from /readyz stats, incl. warm-up):")
            for key, ops in self.applied.items():
                print(f"  {self.phase_titles[key]:<38} {ops:>9,}")
        print()
        print("Ratios (req/s):")
        for name, value in self.ratios().items():
            print(f"  {name:<12} {value:>6.2f}")
        print()
        print("Targets:")
        for target in self.targets():
            verdict = "MET" if target.met else "NOT MET"
            print(f"  {target.name:<26} {target.describe():<34} {verdict}")
        self._print_memory()

    def _print_memory(self) -> None:
        memory = self.memory
        if not memory:
            return
        print()
        print(
            f"Service memory: peak RSS during phases (a)-(c), sampled every "
            f"{memory['interval_s']} s ({memory['samples']} samples)"
        )
        print(
            f"  peak sum (ray:: workers + raylet + gcs_server)   {memory['peak_sum_mib']:>8.1f} MiB"
        )
        for row in memory["processes"]:
            mark = "" if row["counted"] else "  (not in the sum)"
            print(f"  {row['label']:<40} pid {row['pid']:>7}  {row['peak_mib']:>8.1f} MiB{mark}")
        cache = self.cache
        if cache is None:
            return
        print()
        print("Memory per cached member (AccountShard processes):")
        print(
            f"  credited {cache.members:,} new members in {cache.seconds:.1f} s "
            f"({cache.members / cache.seconds:,.0f}/s), answered {cache.answered:,}, "
            f"failed {cache.failed:,}"
        )
        print(
            f"  cached_accounts (per shard, /readyz): {cache.cached_before} → "
            f"{cache.cached_after} (total {sum(cache.cached_before):,} → "
            f"{sum(cache.cached_after):,})"
        )
        print(
            f"  AccountShard RSS sum: {cache.shard_rss_before / MIB:.1f} MiB → "
            f"{cache.shard_rss_after / MIB:.1f} MiB"
        )
        print(
            f"  bytes per cached member: {cache.bytes_per_member:,.0f} "
            "(account + its lot + the credit's cached idempotency answer)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "phases": {
                key: {"title": self.phase_titles[key]}
                | {k: v for k, v in asdict(r).items() if k != "output"}
                for key, r in self.phases.items()
            },
            "applied_ops": self.applied,
            "ratios": self.ratios(),
            "targets": [asdict(t) | {"met": t.met} for t in self.targets()],
            "memory": self.memory,
            "cache": asdict(self.cache) | {"bytes_per_member": self.cache.bytes_per_member}
            if self.cache
            else None,
        }


def _wrap_items(items: list[str], width: int) -> list[str]:
    """Comma-joined lines of at most `width` characters, never splitting an item."""
    lines = [items[0]]
    for item in items[1:]:
        if len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            lines[-1] += ","
            lines.append(item)
    return lines


def memory_summary(sampler: RssSampler) -> dict[str, Any]:
    rows = [
        {
            "pid": pid,
            "label": sampler.labels[pid],
            "peak_mib": peak / MIB,
            "counted": counted(sampler.labels[pid]),
        }
        for pid, peak in sampler.peaks.items()
    ]
    rows.sort(key=lambda r: (not r["counted"], -r["peak_mib"]))
    return {
        "interval_s": sampler.interval_s,
        "samples": sampler.samples,
        "peak_sum_mib": sampler.peak_sum / MIB,
        "processes": rows,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds per phase")
    parser.add_argument(
        "--warmup", type=float, default=3, help="unreported warm-up seconds before each phase"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", type=float, default=5, help="wrk request timeout, seconds")
    parser.add_argument("--members", type=int, default=10_000, help="members debited in (b)")
    parser.add_argument("--cached-members", type=int, default=100_000)
    parser.add_argument("--seed-concurrency", type=int, default=64)
    parser.add_argument(
        "--database-url",
        help=f"admin URL of the PostgreSQL to create the bench database on "
        f"(default {DEFAULT_ADMIN_URL}, or an embedded server if nothing listens there)",
    )
    parser.add_argument("--redis-url", help=f"default {DEFAULT_REDIS_URL} if it answers")
    parser.add_argument("--serve-profile", choices=("fast", "default"), help="service setting")
    parser.add_argument("--port", type=int, default=0, help="service port (0: a free one)")
    parser.add_argument("--naive-port", type=int, default=0, help="naive app port (0: a free one)")
    parser.add_argument("--naive-pool-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def machine_profile(settings: Any) -> dict[str, Any]:
    import ray

    memory = psutil.virtual_memory().total / 2**30
    serve_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("RAY_SERVE_")}
    return {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, {memory:.1f} GiB RAM",
        "python / ray": f"{platform.python_version()} / {ray.__version__}",
        "serve profile": settings.serve_profile,
        "serve env": " ".join(f"{k}={v}" for k, v in serve_env.items()) or "(none)",
        "service": f"shards={settings.shards} replicas={settings.replicas} "
        f"batch_max={settings.batch_max} batch_window_ms={settings.batch_window_ms}",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    admin_url = args.database_url
    if admin_url is None and port_open("127.0.0.1", 5432):
        admin_url = DEFAULT_ADMIN_URL
    redis_url = args.redis_url
    if redis_url is None and port_open("127.0.0.1", 6379):
        redis_url = DEFAULT_REDIS_URL

    from serve_app.auth import new_key

    key = new_key()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="points-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "lua").mkdir()
        cfg = LoadConfig(
            connections=args.connections,
            threads=args.threads,
            duration_s=args.duration,
            warmup_s=args.warmup,
            timeout_s=args.timeout,
            key=key,
            script_dir=tmp / "lua",
            run_token=secrets.token_hex(4),
        )
        with bench_database(admin_url, tmp) as dsn:
            print(f"database: {urlsplit(dsn).path.lstrip('/')} (PostgreSQL {server_version(dsn)})")
            run_points(args, cfg, report, dsn, redis_url, tmp)
            run_naive(args, cfg, report, dsn, tmp)
    report.print()
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2, default=str))
        print(f"\nfigures written to {args.json}")
    return 0


def run_points(
    args: argparse.Namespace,
    cfg: LoadConfig,
    report: Report,
    dsn: str,
    redis_url: str | None,
    tmp: Path,
) -> None:
    """Phases (a)-(c) and the memory figures, against the Points service."""
    port = args.port or free_port()
    print("starting the Points service (Ray + Serve) …", flush=True)
    with points_service(dsn, redis_url, cfg.key, tmp / "data", port, args.serve_profile) as (
        base_url,
        settings,
    ):
        report.meta.update(machine_profile(settings))
        report.meta["load"] = (
            f"wrk -t{cfg.threads} -c{cfg.connections}, {cfg.duration_s:g} s per phase "
            f"(after an unreported {cfg.warmup_s:g} s warm-up), timeout {cfg.timeout_s:g} s"
        )
        print(f"  up at {base_url}; profile {settings.serve_profile}", flush=True)
        members = [f"m{i}" for i in range(args.members)] + [HOT_MEMBER]
        seconds, retries = seed_points(
            base_url, cfg.key, members, args.seed_concurrency, cfg.token()
        )
        report.meta["seeding (Points API)"] = (
            f"{len(members):,} members in {seconds:.1f} s ({len(members) / seconds:,.0f}/s, "
            f"httpx, concurrency {args.seed_concurrency}, {retries} retried)"
        )
        print(
            f"  seeded {len(members):,} members in {seconds:.1f} s, {retries} retried", flush=True
        )

        others = set(foreign_raylets())
        with RssSampler() as sampler:
            report.add("a", "(a) Points GET /healthz", measure(cfg, base_url + "/healthz", none))
            for key, title, spread in (
                ("b", f"(b) Points debits, {args.members:,} members", args.members),
                ("c", "(c) Points debits, 1 hot member", 0),
            ):
                before = applied_ops(base_url)
                report.add(key, title, measure(cfg, base_url, debits(cfg, spread)))
                # Let the requests wrk left in flight finish before reading the stats:
                # /readyz during a batch can break it (see the module docstring).
                time.sleep(1)
                report.applied[key] = applied_ops(base_url) - before
        report.memory = memory_summary(sampler)
        others |= set(foreign_raylets())
        report.meta["other Ray clusters"] = (
            f"WARNING: {len(others)} other raylet(s) running on this machine during the "
            f"phases (pids {sorted(others)}): they compete for the CPUs"
            if others
            else "none during the phases"
        )

        print(f"  caching {args.cached_members:,} new members …", flush=True)
        report.cache = cache_members(cfg, base_url, args.cached_members, settle_s=2.0)
        print("  stopping the Points service", flush=True)


def run_naive(
    args: argparse.Namespace, cfg: LoadConfig, report: Report, dsn: str, tmp: Path
) -> None:
    """Phase (d): the same debit loads against the naive app."""
    port = args.naive_port or free_port()
    print("starting the naive app (uvicorn) …", flush=True)
    with naive_app(dsn, cfg.key, port, args.naive_pool_size, tmp / "naive.log") as url:
        seconds = seed_naive(dsn, args.members)
        report.meta["seeding (naive, SQL)"] = f"{args.members + 1:,} members in {seconds:.2f} s"
        for key, title, spread in (
            ("naive_b", f"(d) naive debits, {args.members:,} members", args.members),
            ("naive_c", "(d) naive debits, 1 hot member", 0),
        ):
            report.add(key, title, measure(cfg, url, debits(cfg, spread)))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the service, Ray and the naive app were stopped", file=sys.stderr)
        sys.exit(130)
