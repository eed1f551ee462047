"""Benchmark: what metrics, commit log lines and the hash chain cost on spread debits.

    python -m loadtests.ops_bench [--baseline 647da65] [--rounds 3] [--duration 10]

Two builds of the service, measured alternately (off, on, off, on, ... for `--rounds`
pairs) under the same spread-debit load as loadtests/bench.py's phase (b): wrk, unique
Idempotency-Keys, uniformly over `--members` members who hold 10^9 points each, so any
non-2xx answer is a failure.

- **off**: the code at `--baseline` (default 647da65, the commit before issue 11's
  operations work: no metrics, no per-commit log lines, no hash chain), checked out with
  `git worktree add --detach` in a temporary directory (removed at the end);
- **on**: the working tree this script is run from, as it is on disk (metrics exported
  through Ray, a log line per group commit, and the hash chain once merged).

Each build's service runs in a child process of the same venv's python, started with
`PYTHONPATH=<build's tree>` and that tree as its working directory, so the build's modules
(serve_app, actors, db, domain, loadtests) shadow the editable install; the local Ray head
the child starts, and so every Ray worker, inherits that environment. The script prints,
for every run, where `actors` was imported from in the child and in a Ray worker, and how
many `ray_points_*` series the node's metrics agent exports after the run (0 expected off).

Fairness: only one service runs at a time (two would share the CPUs). Every run starts
from scratch: a fresh database (the builds' schemas differ, and a ledger grown by earlier
runs would slow later ones), the Redis database given by `--redis-url` flushed (it is the
benchmark's: no other index than 15's neighbours is used by default), a new service
(Ray head included), members seeded through the API, an unreported warm-up, then the
measured wrk run; then the service is stopped. Both builds log in `--log-format` (json by
default: the on build's per-commit lines in JSON, its worst case).

Printed: each run's throughput, p50/p99, non-2xx answers and socket errors and the CPU
share used by other processes meanwhile; the median throughput and p99 of each build; and
the ratio of the median throughputs on/off (the target: at least 0.90).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

from loadtests.bench import (
    DEFAULT_ADMIN_URL,
    PROJECT_ROOT,
    LoadConfig,
    WrkResult,
    bench_database,
    debits,
    free_port,
    measure,
    port_open,
    seed_points,
    server_version,
)

DEFAULT_BASELINE = "647da65"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
TARGET_RATIO = 0.90
STOP_TIMEOUT_S = 120

# The child process: runs one build's service with loadtests.bench.points_service (the
# build's own copy, imported from its tree), reports where its code comes from, answers
# "metrics" with the node's ray_points_* series count, and stops the service on "stop" or
# when its stdin closes. Lines for the parent start with "OPS ".
CHILD = r"""
import json, sys
from pathlib import Path

import actors
import httpx
import ray

from loadtests.bench import points_service

args = json.loads(sys.argv[1])


def say(kind, data):
    print("OPS " + kind + " " + json.dumps(data), flush=True)


@ray.remote(num_cpus=0)
def worker_actors_file():
    import actors

    return actors.__file__


def metrics_port():
    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            return int(node["MetricsExportPort"])
    return None


with points_service(
    args["dsn"], args["redis_url"], args["key"], Path(args["data_dir"]), args["port"], None
) as (url, settings):
    say("ready", {
        "url": url,
        "driver_actors": actors.__file__,
        "worker_actors": ray.get(worker_actors_file.remote(), timeout=120),
        "log_format": settings.log_format,
    })
    for line in sys.stdin:
        command = line.strip()
        if command == "metrics":
            port = metrics_port()
            series = set()
            if port is not None:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
                series = {
                    row.split("{")[0].split(" ")[0]
                    for row in text.splitlines()
                    if row.startswith("ray_points_")
                }
            say("metrics", {"port": port, "ray_points_series": len(series)})
        elif command == "stop":
            break
say("stopped", {})
"""


@dataclass
class Build:
    name: str  # "off" or "on"
    tree: Path  # the source tree whose modules the service runs
    describe: str


@dataclass
class Service:
    url: str
    driver_actors: str
    worker_actors: str
    log_format: str
    proc: subprocess.Popen[str]
    log_path: Path

    def ask(self, command: str, kind: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return read_message(self.proc, kind, self.log_path)


def read_message(proc: subprocess.Popen[str], kind: str, log_path: Path) -> dict[str, Any]:
    """The child's next `OPS <kind> <json>` line (other stdout lines are skipped)."""
    stdout: IO[str] | None = proc.stdout
    assert stdout is not None
    prefix = f"OPS {kind} "
    for line in stdout:
        if line.startswith(prefix):
            found: dict[str, Any] = json.loads(line[len(prefix) :])
            return found
    proc.wait()
    tail = log_path.read_text()[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"service child exited ({proc.returncode}) before '{kind}':\n{tail}")


@contextlib.contextmanager
def build_service(
    build: Build, dsn: str, redis_url: str, key: str, tmp: Path, log_format: str, run: int
) -> Iterator[Service]:
    """One build's service in a child process (PYTHONPATH and cwd: the build's tree);
    always stopped on exit, the child killed if it does not stop in time."""
    env = {
        **os.environ,
        "PYTHONPATH": str(build.tree),
        "POINTS_LOG_FORMAT": log_format,
    }
    args = {
        "dsn": dsn,
        "redis_url": redis_url,
        "key": key,
        "data_dir": str(tmp / f"data-{run}-{build.name}"),
        "port": free_port(),
    }
    log_path = tmp / f"service-{run}-{build.name}.log"
    with log_path.open("w") as log:
        # Own session: a Ctrl-C reaches only this script, which then stops the child itself.
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            cwd=build.tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            ready = read_message(proc, "ready", log_path)
            yield Service(
                url=ready["url"],
                driver_actors=ready["driver_actors"],
                worker_actors=ready["worker_actors"],
                log_format=ready["log_format"],
                proc=proc,
                log_path=log_path,
            )
        finally:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.close()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def baseline_tree(ref: str, tmp: Path) -> Iterator[Path]:
    """`ref` checked out (detached) in a temporary worktree, removed on exit."""
    path = tmp / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), ref],
        cwd=PROJECT_ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=PROJECT_ROOT, check=False, capture_output=True,
        )  # fmt: skip


def git(*args: str, cwd: Path = PROJECT_ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def figures_of(result: WrkResult) -> dict[str, Any]:
    return {
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": result.requests,
        "non_2xx": result.non_2xx,
        "socket_errors": sum(result.socket_errors.values()),
        "other_cpu_pct": result.cpu.get("other"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.ops_bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help="git ref of the off build (default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="unreported warm-up seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", type=float, default=5, help="wrk request timeout, seconds")
    parser.add_argument("--members", type=int, default=10_000, help="members debited")
    parser.add_argument("--seed-concurrency", type=int, default=64)
    parser.add_argument("--database-url", help=f"admin URL (default {DEFAULT_ADMIN_URL})")
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="flushed before every run: give a database of its own (default %(default)s)",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout` too stops the services
    from serve_app.auth import new_key

    admin_url = args.database_url
    if admin_url is None and port_open("127.0.0.1", 5432):
        admin_url = DEFAULT_ADMIN_URL
    key = new_key()
    baseline_commit = git("rev-parse", "--verify", f"{args.baseline}^{{commit}}")
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    checks: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="points-ops-bench-") as tmp_name:
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
        with baseline_tree(args.baseline, tmp) as baseline:
            builds = [
                Build("off", baseline, f"{args.baseline} ({baseline_commit[:12]}), {baseline}"),
                Build(
                    "on",
                    PROJECT_ROOT,
                    f"working tree {PROJECT_ROOT} (HEAD {head[:12]}"
                    f"{', with uncommitted changes' if dirty else ''})",
                ),
            ]
            for build in builds:
                present = (build.tree / "actors" / "metrics.py").exists()
                print(f"{build.name + ':':<4} {build.describe}")
                print(f"     actors/metrics.py present: {present}")
            print(
                f"load: wrk -t{cfg.threads} -c{cfg.connections}, {args.duration:g} s after an "
                f"unreported {args.warmup:g} s warm-up; spread debits over {args.members:,} "
                f"members; logs {args.log_format}; Redis {args.redis_url}",
                flush=True,
            )
            members = [f"m{i}" for i in range(args.members)]
            run = 0
            for round_ in range(args.rounds):
                for build in builds:
                    run += 1
                    flush_redis(args.redis_url)
                    with bench_database(admin_url, tmp) as dsn:
                        if run == 1:
                            print(f"PostgreSQL {server_version(dsn)}", flush=True)
                        with build_service(
                            build, dsn, args.redis_url, key, tmp, args.log_format, run
                        ) as service:
                            seconds, retries = seed_points(
                                service.url, key, members, args.seed_concurrency, cfg.token()
                            )
                            result = measure(cfg, service.url, debits(cfg, args.members))
                            time.sleep(1)  # let wrk's in-flight requests finish
                            metrics = service.ask("metrics", "metrics")
                    check = {
                        "database": urlsplit(dsn).path.lstrip("/"),
                        "driver_actors": service.driver_actors,
                        "worker_actors": service.worker_actors,
                        "in_build_tree": all(
                            Path(f).resolve().is_relative_to(build.tree.resolve())
                            for f in (service.driver_actors, service.worker_actors)
                        ),
                        "ray_points_series": metrics["ray_points_series"],
                        "log_format": service.log_format,
                        "seed_s": round(seconds, 1),
                        "seed_retries": retries,
                    }
                    checks[build.name].append(check)
                    runs[build.name].append(figures_of(result))
                    print(
                        f"  round {round_ + 1} {build.name:>3}: {result.rps:8.0f} debits/s"
                        f"  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms"
                        f"  non-2xx {result.non_2xx}"
                        f"  socket errors {sum(result.socket_errors.values())}"
                        f"  other CPU {result.cpu.get('other', float('nan')):.0f}%",
                        flush=True,
                    )
                    print(
                        f"      code: driver {check['driver_actors']}, Ray worker "
                        f"{check['worker_actors']} (in the {build.name} tree: "
                        f"{'yes' if check['in_build_tree'] else 'NO'}); ray_points_* series "
                        f"exported: {check['ray_points_series']}; logs {check['log_format']};"
                        f" seeded in {seconds:.1f} s",
                        flush=True,
                    )
    medians = {name: statistics.median(r["rps"] for r in runs[name]) for name in runs}
    p99 = {name: statistics.median(r["p99_ms"] for r in runs[name]) for name in runs}
    ratio = medians["on"] / medians["off"]
    failures = sum(r["non_2xx"] + r["socket_errors"] for rs in runs.values() for r in rs)
    verified = all(c["in_build_tree"] for cs in checks.values() for c in cs) and all(
        c["ray_points_series"] == 0 for c in checks["off"]
    )
    print()
    for name in ("off", "on"):
        print(
            f"median {name:>3}: {medians[name]:8.0f} debits/s, median p99 {p99[name]:.1f} ms"
            f" ({len(runs[name])} runs)"
        )
    print(
        f"on/off (medians): {ratio:.3f} = {ratio:.1%} (target ≥ {TARGET_RATIO:.0%}: "
        f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}); failed requests {failures}"
    )
    print(
        "builds verified (each child and its Ray workers import their build's tree; off"
        f" exports no ray_points_* series): {'yes' if verified else 'NO'}"
    )
    if args.json:
        report = {
            "baseline": {"ref": args.baseline, "commit": baseline_commit},
            "on": {"head": head, "uncommitted_changes": bool(dirty)},
            "runs": runs,
            "checks": checks,
            "median_rps": medians,
            "median_p99_ms": p99,
            "on_over_off": round(ratio, 3),
            "target": TARGET_RATIO,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "members": args.members,
            "log_format": args.log_format,
            "verified": verified,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the services and the worktree were stopped", file=sys.stderr)
        sys.exit(130)
