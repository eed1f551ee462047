"""Nothing answers on the network that ops did not ask for (docs/operations.md, "Ports").

Every TCP socket listening in this test's process tree (the Ray head it started, every Ray
worker, HAProxy) is classified. Ours, HAProxy's and Serve's HTTP listeners must be on
loopback or be the configured API host and port. What remains on other addresses must be
Ray's own, as documented: its RPC servers (gRPC: they answer HTTP/1 with HTTP/2 frames),
its agents (which answer 401 without Ray's token), and its three Prometheus exporters.
A new listener anywhere else, or one of ours on a public address, fails the test.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

import psutil

from serve_app.listeners import FORWARDED_FOR_RULE
from tests.e2e.conftest import Service

# Ray's own Prometheus exporters (Ray binds them to every interface unless its node
# address is loopback, which ray.init does not allow): the raylet's metrics agent (in
# the DashboardAgent), the dashboard head and the autoscaler monitor.
RAY_EXPORTER_PROCESSES = ("ray::DashboardAgent", "ray/dashboard/dashboard.py", "monitor.py")
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.ip).is_loopback


def listeners() -> list[Listener]:
    me = psutil.Process()
    processes = {p.pid: p for p in [me, *me.children(recursive=True)]}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or conn.pid not in processes:
            continue
        try:
            process = " ".join(processes[conn.pid].cmdline())
        except psutil.Error:
            continue
        found.append(Listener(conn.laddr.ip, conn.laddr.port, conn.pid, process))
    return found


def first_bytes(listener: Listener) -> bytes:
    """What the listener answers to an HTTP/1.1 request (its first bytes)."""
    host = "127.0.0.1" if listener.ip in ("0.0.0.0", "::") else listener.ip
    try:
        with socket.create_connection((host, listener.port), timeout=PROBE_TIMEOUT_S) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def is_haproxy(listener: Listener) -> bool:
    return "haproxy" in listener.process.split(" ", 1)[0]


def test_only_the_api_and_rays_own_rpc_listen_beyond_loopback(service: Service) -> None:
    settings = service.settings
    found = listeners()
    api = [item for item in found if item.port == settings.port]
    assert api and all(is_haproxy(item) and item.ip == settings.host for item in api), api

    # HAProxy: the API, and its stats and metrics listeners on aux_host (loopback).
    haproxy = [item for item in found if is_haproxy(item) and item.port != settings.port]
    aux_ports = {
        int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]),
        int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"]),
    }
    assert {item.port for item in haproxy} == aux_ports, haproxy
    assert all(item.ip == settings.aux_host for item in haproxy), haproxy

    unexplained = []
    for item in found:
        if item.loopback or item in api or item in haproxy:
            continue
        answer = first_bytes(item)
        ray_process = "ray" in item.process
        if answer and not answer.startswith(b"HTTP/"):
            # gRPC: Ray's RPC (GCS, raylet, object manager, every worker's and this
            # driver's core worker, Serve's inter-deployment calls). Nothing of ours
            # speaks gRPC.
            continue
        if ray_process and answer.startswith(b"HTTP/1.1 401"):
            continue  # a Ray agent: needs Ray's token
        if answer.startswith(b"HTTP/1.0 200") and any(
            name in item.process for name in RAY_EXPORTER_PROCESSES
        ):
            continue  # one of Ray's Prometheus exporters
        unexplained.append((item, answer[:40]))
    assert unexplained == []


def test_serves_http_listeners_are_on_the_api_host(service: Service) -> None:
    """The replicas' direct-ingress ports and Serve's fallback proxy bind the API host."""
    found = listeners()
    serve_http = [
        item
        for item in found
        if ("ServeReplica" in item.process or "ProxyActor" in item.process)
        and first_bytes(item).startswith(b"HTTP/1.1")
    ]
    assert serve_http, found
    assert all(item.ip == service.settings.host for item in serve_http), serve_http


def test_haproxy_tells_the_replicas_who_the_client_is(service: Service) -> None:
    """The rendered configuration sets X-Forwarded-For (the failed-auth limiter counts by it)."""
    configs = {
        args[args.index("-f") + 1]
        for item in listeners()
        if is_haproxy(item)
        for args in [item.process.split()]
        if "-f" in args
    }
    assert configs
    for path in configs:
        with open(path) as config:
            text = config.read()
        assert FORWARDED_FOR_RULE in text
        assert f"bind {service.settings.aux_host}:" in text
