"""Auxiliary listeners bind to `aux_host` (loopback unless ops configure otherwise).

Contract: nothing answers on the network that ops did not ask for. The API listens on
`host:port` (settings); every auxiliary HTTP listener the service opens listens on
`aux_host` (default 127.0.0.1). docs/operations.md lists every port and why it is there.

What needed changing: Ray Serve's HAProxy (the `fast` profile) renders its configuration
from a template with `bind :<metrics port>` (HAProxy's Prometheus exporter) and
`bind *:<stats port>` (its statistics page): all interfaces, and Ray 2.60 has no setting
for either address (read in ray/serve/_private/haproxy_templates.py). `bind_auxiliary` is
a Ray worker setup hook (`worker_process_setup_hook`, set by serve_app/runtime.py's
`start_ray` for the whole Ray job, so it runs in the HAProxyManager actor's process before
Serve's HAProxy module is loaded) that rewrites those two bind lines of the template to
`aux_host`. It changes nothing else and never raises: a Ray release whose template no
longer has those lines is logged (and the e2e listener test, tests/e2e/test_listeners.py,
fails), while the service still starts.

The other listeners are already where they should be, or are Ray's own: the replicas'
direct-ingress HTTP ports and Serve's fallback proxy bind `host` (Serve's HTTP options),
and Ray's RPC servers (GCS, raylet, object manager, each worker's core-worker gRPC port,
Serve's inter-deployment gRPC) bind all interfaces by design, so that other nodes of a
cluster reach them; they are documented, token-authenticated by Ray, and belong behind the
cluster's firewall.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("points.listeners")

AUX_HOST_ENV = "POINTS_AUX_HOST"
# The hook as Ray's runtime environment names it (module path, then the function).
SETUP_HOOK = "serve_app.listeners.bind_auxiliary"
TEMPLATES_MODULE = "ray.serve._private.haproxy_templates"
HAPROXY_MODULE = "ray.serve._private.haproxy"
TEMPLATE_NAME = "HAPROXY_CONFIG_TEMPLATE"
# The template's bind lines for HAProxy's metrics exporter and statistics page (Ray 2.60).
HAPROXY_AUX_BINDS = (
    "bind :{{ config.metrics_port }}",
    "bind *:{{ config.stats_port }}",
)


def bound_to(template: str, host: str) -> tuple[str, int]:
    """`template` with its auxiliary bind lines on `host`; and how many it rewrote."""
    assert host
    address = f"[{host}]" if ":" in host else host  # HAProxy wants IPv6 in brackets
    rewritten = 0
    for line in HAPROXY_AUX_BINDS:
        if line in template:
            port = line.split(":", 1)[1]
            template = template.replace(line, f"bind {address}:{port}")
            rewritten += 1
    return template, rewritten


def bind_auxiliary() -> None:
    """Ray worker setup hook: HAProxy's metrics and stats listeners on POINTS_AUX_HOST.

    Runs in every worker process of the job; only the HAProxyManager ever renders the
    template. Must never raise: Ray ends a worker whose setup hook fails."""
    try:
        host = os.environ.get(AUX_HOST_ENV, "")
        if not host or host in ("0.0.0.0", "::", "*"):
            return  # all interfaces: what ops asked for, and Serve's own default
        import importlib

        templates = importlib.import_module(TEMPLATES_MODULE)
        template, rewritten = bound_to(getattr(templates, TEMPLATE_NAME), host)
        if rewritten != len(HAPROXY_AUX_BINDS):
            log.warning(
                "HAProxy's configuration template has %d of its %d auxiliary bind lines"
                " (a different Ray release?): its metrics/stats listeners may bind all"
                " interfaces",
                rewritten,
                len(HAPROXY_AUX_BINDS),
            )
        setattr(templates, TEMPLATE_NAME, template)
        # Already imported (it copies the name at import): patch its copy too.
        haproxy = sys.modules.get(HAPROXY_MODULE)
        if haproxy is not None:
            setattr(haproxy, TEMPLATE_NAME, template)
    except Exception:
        log.exception("could not bind HAProxy's auxiliary listeners to %s", AUX_HOST_ENV)


def runtime_env(aux_host: str) -> dict[str, object]:
    """The Ray job's runtime environment that applies `aux_host` in every worker."""
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": {AUX_HOST_ENV: aux_host}}
