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

The same hook makes HAProxy set `X-Forwarded-For` to the client's address on each API
request (replacing any the client sent): without it every request reaches a replica from
HAProxy's address, and the failed-authentication limiter would count all clients as one.

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

from serve_app import logs

log = logging.getLogger("points.listeners")

AUX_HOST_ENV = "POINTS_AUX_HOST"
# The hook as Ray's runtime environment names it (module path, then the function).
SETUP_HOOK = "serve_app.listeners.setup_worker"
TEMPLATES_MODULE = "ray.serve._private.haproxy_templates"
HAPROXY_MODULE = "ray.serve._private.haproxy"
TEMPLATE_NAME = "HAPROXY_CONFIG_TEMPLATE"
# The template's bind lines for HAProxy's metrics exporter and statistics page (Ray 2.60).
HAPROXY_AUX_BINDS = (
    "bind :{{ config.metrics_port }}",
    "bind *:{{ config.stats_port }}",
)


# The API frontend's bind line (Ray 2.60): the client's address is set right after it.
HAPROXY_API_BIND = "    bind {{ config.frontend_host }}:{{ config.frontend_port }}\n"
# Set, not appended: whatever X-Forwarded-For a client sends is replaced by the address
# HAProxy saw, so the failed-authentication limiter (serve_app/ratelimit.py,
# `client_address`) counts per real client, not per HAProxy, and cannot be fooled.
FORWARDED_FOR_RULE = "    http-request set-header X-Forwarded-For %[src]\n"


def setup_worker() -> None:
    """Ray worker setup hook (`SETUP_HOOK`): HAProxy's template adjusted, see above."""
    bind_auxiliary()
    forward_client_address()
    logs.configure_from_env()


def forwarding(template: str) -> tuple[str, bool]:
    """`template` with the client's address set on every API request; and whether the
    bind line it follows was found."""
    if FORWARDED_FOR_RULE in template:
        return template, True
    if HAPROXY_API_BIND not in template:
        return template, False
    return template.replace(HAPROXY_API_BIND, HAPROXY_API_BIND + FORWARDED_FOR_RULE, 1), True


def forward_client_address() -> None:
    """HAProxy sets X-Forwarded-For to the client's address. Never raises."""
    try:
        import importlib

        templates = importlib.import_module(TEMPLATES_MODULE)
        template, found = forwarding(getattr(templates, TEMPLATE_NAME))
        if not found:
            log.warning(
                "HAProxy's configuration template has no API bind line (a different Ray"
                " release?): failed authentications are counted per HAProxy, not per client"
            )
            return
        _install(templates, template)
    except Exception:
        log.exception("could not make HAProxy forward the client's address")


def _install(templates: object, template: str) -> None:
    setattr(templates, TEMPLATE_NAME, template)
    # Already imported (it copies the name at import): patch its copy too.
    haproxy = sys.modules.get(HAPROXY_MODULE)
    if haproxy is not None:
        setattr(haproxy, TEMPLATE_NAME, template)


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
        _install(templates, template)
    except Exception:
        log.exception("could not bind HAProxy's auxiliary listeners to %s", AUX_HOST_ENV)


def runtime_env(aux_host: str, log_format: str = "text") -> dict[str, object]:
    """The Ray job's runtime environment that applies `aux_host` (and the log format) in
    every worker."""
    return {
        "worker_process_setup_hook": SETUP_HOOK,
        "env_vars": {AUX_HOST_ENV: aux_host, logs.LOG_FORMAT_ENV: log_format},
    }
