"""Typed settings, read in one place: environment (DATABASE_URL, REDIS_URL, POINTS_*) and flags."""

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.breaker import COOLDOWN_S, FAILURES_TO_OPEN
from actors.group_commit import QUEUED_MAX, RETRY_S
from actors.shard_client import LANE_QUEUED_MAX
from domain.limits import (
    IDEMPOTENCY_RETENTION_DAYS_DEFAULT,
    IDEMPOTENCY_RETENTION_DAYS_MAX,
    IDEMPOTENCY_RETENTION_DAYS_MIN,
    RETENTION_INTERVAL_S_DEFAULT,
)

# Requests a Serve replica holds waiting for one of its max_ongoing_requests slots
# (serve_app/app.py); past it Serve answers 503 with Retry-After at once.
INGRESS_QUEUED_MAX = 1000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POINTS_", extra="ignore")

    # Unset: `points up` starts an embedded PostgreSQL / Redis in `data_dir`.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "POINTS_DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "POINTS_REDIS_URL")
    )
    data_dir: Path = Path.home() / ".points"
    host: str = "127.0.0.1"
    # Where auxiliary listeners bind (HAProxy's metrics exporter and stats page in the fast
    # profile): loopback unless ops ask otherwise (0.0.0.0 for a Prometheus on another
    # host). serve_app/listeners.py; every port: docs/operations.md.
    aux_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    port: int = Field(default=8000, ge=1, le=65535)
    # Ray: empty = start a local head (on a free port, never Redis's 6379).
    ray_address: str | None = None
    # Account shard actors (each owns slots; see actors/routing.py).
    shards: int = Field(default=2, ge=1, le=1024)
    replicas: int = Field(default=1, ge=1, le=64)
    # Ingress autoscaling: above `replicas` (the floor), Serve adds replicas up to this many
    # when each has more than its target of requests in flight (serve_app/app.py). Unset
    # or equal to `replicas`: a fixed number of replicas.
    max_replicas: int | None = Field(default=None, ge=1, le=64)
    batch_max: int = Field(default=1024, ge=1, le=100_000)
    # Wait this long for more operations before a group commit: bigger batches cost less
    # CPU per operation (measured: more debits/s, lower p99 under load) for up to 5 ms
    # more latency when idle.
    batch_window_ms: float = Field(default=5.0, ge=0, le=100)
    accounts_cached_max: int = Field(default=200_000, ge=1)
    # Reward stock actors (a reward's slot picks one; a hot reward is one actor's work).
    reward_shards: int = Field(default=1, ge=1, le=1024)
    # Fulfilment webhooks are signed with this (HMAC-SHA256); unset: generated once and
    # kept in data_dir/webhook_secret.
    webhook_secret: str | None = None
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_s: float = Field(default=0.5, ge=0, le=60)
    # How often each reward shard looks for redemptions left half-way (and at start).
    recovery_interval_s: float = Field(default=10.0, gt=0, le=3600)
    # How often each account shard writes off points past their expiry.
    expiry_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    # Idempotency records (and events' remembered answers) older than this are purged; a
    # retry with an older key is applied as new. At least 7 days: the API's promise.
    idempotency_retention_days: int = Field(
        default=IDEMPOTENCY_RETENTION_DAYS_DEFAULT,
        ge=IDEMPOTENCY_RETENTION_DAYS_MIN,
        le=IDEMPOTENCY_RETENTION_DAYS_MAX,
    )
    # How often the retention job runs (in the account shard owning slot 0).
    retention_interval_s: float = Field(default=RETENTION_INTERVAL_S_DEFAULT, gt=0, le=86_400)
    # The local Ray head's metrics export port (Ray's metrics agent; docs/metrics.md);
    # unset: a free one. A joined cluster's nodes have their own (`ray start
    # --metrics-export-port`).
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    # How often the ledger checks (`points verify`'s invariants and hash chain) run inside
    # the service, feeding points_ledger_check_failed (docs/metrics.md).
    ledger_check_interval_s: float = Field(default=300.0, gt=0, le=86_400)
    # Redis stream of business events (consumed by the EventConsumer actor); "" = off.
    event_stream: str = Field(default="points:events", max_length=200)
    # Admin API key; unset: generated on first start, stored hashed, saved to data_dir.
    admin_key: str | None = None
    # Overload and outages (docs/architecture.md, "Overload and outages"). Every queue is
    # bounded; past a bound the answer is 503 `unavailable` with Retry-After at once. None
    # of these is reached by the benches or the flash-sale test in normal operation.
    # Serve's max_queued_requests per ingress replica (both serve profiles).
    ingress_queued_max: int = Field(default=INGRESS_QUEUED_MAX, ge=1, le=1_000_000)
    # Requests waiting in an ingress replica to be sent to one shard.
    lane_queued_max: int = Field(default=LANE_QUEUED_MAX, ge=1, le=1_000_000)
    # Operations waiting in a shard for a group commit.
    shard_queued_max: int = Field(default=QUEUED_MAX, ge=1, le=1_000_000)
    # A group commit whose connection died runs again for up to this long.
    commit_retry_s: float = Field(default=RETRY_S, ge=0, le=15)
    # The shards' circuit breaker around PostgreSQL: open after this many unreachable
    # attempts in a row, fail fast for the cool-down, then probe with one batch.
    breaker_failures: int = Field(default=FAILURES_TO_OPEN, ge=1, le=1000)
    breaker_cooldown_s: float = Field(default=COOLDOWN_S, gt=0, le=300)
    # "fast": Ray Serve direct ingress behind HAProxy with throughput-optimized settings.
    # "default": Serve's standard Python proxy. See docs/architecture.md.
    serve_profile: str = Field(default="fast", pattern="^(fast|default)$")
    # Log lines of every process: "text" for people, "json" (one object per line, with the
    # request id) for log pipelines. serve_app/logs.py.
    log_format: str = Field(default="text", pattern="^(json|text)$")

    # Rate limits (serve_app/ratelimit.py): token buckets in Redis, one Lua call a request.
    # The defaults stop a runaway client without touching honest load on the 2-core
    # development machine, where the whole service serves about 1,000-2,700 req/s
    # (docs/architecture.md) with one key: per key 5,000/s (burst 10,000), about twice
    # the fastest route's ceiling there, so only a key that floods a larger cluster meets
    # it. Give a key its own lower limit when it is created (its `rate_limit`).
    rate_limits: bool = True
    rate_limit_key_per_s: float = Field(default=5_000, gt=0, le=10_000_000)
    rate_limit_key_burst: int = Field(default=10_000, ge=1, le=10_000_000)
    # Writes that move one member's points, over all keys: 2,000/s (burst 2,000) is about a
    # third of what one account shard applies (docs/scaling.md, ~6,000 debits/s of shard
    # work), so a hammered member cannot starve the other members of its shard, and it is
    # above the hot-member benchmark (~1,000-1,300 debits/s here) and the e2e tests' 300
    # concurrent debits of one member.
    rate_limit_member_per_s: float = Field(default=2_000, gt=0, le=10_000_000)
    rate_limit_member_burst: int = Field(default=2_000, ge=1, le=10_000_000)
    # Failed authentications per client address: 10 a minute after a burst of 20, then 429
    # with Retry-After; checked before any key lookup.
    auth_failures_per_min: float = Field(default=10, gt=0, le=1_000_000)
    auth_failures_burst: int = Field(default=20, ge=1, le=1_000_000)
    # A take that Redis has not answered within this is decided locally (see the module's
    # docstring for why 20 ms); Redis is tried again after rate_limit_redis_retry_s.
    rate_limit_redis_timeout_ms: float = Field(default=20.0, gt=0, le=1_000)
    rate_limit_redis_retry_s: float = Field(default=1.0, gt=0, le=60)
    # While Redis is down each replica enforces limits / this; unset: `replicas`.
    rate_limit_fallback_replicas: int | None = Field(default=None, ge=1, le=1024)

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin_key"

    @property
    def webhook_secret_file(self) -> Path:
        return self.data_dir / "webhook_secret"


def load_settings(**overrides: object) -> Settings:
    """Environment first, then explicit (flag) overrides that are not None."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)  # type: ignore[arg-type]
