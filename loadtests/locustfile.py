"""Locust scenarios for Points. Create the data first with `python -m loadtests.setup`.

    locust -f loadtests/locustfile.py FlashSaleUser --headless -u 10000 -r 1000 -t 3m \\
        --host http://127.0.0.1:8000 --csv /tmp/flash

User classes (name one on the command line):

- FlashSaleUser: every simulated user is ONE distinct member (fan-0, fan-1, …, one per
  user, handed out by a counter) who redeems one unit of the one reward exactly once. With
  more users than units, the expected answers are exactly `stock` x 201 and the rest
  409 out_of_stock. Locust starts the users of each second together (in one burst); each
  user waits uniform(0, --arrival-spread) s (default 1) before its request, so arrivals
  are spread over the second at the -r rate; --arrival-spread 0 sends each burst at once
  (latency then includes the queue of the burst). After its redemption a user sends
  nothing more and closes its connection; once every user has had its answer the run ends
  by itself (the summary follows), so -t is only a bound. (Why users do not raise
  StopUser: during the ramp-up Locust tops every user class back up to its target count,
  so users that stop themselves are replaced by new ones: -u 100 would start ~300 users
  and hand out more members than -u.)
- MixedUser: everyday traffic over all members, picked at random, per task weights:
  balance read 50, history read (limit=10) 25, credit 10, debit 10, redemption of an
  unlimited reward 5. Think time: uniform 0..--think-time s (default 1 s) between tasks.
- HotMemberUser: everybody on one member (hot-0): credit 1 point 45, debit 1 point 45,
  balance read 10. No think time by default (closed loop).

Answers are counted by code: every request is reported under "<operation> [<answer>]", e.g.
"redeem [201]" or "redeem [409 out_of_stock]", so Locust's table and --csv files show the
answers by code (each with its own latency; "Aggregated" is the whole). A 2xx, and a 409
that is a business answer (out_of_stock, insufficient_points, limit_exceeded,
reward_inactive), count as successes; any 5xx (including a retryable 503), any other 4xx
and any transport error count as failures. At the end of the run a summary prints the
answers by code and, for the flash sale, the units sold against the stock.

Parameters: Locust arguments (after the user class) or environment variables, defaulting
to `python -m loadtests.setup`'s defaults (loadtests/scenarios.py):
    --program ID          LOADTEST_PROGRAM        program (default: the scenario's)
    --reward ID           LOADTEST_REWARD         reward (flash sale, mixed)
    --member-prefix P     LOADTEST_MEMBER_PREFIX  members are <P>0 .. <P><members-1>
    --members N           LOADTEST_MEMBERS        how many members setup created
    --admin-key KEY       POINTS_ADMIN_KEY        default: ~/.points/admin_key
    --think-time S        LOADTEST_THINK_TIME     max pause between tasks, seconds
    --arrival-spread S    LOADTEST_ARRIVAL_SPREAD flash sale: spread each burst over S s
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import secrets
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import gevent
import locust.stats
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import STATE_RUNNING, MasterRunner, WorkerRunner

from loadtests.scenarios import SCENARIOS, default_admin_key

log = logging.getLogger("loadtests")

# 409 codes that are the service's correct answer to the request, not a fault.
BUSINESS_CODES = frozenset(
    {"out_of_stock", "insufficient_points", "limit_exceeded", "reward_inactive"}
)
RUN = secrets.token_hex(4)  # makes this run's Idempotency-Keys unique (no replays)
_keys = itertools.count()


# --------------------------------------------------------------------------- parameters


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--program", env_var="LOADTEST_PROGRAM", default="", help="program id")
    parser.add_argument("--reward", env_var="LOADTEST_REWARD", default="", help="reward id")
    parser.add_argument(
        "--member-prefix", env_var="LOADTEST_MEMBER_PREFIX", default="", help="member id prefix"
    )
    parser.add_argument(
        "--members", env_var="LOADTEST_MEMBERS", type=int, default=0, help="members set up"
    )
    parser.add_argument(
        "--admin-key", env_var="POINTS_ADMIN_KEY", default="", is_secret=True, help="API key"
    )
    parser.add_argument(
        "--think-time",
        env_var="LOADTEST_THINK_TIME",
        type=float,
        default=-1.0,
        help="max pause between a user's tasks, s (MixedUser 1, HotMemberUser 0)",
    )
    parser.add_argument(
        "--arrival-spread",
        env_var="LOADTEST_ARRIVAL_SPREAD",
        type=float,
        default=1.0,
        help="FlashSaleUser: each user waits uniform(0, S) s before redeeming, so that the "
        "users Locust starts together each second arrive over that second (0: all at once)",
    )


@dataclass(frozen=True)
class Params:
    program: str
    reward: str
    member_prefix: str
    members: int
    headers: dict[str, str]
    think_time: float
    arrival_spread: float


def params(environment: Environment, scenario: str, think_time: float) -> Params:
    base = SCENARIOS[scenario]
    options = environment.parsed_options
    key = (getattr(options, "admin_key", "") if options else "") or default_admin_key()
    if not key:
        raise RuntimeError("no admin key: --admin-key, POINTS_ADMIN_KEY or ~/.points/admin_key")

    def option(name: str) -> Any:
        return getattr(options, name, None) if options else None

    chosen_think = option("think_time")
    return Params(
        program=option("program") or base.program,
        reward=option("reward") or base.reward or "",
        member_prefix=option("member_prefix") or base.member_prefix,
        members=option("members") or base.members,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        think_time=think_time if chosen_think is None or chosen_think < 0 else chosen_think,
        arrival_spread=max(0.0, option("arrival_spread") or 0.0),
    )


# --------------------------------------------------------------------------- requests


def answer_of(response: Any) -> tuple[str, bool]:
    """(answer label, counts as success)."""
    status = response.status_code or 0
    if status == 0:
        return "transport error", False
    if 200 <= status < 300:
        replayed = response.headers.get("idempotent-replayed") == "true"
        return (f"{status} replayed" if replayed else str(status)), True
    code = ""
    with contextlib.suppress(Exception):
        code = str(json.loads(response.content).get("code") or "")
    label = f"{status} {code}".strip()
    return label, status == 409 and code in BUSINESS_CODES


class PointsUser(FastHttpUser):
    abstract = True
    scenario = ""
    default_think_time = 0.0

    def on_start(self) -> None:
        self.p = params(self.environment, self.scenario, self.default_think_time)
        prefix = f"/v1/programs/{self.p.program}"
        self.program_path = prefix

    def call(
        self,
        op: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        write: bool = False,
    ) -> str:
        headers = dict(self.p.headers)
        if write:
            worker = _runner_index(self.environment)
            headers["Idempotency-Key"] = f"lt-{RUN}-{worker}-{next(_keys)}"
        data = json.dumps(body) if body is not None else None
        with self.client.request(
            method, path, data=data, headers=headers, name=op, catch_response=True
        ) as response:
            label, ok = answer_of(response)
            response.request_meta["name"] = f"{op} [{label}]"
            if ok:
                response.success()
            else:
                detail = (response.text or "")[:200] if response.status_code else response.error
                response.failure(f"{label}: {detail}")
        return label


def _runner_index(environment: Environment) -> int:
    runner = environment.runner
    return runner.worker_index if isinstance(runner, WorkerRunner) else 0


# --------------------------------------------------------------------------- flash sale

_flash_members = itertools.count()
# Users that have had their answer and requests they sent (this process; on a master: the
# sums over all workers, reported by message because a master runs no users).
_flash_done = 0
_flash_sent = 0
_flash_ending = False
FLASH_DONE_MESSAGE = "points_flash_user_done"


class FlashSaleUser(PointsUser):
    """One member, one redemption of one unit, then silence (see the module docstring)."""

    scenario = "flash_sale"
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        # Processes started with --processes N are workers 0..N-1: take every N-th member.
        stride = getattr(self.environment.parsed_options, "processes", 0) or 1
        offset = _runner_index(self.environment)
        self.index = next(_flash_members) * max(stride, 1) + offset
        self.answered = False

    @task
    def redeem_once(self) -> None:
        if self.answered:
            gevent.sleep(3600)  # stay counted as a running user; the run ends without us
            return
        self.answered = True
        if self.p.arrival_spread:
            gevent.sleep(random.uniform(0, self.p.arrival_spread))
        sent = 0
        if self.index >= self.p.members:
            log.warning(
                "user %d has no member (%d set up): nothing sent", self.index, self.p.members
            )
        else:
            member = f"{self.p.member_prefix}{self.index}"
            body = {"member_id": member, "reward_id": self.p.reward, "quantity": 1}
            self.call("redeem", "POST", f"{self.program_path}/redemptions", body, write=True)
            sent = 1
        self.client.client.close()  # no idle keep-alive connection per finished user
        _flash_user_done(self.environment, 1, sent)


def _flash_user_done(environment: Environment, done: int, sent: int) -> None:
    global _flash_done, _flash_sent
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(FLASH_DONE_MESSAGE, [done, sent])
        return
    _flash_done += done
    _flash_sent += sent
    _maybe_end_flash_sale(environment)


def _maybe_end_flash_sale(environment: Environment) -> None:
    """Every user has had its answer and no more are coming: end the run now."""
    global _flash_ending
    runner = environment.runner
    if _flash_ending or runner is None or runner.state != STATE_RUNNING:
        return
    if runner.target_user_count and _flash_done >= runner.target_user_count:
        _flash_ending = True
        log.info("flash sale: all %d users have had their answer, stopping", _flash_done)
        gevent.spawn(_quit_when_counted, environment)


def _quit_when_counted(environment: Environment, timeout_s: float = 15.0) -> None:
    """Quit once the stats are complete. Workers report their stats every few seconds:
    wait (bounded) until the master's stats hold every request sent. Then wait for one more
    pass of the --csv writer, which rewrites the files every second but not at exit."""
    deadline = time.monotonic() + timeout_s
    while environment.stats.total.num_requests < _flash_sent and time.monotonic() < deadline:
        gevent.sleep(0.2)
    gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.5)
    assert environment.runner is not None
    environment.runner.quit()


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(
            FLASH_DONE_MESSAGE,
            lambda msg, **__: _flash_user_done(environment, int(msg.data[0]), int(msg.data[1])),
        )


@events.spawning_complete.add_listener
def _on_spawned(user_count: int, **_: Any) -> None:
    env = _current_environment
    if env is not None and _is_flash_sale(env):
        _maybe_end_flash_sale(env)


_current_environment: Environment | None = None


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    global _current_environment, _flash_done, _flash_sent, _flash_ending
    _current_environment = environment
    _flash_done, _flash_sent, _flash_ending = 0, 0, False
    runner = environment.runner
    if _is_flash_sale(environment) and not isinstance(runner, WorkerRunner):
        options = environment.parsed_options
        members = params(environment, "flash_sale", 0).members
        users = getattr(options, "num_users", None)
        if users and users > members:
            log.warning("-u %d is more than the %d members set up", users, members)


def _is_flash_sale(environment: Environment) -> bool:
    return any(u.__name__ == "FlashSaleUser" for u in environment.user_classes)


# --------------------------------------------------------------------------- mixed, hot member


class MixedUser(PointsUser):
    """Everyday traffic; task weights: reads 75 (balance 50, history 25), writes 25."""

    scenario = "mixed"
    default_think_time = 1.0

    def wait_time(self) -> float:
        return random.uniform(0, self.p.think_time) if self.p.think_time > 0 else 0.0

    def member_path(self) -> str:
        member = f"{self.p.member_prefix}{random.randrange(self.p.members)}"
        return f"{self.program_path}/members/{member}"

    @task(50)
    def balance(self) -> None:
        self.call("balance", "GET", self.member_path())

    @task(25)
    def history(self) -> None:
        self.call("history", "GET", self.member_path() + "/transactions?limit=10")

    @task(10)
    def credit(self) -> None:
        body = {"points": 10, "reason": "load test purchase"}
        self.call("credit", "POST", self.member_path() + "/credits", body, write=True)

    @task(10)
    def debit(self) -> None:
        body = {"points": 5, "reason": "load test spend"}
        self.call("debit", "POST", self.member_path() + "/debits", body, write=True)

    @task(5)
    def redeem(self) -> None:
        member = f"{self.p.member_prefix}{random.randrange(self.p.members)}"
        body = {"member_id": member, "reward_id": self.p.reward, "quantity": 1}
        self.call("redeem", "POST", f"{self.program_path}/redemptions", body, write=True)


class HotMemberUser(PointsUser):
    """Everybody writes to one member: credits 45, debits 45, balance reads 10."""

    scenario = "hot_member"
    default_think_time = 0.0

    def wait_time(self) -> float:
        return random.uniform(0, self.p.think_time) if self.p.think_time > 0 else 0.0

    def on_start(self) -> None:
        super().on_start()
        self.path = f"{self.program_path}/members/{self.p.member_prefix}0"

    @task(45)
    def credit(self) -> None:
        self.call("credit", "POST", self.path + "/credits", {"points": 1, "reason": "hot"}, True)

    @task(45)
    def debit(self) -> None:
        self.call("debit", "POST", self.path + "/debits", {"points": 1, "reason": "hot"}, True)

    @task(10)
    def balance(self) -> None:
        self.call("balance", "GET", self.path)


# --------------------------------------------------------------------------- summary


@events.test_stop.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    by_op: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for (name, _method), entry in environment.stats.entries.items():
        op, _, label = name.partition(" [")
        by_op[op][label.rstrip("]") or "?"] = (entry.num_requests, entry.num_failures)
    lines = ["", "Answers by code:"]
    for op in sorted(by_op):
        for label, (count, failures) in sorted(by_op[op].items()):
            mark = "  FAILURE" if failures else ""
            lines.append(f"  {op:<8} {label:<28} {count:>8}{mark}")
    total = environment.stats.total
    lines.append(f"  requests {total.num_requests}, failures {total.num_failures}")
    if _is_flash_sale(environment):
        lines += _flash_summary(environment, by_op.get("redeem", {}))
    print("\n".join(lines), flush=True)


def _flash_summary(environment: Environment, redeem: dict[str, tuple[int, int]]) -> list[str]:
    p = params(environment, "flash_sale", 0)
    sold = redeem.get("201", (0, 0))[0]
    out_of_stock = redeem.get("409 out_of_stock", (0, 0))[0]
    line = f"Flash sale: {sold} x 201 (units sold), {out_of_stock} x out_of_stock"
    host = (environment.host or "").rstrip("/")
    url = f"{host}/v1/programs/{p.program}/rewards/{p.reward}"
    try:
        request = urllib.request.Request(url, headers=p.headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            reward = json.loads(answer.read())
    except Exception as exc:
        return [line, f"  (could not read the reward at {url}: {exc})"]
    stocked = reward.get("stocked")
    verdict = "sold out" if reward.get("stock") == 0 else "not sold out"
    return [
        f"{line}; stock {stocked}: {verdict}",
        f"  reward {p.reward}: stock (units left) {reward.get('stock')}, "
        f"reserved {reward.get('reserved')}, redeemed {reward.get('redeemed')}",
    ]
