"""Ray Serve application builder: deploy Points from a Serve config file.

`points up` is the all-in-one way to run the service: it starts (or joins) Ray, migrates the
database, provisions the admin key and deploys the app from a long-running driver. On a
cluster that ops manage declaratively that driver is in the way; instead:

- `serve deploy serve_config.yaml` (or `serve run serve_config.yaml`) against a long-lived
  Ray cluster, e.g. one started with `ray up cluster.yaml`;
- a KubeRay `RayService`, whose `serveConfigV2` names this builder (see deploy/kuberay/);
- any tooling that speaks Serve's REST config API (the dashboard's /api/serve/applications/).

In each case Serve imports `serve_app.builder:app_builder` inside the cluster (in a build
task the Serve controller starts) and calls it with the `args:` mapping of the application's
config. Every argument is optional; whatever is missing comes from the environment of the
Ray node the build runs on, exactly as `points up` reads it (DATABASE_URL, REDIS_URL,
POINTS_SHARDS, ...; see serve_app/settings.py). Keep secrets out of `args`: Serve logs the
arguments and shows them in `serve config` and the dashboard, so pass the database password
through DATABASE_URL in the nodes' environment (a Kubernetes Secret, `.points/cluster.env`).

The builder does not migrate the database (run `points migrate` first). If POINTS_ADMIN_KEY
is set it installs that key's hash (idempotent), as `points up` does; otherwise the admin key
must already be provisioned (by one run of `points up`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import ray
from ray.serve import Application

from db.api_repo import admin_key_installed, ensure_admin_key
from db.engine import libpq_url
from serve_app.app import build_app
from serve_app.auth import hash_key
from serve_app.runtime import RATE_LIMIT_SETTINGS, shard_config
from serve_app.settings import Settings, load_settings

log = logging.getLogger("points.builder")

# The `args:` a Serve config may give; each falls back to the environment (Settings).
ARG_NAMES = (
    "database_url",
    "redis_url",
    "shards",
    "replicas",
    "max_replicas",
    "batch_max",
    "batch_window_ms",
    "accounts_cached_max",
    "reward_shards",
    "webhook_attempts",
    "webhook_backoff_s",
    "recovery_interval_s",
    "expiry_interval_s",
    "idempotency_retention_days",
    "retention_interval_s",
    "event_stream",
    "ingress_queued_max",
    "lane_queued_max",
    "shard_queued_max",
    "commit_retry_s",
    "breaker_failures",
    "breaker_cooldown_s",
    "log_format",
    *RATE_LIMIT_SETTINGS,
)


def app_builder(args: dict[str, str]) -> Application:
    """Build the Points Serve application from a Serve config's `args`.

    Values may be strings (`serve run serve_app.builder:app_builder shards=4`) or YAML
    scalars (`shards: 4` in a config file); they are validated like the `points up` flags.
    An empty value counts as missing. Unknown keys are refused, so a typo cannot silently
    fall back to a default.
    """
    if not ray.is_initialized():
        raise RuntimeError(
            "serve_app.builder:app_builder must run inside a Ray cluster: deploy it with a "
            "Serve config (`serve deploy serve_config.yaml`, `serve run serve_config.yaml`, "
            "a KubeRay RayService), or call ray.init() before calling it yourself. "
            "(`serve run serve_app.builder:app_builder ...` with an import path calls the "
            "builder before Ray is started; use the config file instead.)"
        )
    settings = settings_from_args(args)
    if not settings.database_url:
        raise ValueError(
            "no database: give `database_url` in the application's args or set DATABASE_URL "
            "in the environment of the Ray nodes (an embedded PostgreSQL is only started by "
            "`points up`, never inside a cluster)"
        )
    dsn = libpq_url(settings.database_url)
    _check_admin_key(settings, dsn)
    log.info(
        "building Points: %d shards, %d ingress replicas, redis %s",
        settings.shards,
        settings.replicas,
        "configured" if settings.redis_url else "not configured",
    )
    app: Application = build_app(
        dsn,
        settings.redis_url,
        settings.shards,
        shard_config(settings),
        settings.replicas,
        settings.max_replicas,
    )
    return app


def settings_from_args(args: Mapping[str, object]) -> Settings:
    """Settings from the environment, overridden by the non-empty `args` (validated)."""
    unknown = sorted(set(args) - set(ARG_NAMES))
    if unknown:
        raise ValueError(f"unknown application args {unknown}; expected some of {list(ARG_NAMES)}")
    overrides = {
        name: value
        for name, value in args.items()
        if value is not None and not (isinstance(value, str) and not value.strip())
    }
    return load_settings(**overrides)


def _check_admin_key(settings: Settings, dsn: str) -> None:
    """Install POINTS_ADMIN_KEY's hash if given; else warn when no admin key exists."""
    if settings.admin_key:
        try:
            ensure_admin_key(dsn, hash_key(settings.admin_key))
        except Exception as exc:
            raise RuntimeError(
                "could not install POINTS_ADMIN_KEY in the database (has `points migrate` "
                f"been run?): {type(exc).__name__}: {exc}"
            ) from exc
        return
    try:
        installed = admin_key_installed(dsn)
    except Exception as exc:  # reported, not fatal: the app itself reports readiness
        log.warning("could not check for an admin key: %s: %s", type(exc).__name__, exc)
        return
    if not installed:
        log.warning(
            "no admin API key is installed: set POINTS_ADMIN_KEY on the Ray nodes and "
            "redeploy, or run `points up` once against this database"
        )
