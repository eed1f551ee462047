"""Typed settings, read in one place: environment (DATABASE_URL, REDIS_URL, POINTS_*) and flags."""

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.breaker import COOLDOWN_S, FAILURES_TO_OPEN
from actors.group_commit import QUEUED_MAX, RETRY_S
from actors.shard_client import LANE_QUEUED_MAX

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
