"""Flash-sale benchmark: redemptions against the Serve no-op ceiling, in one run.

    python -m loadtests.flash_bench [--duration 15] [--members 10000] [--stock 1000]

Starts the service (local Ray head, fast Serve profile) on a fresh database, seeds
`--members` members through the API, then measures with wrk (same settings as
`loadtests.bench`: 64 connections, 2 threads):

(a) `GET /healthz`: the Serve no-op ceiling, this run.
(f) the flash sale: every request redeems one unit of ONE reward with `--stock` units for a
    different member (a new member and a new Idempotency-Key each time, cycling over the
    members). The first `--stock` succeed, the rest are `out_of_stock`. Answers by status are
    counted by the Lua script.
(g) the same reward once sold out: only rejections. PostgreSQL transactions (pg_stat_database
    `xact_commit`) and account-shard operations are counted across the phase, to show that
    rejections touch neither.
(s) an unlimited reward: every request is a whole saga (reserve, debit, complete).

The post-run verifier (`loadtests.verify`) then checks every invariant in PostgreSQL.
Benchmarks are noisy on a shared 2-core machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from string import Template
from typing import Any

import httpx
import psycopg

from loadtests.bench import (
    DEFAULT_ADMIN_URL,
    PROGRAM,
    LoadConfig,
    WrkResult,
    _interrupt,
    bench_database,
    free_port,
    machine_profile,
    measure,
    none,
    points_service,
    port_open,
    queue_peaks,
    run_wrk,
    seed_points,
    shard_stats,
)

REDEEM_LUA = Template(r"""
-- One redemption per request, each for a different member (written by loadtests.flash_bench).
local path = "/v1/programs/$program/redemptions"
local members = $members
local token = "$token"
local headers = {
  ["Authorization"] = "Bearer $key",
  ["Content-Type"] = "application/json",
}
local counter = 0
local next_tid = 0
local nthreads = $threads
local threads = {}

function setup(thread)
  thread:set("tid", next_tid)
  table.insert(threads, thread)
  next_tid = next_tid + 1
end

function init(args)
  codes = {}
end

function request()
  local member = "m" .. ((counter * nthreads + tid) % members)
  counter = counter + 1
  headers["Idempotency-Key"] = token .. "-" .. tid .. "-" .. counter
  local body = '{"member_id":"' .. member .. '","reward_id":"$reward","quantity":1}'
  return wrk.format("POST", path, headers, body)
end

function response(status, response_headers, response_body)
  local code = tostring(status)
  if status == 409 then
    code = string.match(response_body, '"code":"([a-z_]+)"') or "409"
  end
  codes[code] = (codes[code] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("codes")
    for k, v in pairs(c) do
      total[k] = (total[k] or 0) + v
    end
  end
  for k, v in pairs(total) do
    io.write(string.format("ANSWER %s %d\n", k, v))
  end
end
""")


def answers(result: WrkResult) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^ANSWER (\S+) (\d+)$", result.output, re.M)}


def account_ops(base_url: str) -> int:
    """Operations the account shards have committed so far."""
    return int(sum(s.get("ops", 0) for s in shard_stats(base_url) if "shard" in s))


def reward_db_round_trips(base_url: str) -> int:
    """Loads and commits the reward shards' batch loops have sent to PostgreSQL so far."""
    return int(
        sum(
            s.get("db_loads", 0) + s.get("db_commits", 0)
            for s in shard_stats(base_url)
            if "reward_shard" in s
        )
    )


def pg_commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def put_reward(base_url: str, key: str, reward: str, stock: int | None, cost: int) -> None:
    answer = httpx.put(
        f"{base_url}/v1/programs/{PROGRAM}/rewards/{reward}",
        json={"name": reward, "cost_points": cost, "stock": stock},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"PUT reward: {answer.status_code} {answer.text}")


def reward_counts(base_url: str, key: str, reward: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{base_url}/v1/programs/{PROGRAM}/rewards/{reward}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    body: dict[str, Any] = answer.json()
    return {k: body[k] for k in ("stock", "reserved", "redeemed")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.flash_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up before (a) and (s)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--stock", type=int, default=1_000)
    parser.add_argument("--database-url", help=f"admin URL (default {DEFAULT_ADMIN_URL})")
    parser.add_argument("--replicas", type=int, help="HTTP ingress replicas (POINTS_REPLICAS)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.replicas:
        os.environ["POINTS_REPLICAS"] = str(args.replicas)
    admin_url = args.database_url
    if admin_url is None and port_open("127.0.0.1", 5432):
        admin_url = DEFAULT_ADMIN_URL
    from serve_app.auth import new_key

    key = new_key()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="points-flash-") as tmp_name:
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

        def script(reward: str) -> Any:
            def make() -> Path:
                text = REDEEM_LUA.substitute(
                    program=PROGRAM,
                    members=args.members,
                    token=cfg.token(),
                    key=key,
                    reward=reward,
                    threads=cfg.threads,
                )
                return cfg.write_script(f"redeem-{reward}", text)

            return make

        with bench_database(admin_url, tmp) as dsn:
            print("starting the Points service (Ray + Serve) …", flush=True)
            with points_service(dsn, None, key, tmp / "data", free_port(), None) as (
                base_url,
                settings,
            ):
                figures["meta"] = machine_profile(settings)
                members = [f"m{i}" for i in range(args.members)]
                seconds, _ = seed_points(base_url, key, members, 64, cfg.token())
                print(f"  seeded {len(members):,} members in {seconds:.1f} s", flush=True)
                put_reward(base_url, key, "flash", args.stock, 100)
                put_reward(base_url, key, "unlimited", None, 1)

                results: dict[str, WrkResult] = {}
                print("  (a) no-op ceiling …", flush=True)
                results["a"] = measure(cfg, base_url + "/healthz", none)
                print("  (f) flash sale …", flush=True)
                results["f"] = run_wrk(cfg, base_url, cfg.duration_s, script("flash")())
                time.sleep(1)
                figures["flash_reward_after"] = reward_counts(base_url, key, "flash")
                print("  (g) sold out only …", flush=True)
                ops_before = account_ops(base_url)
                trips_before = reward_db_round_trips(base_url)
                commits_before = pg_commits(dsn)
                results["g"] = run_wrk(cfg, base_url, cfg.duration_s, script("flash")())
                commits_during = pg_commits(dsn) - commits_before
                time.sleep(1)
                figures["sold_out_account_ops"] = account_ops(base_url) - ops_before
                figures["sold_out_reward_db_trips"] = reward_db_round_trips(base_url) - trips_before
                figures["sold_out_pg_commits"] = commits_during
                print("  (s) unlimited reward, whole sagas …", flush=True)
                results["s"] = measure(cfg, base_url, script("unlimited"))
                time.sleep(1)
                figures["reward_shards"] = [s for s in shard_stats(base_url) if "reward_shard" in s]
                figures["queue_peaks"] = queue_peaks(base_url)
                print(f"  queue high-water marks: {figures['queue_peaks']}", flush=True)
            print("running the verifier …", flush=True)
            from loadtests.verify import main as verify_main

            figures["verifier_exit"] = verify_main(["--database-url", dsn])

    titles = {
        "a": "(a) GET /healthz (no-op ceiling)",
        "f": f"(f) flash sale: 1 reward, {args.stock:,} units",
        "g": "(g) sold out: rejections only",
        "s": "(s) unlimited reward: whole sagas",
    }
    print(f"\n{'phase':<42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}  answers")
    for name, r in results.items():
        print(
            f"{titles[name]:<42} {r.rps:>8,.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{r.requests:>9,}  {answers(r) or ''}"
        )
        if r.socket_errors and sum(r.socket_errors.values()):
            print(f"{'':<42} socket errors {r.socket_errors}")
    ceiling = results["a"].rps
    print(f"\nflash sale / ceiling: {results['f'].rps / ceiling:.2f}  (target ≥ 0.50)")
    print(f"sold out / ceiling:   {results['g'].rps / ceiling:.2f}")
    print(f"whole sagas / ceiling: {results['s'].rps / ceiling:.2f}")
    print(f"flash sale p99: {results['f'].p99_ms:.0f} ms  (target ≤ 250 ms)")
    print(f"flash reward after the sale: {figures['flash_reward_after']}")
    print(
        f"during (g): {figures['sold_out_reward_db_trips']} reward-shard round trips to "
        f"PostgreSQL, {figures['sold_out_account_ops']} account-shard operations; "
        f"{figures['sold_out_pg_commits']} transactions in the bench database from any source "
        "(autovacuum, periodic pings and recovery scans included)"
    )
    print(f"verifier exit code: {figures['verifier_exit']}")
    figures["phases"] = {
        k: {
            "title": titles[k],
            "rps": r.rps,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "requests": r.requests,
            "answers": answers(r),
            "cpu_by_process": r.cpu_by_process,
        }
        for k, r in results.items()
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0 if figures["verifier_exit"] == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the service and Ray were stopped", file=sys.stderr)
        sys.exit(130)
