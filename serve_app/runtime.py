"""Start and stop the whole service on Ray: used by `points up`, the e2e tests and the bench."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import serve

from actors.routing import NAMESPACE, REWARD_SHARD_NAME_PREFIX, SHARD_NAME_PREFIX
from db.api_repo import admin_key_installed, ensure_admin_key
from db.embedded import EmbeddedPostgres, EmbeddedRedis
from db.engine import libpq_url, migrate
from serve_app import listeners, logs, scrape
from serve_app.auth import hash_key, key_prefix, new_key
from serve_app.settings import Settings

log = logging.getLogger("points.runtime")

APP_NAME = "points"
# Names of the detached actors a deployment creates (undeploy removes them).
OUR_ACTORS = (SHARD_NAME_PREFIX, REWARD_SHARD_NAME_PREFIX, "points-topology", "points-event")

# The "fast" serve profile: replicas take HTTP directly (no Python proxy hop) behind
# HAProxy, with Serve's throughput-optimized defaults. See docs/architecture.md.
FIXED_PORT_SETTINGS = (
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)
FAST_SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # HAProxy would log every request to a socket that a Python actor parses for Serve's
    # proxy metrics: 6-17% of a core here. Replica metrics remain.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
}


@dataclass
class Services:
    """Database and Redis URLs, and whatever embedded servers were started for them."""

    database_url: str
    redis_url: str
    embedded: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        """Stop every embedded server, even after one fails; RuntimeError names each failure."""
        failures: list[str] = []
        for server in reversed(self.embedded):
            try:
                server.stop()
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
        self.embedded.clear()
        if failures:
            raise RuntimeError("; ".join(failures))


def start_services(settings: Settings) -> Services:
    embedded: list[Any] = []
    database_url = settings.database_url
    if not database_url:
        pg = EmbeddedPostgres(settings.data_dir)
        database_url = pg.start()
        embedded.append(pg)
    redis_url = settings.redis_url
    if not redis_url:
        rd = EmbeddedRedis(settings.data_dir)
        redis_url = rd.start()
        embedded.append(rd)
    return Services(libpq_url(database_url), redis_url, embedded)


class AdminKeySource(enum.Enum):
    """Where the admin key `points up` uses came from (the start-up banner says which)."""

    GENERATED = "generated"  # new in this start, saved to the key file: shown this once
    KEY_FILE = "key_file"  # read from the key file an earlier start wrote
    ENVIRONMENT = "environment"  # given by POINTS_ADMIN_KEY


ADMIN_KEY_ID = "admin"


def provision_admin_key(settings: Settings, dsn: str) -> tuple[str, AdminKeySource]:
    """Returns (admin key, where it came from). Only the hash goes to the database."""
    if settings.admin_key:
        ensure_admin_key(dsn, hash_key(settings.admin_key))
        return settings.admin_key, AdminKeySource.ENVIRONMENT
    key_file = settings.admin_key_file
    if key_file.exists() and admin_key_installed(dsn):
        return key_file.read_text().strip(), AdminKeySource.KEY_FILE
    # No key file, or a database that has no admin key yet (a new DATABASE_URL with an
    # old data dir): a new key, so the file and the database agree again.
    key = new_key(ADMIN_KEY_ID)
    ensure_admin_key(dsn, hash_key(key), ADMIN_KEY_ID, key_prefix(ADMIN_KEY_ID))
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return key, AdminKeySource.GENERATED


def admin_key_note(key: str, source: AdminKeySource, key_file: Path) -> str:
    """The banner's admin key line: the key itself only when it is new (it is in the key
    file from then on, and start-up output often ends up in logs)."""
    assert key
    if source is AdminKeySource.GENERATED:
        return f"{key} (new: generated now and saved to {key_file}; shown only this once)"
    if source is AdminKeySource.KEY_FILE:
        return f"read from the key file {key_file}"
    assert source is AdminKeySource.ENVIRONMENT
    return "given by POINTS_ADMIN_KEY"


RATE_LIMIT_SETTINGS = (
    "rate_limits",
    "rate_limit_key_per_s",
    "rate_limit_key_burst",
    "rate_limit_member_per_s",
    "rate_limit_member_burst",
    "auth_failures_per_min",
    "auth_failures_burst",
    "rate_limit_redis_timeout_ms",
    "rate_limit_redis_retry_s",
    "rate_limit_fallback_replicas",
)


def shard_config(settings: Settings) -> dict[str, Any]:
    return {
        "batch_max": settings.batch_max,
        "batch_window_ms": settings.batch_window_ms,
        "accounts_cached_max": settings.accounts_cached_max,
        "reward_shards": settings.reward_shards,
        "webhook_secret": webhook_secret(settings),
        "webhook_attempts": settings.webhook_attempts,
        "webhook_backoff_s": settings.webhook_backoff_s,
        "recovery_interval_s": settings.recovery_interval_s,
        "expiry_interval_s": settings.expiry_interval_s,
        "idempotency_retention_days": settings.idempotency_retention_days,
        "retention_interval_s": settings.retention_interval_s,
        "ledger_check_interval_s": settings.ledger_check_interval_s,
        "shards": settings.shards,
        "event_stream": settings.event_stream,
        "ingress_queued_max": settings.ingress_queued_max,
        "lane_queued_max": settings.lane_queued_max,
        "shard_queued_max": settings.shard_queued_max,
        "commit_retry_s": settings.commit_retry_s,
        "breaker_failures": settings.breaker_failures,
        "breaker_cooldown_s": settings.breaker_cooldown_s,
        "log_format": settings.log_format,
        # The ingress replicas' rate limiter (serve_app/ratelimit.py RateLimitConfig).
        "rate_limit": {
            name: getattr(settings, name) for name in (*RATE_LIMIT_SETTINGS, "replicas")
        },
    }


def webhook_secret(settings: Settings) -> str:
    """The key fulfilment webhooks are signed with: the setting, else one generated on first
    use and kept in data_dir (0600), so receivers keep verifying across restarts."""
    if settings.webhook_secret:
        return settings.webhook_secret
    path = settings.webhook_secret_file
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


# Ports handed out below Linux's ephemeral range (32768-60999 by default): a port picked
# from inside it can be taken by an outgoing connection (Ray opens many) between the pick
# and the listener's bind, which failed HAProxy's start once ("Address already in use").
FREE_PORT_RANGE = (20_000, 32_000)
FREE_PORT_ATTEMPTS = 100


def free_port() -> int:
    for _ in range(FREE_PORT_ATTEMPTS):
        port = random.randrange(*FREE_PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as sock:  # all tried were busy: let the kernel pick one
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ray(settings: Settings) -> bool:
    """Join `ray_address` or start a local head. Returns True if this process started it."""
    if settings.serve_profile == "fast":
        for name, value in FAST_SERVE_ENV.items():
            os.environ.setdefault(name, value)
        # Fixed default ports would be shared by two services on one machine (a service
        # and its tests, say): HAProxy's metrics and stats listeners (9101, 8404) and the
        # fallback proxy (8500, 9500) that HAProxy sends requests to while no replica is up
        # yet. With another service's fallback proxy on 8500, this service's first requests
        # were answered by that service (seen here: 401 for a key that was valid here).
        for name in FIXED_PORT_SETTINGS:
            os.environ.setdefault(name, str(free_port()))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # HAProxy's metrics and stats listeners on aux_host (serve_app/listeners.py): a setup
    # hook in every worker of this job, the HAProxyManager (started by Serve) included.
    # The log format in every worker too (serve_app/logs.py), and in this process.
    logs.configure(settings.log_format)
    job_env: dict[str, object] = (
        listeners.runtime_env(settings.aux_host, settings.log_format)
        if settings.serve_profile == "fast"
        else {
            "worker_process_setup_hook": "serve_app.logs.setup_worker",
            "env_vars": {logs.LOG_FORMAT_ENV: settings.log_format},
        }
    )
    if settings.ray_address:
        ray.init(
            address=settings.ray_address,
            namespace=NAMESPACE,
            log_to_driver=False,
            runtime_env=job_env,
        )
        return False
    # A local head picks free ports for GCS and friends; it never takes Redis's 6379.
    # address="local": always a new head, never someone else's cluster found in /tmp/ray.
    become_subreaper()
    ray.init(
        address="local",
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env=job_env,
        # Ray's metrics agent serves every worker's metrics here (docs/metrics.md).
        _metrics_export_port=settings.metrics_port or free_port(),
    )
    return True


def scrape_targets() -> list[str]:
    """`host:port` of every live node's metrics agent (call only while the cluster
    answers: ray.nodes() has no deadline)."""
    return scrape.node_targets(ray.nodes())  # type: ignore[no-untyped-call]


def keep_targets(path: Path) -> Callable[[], None]:
    """What `serve_until_stopped` runs while the cluster answers: the discovery file."""

    def refresh() -> None:
        scrape.write_targets(path, scrape_targets())

    return refresh


def ray_address() -> str | None:
    """The address of the cluster's GCS, which another node joins (`ray start --address`)."""
    with contextlib.suppress(Exception):
        found = ray.get_runtime_context().gcs_address
        return str(found) if found else None
    return None


def stop_ray(settings: Settings, started_ray: bool, reap: bool = True) -> int:
    """Stop what `start_ray` + `deploy` started; returns how many leftover processes ended.

    On our own local head, `ray.shutdown()` ends every actor (shards included) and the
    subreaper ends what they started (HAProxy); `serve.shutdown()` would only add a 30 s
    wait for the controller. On a shared cluster, remove what we deployed, unless the
    cluster no longer answers: then there is nothing left to remove, and Serve's and Ray's
    calls would wait for it until Ray ends this process (see CLUSTER_GONE_AFTER_S).
    `ray.shutdown()` itself gives up on a gone cluster after a few seconds (5 s, measured).
    """
    if ray.is_initialized():
        if not started_ray and cluster_answers():
            undeploy(settings)
        ray.shutdown()
    return reap_descendants(ray_only=True) if started_ray and reap else 0


# While `points up` serves, it checks that its Ray cluster still answers. A driver whose
# GCS is gone is ended by Ray itself once gcs_rpc_server_reconnect_timeout_s (60 s by
# default) has passed, abruptly (a fatal log line, exit 1): none of `points up`'s stop runs,
# so an embedded PostgreSQL or Redis it started keeps running and no "Stopped." is printed.
# So it stops by itself first, cleanly, once the cluster has not answered for
# CLUSTER_GONE_AFTER_S; a GCS back sooner (GCS fault tolerance restarts it) is waited for.
CLUSTER_CHECK_INTERVAL_S = 2.0
CLUSTER_PROBE_TIMEOUT_S = 2.0
CLUSTER_GONE_AFTER_S = 20.0


def cluster_answers(timeout_s: float = CLUSTER_PROBE_TIMEOUT_S) -> bool:
    """Does the GCS of the cluster this process joined answer within `timeout_s`?

    A key-value read with a deadline, through the driver's GCS client: Ray's public calls
    (ray.nodes(), ray.get_actor()) have none and wait for a gone GCS until Ray ends the
    process. Ray has no public liveness call, hence the private attribute; if a Ray
    upgrade removes it, this answers False and `points up` stops: loudly, not silently.
    """
    gcs = getattr(ray._private.worker.global_worker, "gcs_client", None)
    if gcs is None:  # not connected
        return False
    try:
        gcs.internal_kv_get(b"points-liveness-probe", b"points", timeout=timeout_s)
    except Exception:
        return False
    return True


class Stop(Protocol):
    """What `serve_until_stopped` waits on (a threading.Event, or `points up`'s flag)."""

    def wait(self, timeout: float | None = None) -> bool: ...


def serve_until_stopped(
    stop: Stop,
    answers: Callable[[], bool] = cluster_answers,
    interval_s: float = CLUSTER_CHECK_INTERVAL_S,
    gone_after_s: float = CLUSTER_GONE_AFTER_S,
    clock: Callable[[], float] = time.monotonic,
    on_answer: Callable[[], None] | None = None,
) -> bool:
    """Wait until `stop` is set (returns False) or the cluster has not answered for
    `gone_after_s` (returns True: the cluster is gone). `on_answer` runs each time the
    cluster answered (keeping the scrape targets current), never when it did not: a call
    into a gone cluster could wait forever."""
    answered = clock()
    while not stop.wait(interval_s):
        if answers():
            answered = clock()
            if on_answer is not None:
                try:
                    on_answer()
                except Exception:
                    log.exception("keeping the scrape targets current failed")
        elif clock() - answered >= gone_after_s:
            return True
    return False


def become_subreaper() -> None:
    """Adopt every process started below us, even when its parent dies first.

    Ctrl-C reaches the whole process group, so Ray's own processes may be gone before we
    clean up; whatever they started (HAProxy, for one) would be orphaned. As a subreaper we
    inherit such processes and end them in `reap_descendants`.
    """
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_child_subreaper = 36
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap_descendants(grace_s: float = 10.0, ray_only: bool = False) -> int:
    """Terminate (then kill) processes still running below this one; returns how many.

    `ray_only`: only Ray's processes and what they started (HAProxy), not, say, an embedded
    PostgreSQL that is still in use.
    """
    import psutil

    procs = psutil.Process().children(recursive=True)
    if ray_only:
        procs = [p for p in procs if _started_by_ray(p)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(procs)


def _started_by_ray(proc: Any) -> bool:
    with contextlib.suppress(Exception):
        return "ray" in " ".join(proc.cmdline()[:2]) or proc.name().startswith("ray::")
    return False


def deploy(
    settings: Settings, dsn: str, redis_url: str | None = None, code_version: str | None = None
) -> str:
    """Deploy (or deploy again: Serve replaces the replicas with a rolling update)."""
    from serve_app.app import build_app

    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(
        build_app(
            dsn,
            redis_url or settings.redis_url,
            settings.shards,
            shard_config(settings),
            settings.replicas,
            settings.max_replicas,
            code_version,
        ),
        name=APP_NAME,
        route_prefix="/",
    )
    return f"http://{settings.host}:{settings.port}"


def undeploy(settings: Settings) -> None:
    """Remove Serve (its app, proxies, HAProxy) and the shard actors from the cluster."""
    with contextlib.suppress(Exception):
        serve.shutdown()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    # However many shards moves made: every named actor of ours (shards, the move
    # coordinator, the event consumer).
    with contextlib.suppress(Exception):
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != NAMESPACE or not entry["name"].startswith(OUR_ACTORS):
                continue
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE))


def prepare_database(settings: Settings, dsn: str) -> tuple[str, AdminKeySource]:
    """Apply migrations and install the admin key; returns (key, where it came from)."""
    migrate(dsn)
    return provision_admin_key(settings, dsn)
