"""Create the data a load test scenario needs, through the HTTP API.

    python -m loadtests.setup flash_sale|mixed|hot_member [--host http://127.0.0.1:8000]
        [--key KEY] [--program ID] [--reward ID] [--members N] [--member-prefix P]
        [--points N] [--stock N|unlimited] [--cost N] [--per-member-limit N|none]
        [--concurrency 64]

Creates (or updates) the program, the scenario's reward, and `--members` members, each
credited `--points` points. Defaults are the scenario's (loadtests/scenarios.py), which are
also the locustfile's defaults. The admin key defaults to $POINTS_ADMIN_KEY, else
~/.points/admin_key (where `points up` keeps it).

Safe to re-run: every credit carries the Idempotency-Key `loadtest-setup:<member>`, so a
second run replays the first run's answers instead of crediting again (a re-run with a
different --points is refused per member with idempotency_conflict, and counted). The
reward is PUT with the same fields again; its `stock` counts units stocked in all, so units
already sold stay sold: for a fresh flash sale, use a new --program.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadtests.scenarios import SCENARIOS, Scenario, default_admin_key

RETRIES = 20  # 503 (retryable, same key) and transport errors, with a growing pause
CONNECTIONS_PER_CLIENT = 4
UNSET: Any = object()  # --stock / --per-member-limit not given (None means unlimited)


def _optional_int(text: str) -> int | None:
    if text.lower() in ("none", "null", "unlimited"):
        return None
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.setup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="service base URL")
    parser.add_argument("--key", default=None, help="admin API key")
    parser.add_argument("--program", help="program id")
    parser.add_argument("--program-name", default=None)
    parser.add_argument("--reward", help="reward id")
    parser.add_argument("--members", type=int, help="how many members")
    parser.add_argument("--member-prefix", help="member ids are <prefix><i>, i = 0..N-1")
    parser.add_argument("--points", type=int, help="points credited to every member")
    parser.add_argument(
        "--stock", type=_optional_int, default=UNSET, help="reward units (or 'unlimited')"
    )
    parser.add_argument("--cost", type=int, help="reward cost in points")
    parser.add_argument(
        "--per-member-limit", type=_optional_int, default=UNSET, help="units (or 'none')"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    return parser.parse_args(argv)


def scenario_from(args: argparse.Namespace) -> Scenario:
    base = SCENARIOS[args.scenario]
    overrides: dict[str, Any] = {}
    for field in ("program", "reward", "members", "member_prefix", "points", "cost"):
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    for field in ("stock", "per_member_limit"):  # None is a value here: unlimited
        if getattr(args, field) is not UNSET:
            overrides[field] = getattr(args, field)
    return replace(base, **overrides)


class SetupError(RuntimeError):
    pass


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, retried on 503 (the service's "retry with the same key") and on
    transport errors; any other answer is returned as is."""
    pause = 0.05
    for attempt in range(RETRIES):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError:
            if attempt == RETRIES - 1:
                raise
        else:
            if response.status_code != 503 or attempt == RETRIES - 1:
                return response
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)
    raise AssertionError("unreachable")


def answer_code(response: httpx.Response) -> str:
    if response.status_code < 300:
        return str(response.status_code)
    try:
        return f"{response.status_code} {response.json().get('code', '')}".strip()
    except ValueError:
        return str(response.status_code)


async def put_program(client: httpx.AsyncClient, s: Scenario, name: str | None) -> str:
    response = await send(
        client, "PUT", f"/v1/programs/{s.program}", json={"name": name or s.program}
    )
    if response.status_code not in (200, 201):
        raise SetupError(f"PUT program {s.program}: {response.status_code} {response.text}")
    return "created" if response.status_code == 201 else "already there"


async def put_reward(client: httpx.AsyncClient, s: Scenario) -> dict[str, Any]:
    assert s.reward is not None
    body = {
        "name": f"Load test reward {s.reward}",
        "cost_points": s.cost,
        "stock": s.stock,
        "per_member_limit": s.per_member_limit,
        "active": True,
        "fulfillment": {"type": "none"},
    }
    url = f"/v1/programs/{s.program}/rewards/{s.reward}"
    response = await send(client, "PUT", url, json=body)
    if response.status_code not in (200, 201):
        raise SetupError(f"PUT reward {s.reward}: {response.status_code} {response.text}")
    reward: dict[str, Any] = response.json()
    reward["_created"] = response.status_code == 201
    return reward


async def credit_members(
    clients: list[httpx.AsyncClient], s: Scenario, concurrency: int, console: Console
) -> Counter[str]:
    """Credit every member (created on its first credit), `concurrency` at a time."""
    answers: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(s.members):
        queue.put_nowait(i)
    body = {"points": s.points, "reason": "load test setup"}

    with Progress(
        TextColumn("crediting members"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("credits", total=s.members)

        async def worker(client: httpx.AsyncClient) -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                member = f"{s.member_prefix}{i}"
                response = await send(
                    client,
                    "POST",
                    f"/v1/programs/{s.program}/members/{member}/credits",
                    json=body,
                    headers={"Idempotency-Key": f"loadtest-setup:{member}"},
                )
                code = answer_code(response)
                if response.headers.get("idempotent-replayed") == "true":
                    code += " (replayed: credited by an earlier run)"
                answers[code] += 1
                progress.advance(bar)

        workers = max(1, concurrency)
        await asyncio.gather(*(worker(clients[w % len(clients)]) for w in range(workers)))
    return answers


def make_clients(host: str, key: str, concurrency: int, timeout: float) -> list[httpx.AsyncClient]:
    """Several small connection pools rather than one big one: httpx's pool bookkeeping
    grows with its size (one 64-connection pool cost ~4x the client CPU per request of
    sixteen 4-connection pools here), and the client, not the service, was the limit."""
    count = max(1, -(-concurrency // CONNECTIONS_PER_CLIENT))
    limits = httpx.Limits(
        max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT
    )
    return [
        httpx.AsyncClient(
            base_url=host.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            limits=limits,
        )
        for _ in range(count)
    ]


async def run(args: argparse.Namespace) -> int:
    console = Console()
    s = scenario_from(args)
    key = args.key or default_admin_key()
    if not key:
        console.print("no admin key: give --key, set POINTS_ADMIN_KEY or run `points up` once")
        return 2
    clients = make_clients(args.host, key, args.concurrency, args.timeout)
    client = clients[0]
    try:
        try:
            program_state = await put_program(client, s, args.program_name)
        except (httpx.TransportError, SetupError) as exc:
            console.print(f"[red]cannot set up the program at {args.host}: {exc}[/red]")
            return 1
        console.print(f"program  {s.program}: {program_state}")
        reward: dict[str, Any] | None = None
        if s.reward is not None:
            reward = await put_reward(client, s)
            console.print(
                f"reward   {s.reward}: {'created' if reward['_created'] else 'updated'}, "
                f"cost {s.cost} points, stock "
                f"{'unlimited' if s.stock is None else s.stock}, per member "
                f"{'unlimited' if s.per_member_limit is None else s.per_member_limit}"
            )
        started = time.perf_counter()
        answers = await credit_members(clients, s, args.concurrency, console)
        elapsed = time.perf_counter() - started
        if reward is not None:
            reward = (
                await send(client, "GET", f"/v1/programs/{s.program}/rewards/{s.reward}")
            ).json()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    last = s.members - 1
    console.print(
        f"members  {s.member_prefix}0 .. {s.member_prefix}{last}: {s.members} members with "
        f"{s.points} points each, in {elapsed:.1f} s ({s.members / max(elapsed, 1e-9):.0f}/s)"
    )
    for code, count in sorted(answers.items()):
        console.print(f"         credit answers {code}: {count}")
    if reward is not None:
        left = reward["stock"]
        console.print(
            f"reward   units left {left if left is not None else 'unlimited'}, "
            f"reserved {reward['reserved']}, redeemed {reward['redeemed']}"
        )
        if s.stock is not None and reward["redeemed"]:
            console.print(
                "[yellow]this reward already sold units in an earlier run; "
                "for a fresh sale use another --program[/yellow]"
            )
    failed = sum(n for code, n in answers.items() if not code.startswith("20"))
    console.print(locust_hint(args, s, key))
    if failed:
        console.print(f"[red]{failed} credits were not applied (see the answers above)[/red]")
        return 1
    return 0


LOCUST_RUNS = {  # user class and load shape per scenario, as in the README
    "flash_sale": (
        "FlashSaleUser",
        "-u {members} -r 500 -t 2m",
        " --csv /tmp/flash --only-summary",
    ),
    "mixed": ("MixedUser", "-u 200 -r 50 -t 1m", ""),
    "hot_member": ("HotMemberUser", "-u 50 -r 50 -t 1m", ""),
}


def locust_hint(args: argparse.Namespace, s: Scenario, key: str) -> str:
    """The locust command for what was just set up (non-default parameters spelled out)."""
    base = SCENARIOS[args.scenario]
    extra = ""
    for field, flag in (
        ("program", "--program"),
        ("reward", "--reward"),
        ("member_prefix", "--member-prefix"),
        ("members", "--members"),
    ):
        if getattr(s, field) != getattr(base, field):
            extra += f" {flag} {getattr(s, field)}"
    if args.key and args.key != default_admin_key():
        extra += " --admin-key <KEY>"
    user_class, shape, output = LOCUST_RUNS[args.scenario]
    return (
        f"next: .venv/bin/locust -f loadtests/locustfile.py {user_class} --headless "
        f"{shape.format(members=s.members)} --host {args.host.rstrip('/')}{extra}{output}"
    )


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
