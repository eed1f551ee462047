"""HAProxy's auxiliary bind lines rewritten to aux_host (serve_app/listeners.py), against the
template of the installed Ray; tests/e2e/test_listeners.py checks the sockets themselves."""

from __future__ import annotations

import importlib
import logging

import pytest

from serve_app import listeners
from serve_app.listeners import (
    AUX_HOST_ENV,
    FORWARDED_FOR_RULE,
    HAPROXY_API_BIND,
    HAPROXY_AUX_BINDS,
    SETUP_HOOK,
    TEMPLATE_NAME,
    TEMPLATES_MODULE,
    bind_auxiliary,
    bound_to,
    forwarding,
    setup_worker,
)


def template() -> str:
    return str(getattr(importlib.import_module(TEMPLATES_MODULE), TEMPLATE_NAME))


def test_the_installed_rays_template_has_the_lines_we_rewrite() -> None:
    original = template()
    assert all(line in original for line in HAPROXY_AUX_BINDS)
    rewritten, count = bound_to(original, "127.0.0.1")
    assert count == 2
    assert "bind 127.0.0.1:{{ config.metrics_port }}" in rewritten
    assert "bind 127.0.0.1:{{ config.stats_port }}" in rewritten
    # The API's frontend keeps Serve's host.
    assert "bind {{ config.frontend_host }}:{{ config.frontend_port }}" in rewritten
    assert bound_to(original, "::1")[0].count("bind [::1]:") == 2


def test_the_hook_patches_the_template_and_its_imported_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    templates = importlib.import_module(TEMPLATES_MODULE)
    haproxy = importlib.import_module("ray.serve._private.haproxy")
    monkeypatch.setattr(templates, TEMPLATE_NAME, getattr(templates, TEMPLATE_NAME))
    monkeypatch.setattr(haproxy, TEMPLATE_NAME, getattr(haproxy, TEMPLATE_NAME))
    monkeypatch.setenv(AUX_HOST_ENV, "127.0.0.1")
    bind_auxiliary()
    for module in (templates, haproxy):
        assert "bind 127.0.0.1:{{ config.stats_port }}" in getattr(module, TEMPLATE_NAME)
    bind_auxiliary()  # twice (a worker reused): still right
    assert getattr(templates, TEMPLATE_NAME).count("bind 127.0.0.1:") == 2


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "*"])
def test_all_interfaces_leaves_the_template_alone(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    templates = importlib.import_module(TEMPLATES_MODULE)
    before = getattr(templates, TEMPLATE_NAME)
    monkeypatch.setattr(templates, TEMPLATE_NAME, before)
    monkeypatch.setenv(AUX_HOST_ENV, host)
    bind_auxiliary()
    assert getattr(templates, TEMPLATE_NAME) is before


def test_the_hook_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(AUX_HOST_ENV, "127.0.0.1")
    monkeypatch.setattr(listeners, "TEMPLATES_MODULE", "ray.serve._private.no_such_module")
    with caplog.at_level(logging.ERROR, logger="points.listeners"):
        bind_auxiliary()  # Ray would end the worker if this raised
    assert "could not bind" in caplog.text


def test_a_template_without_the_lines_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    templates = importlib.import_module(TEMPLATES_MODULE)
    monkeypatch.setattr(templates, TEMPLATE_NAME, "frontend x\n    bind :9\n")
    monkeypatch.setenv(AUX_HOST_ENV, "127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="points.listeners"):
        bind_auxiliary()
    assert "0 of its 2 auxiliary bind lines" in caplog.text


def test_the_job_runtime_env_names_the_hook() -> None:
    env = listeners.runtime_env("10.0.0.5", "json")
    assert env == {
        "worker_process_setup_hook": SETUP_HOOK,
        "env_vars": {AUX_HOST_ENV: "10.0.0.5", "POINTS_LOG_FORMAT": "json"},
    }
    module, _, name = SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is setup_worker


def test_haproxy_sets_the_clients_address_once(monkeypatch: pytest.MonkeyPatch) -> None:
    templates = importlib.import_module(TEMPLATES_MODULE)
    monkeypatch.setattr(templates, TEMPLATE_NAME, getattr(templates, TEMPLATE_NAME))
    monkeypatch.setenv(AUX_HOST_ENV, "127.0.0.1")
    setup_worker()
    setup_worker()
    rendered = getattr(templates, TEMPLATE_NAME)
    assert rendered.count(FORWARDED_FOR_RULE) == 1
    assert HAPROXY_API_BIND + FORWARDED_FOR_RULE in rendered
    assert "bind 127.0.0.1:{{ config.stats_port }}" in rendered
    assert forwarding("frontend x\n    bind :1\n") == ("frontend x\n    bind :1\n", False)
