"""The daemon's one HTTP endpoint: /metrics, /healthz, /readyz, /api/status, /api/config
and the console, bound to metrics.host:metrics.port and bound again when they change.

It reads everything through an EndpointSource (the supervisor), and hands the
console its ConsoleSource, so neither knows the supervisor itself.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any, Protocol

from drainpool.console import Console, ConsoleSource
from drainpool.httpserver import Endpoints, HttpServer, TlsFilesError
from drainpool.metrics import Metrics
from drainpool.pool import RecentOutcomes
from drainpool.queue import Queue
from drainpool.runtime import config_view
from drainpool.settings import LoadedConfig, Settings
from drainpool.tasks import TaskSpec

log = logging.getLogger("drainpool.supervisor")  # the lines the supervisor always logged


class EndpointSource(Protocol):
    """What the endpoint reads and asks for; the supervisor provides it."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def loaded(self) -> LoadedConfig: ...

    @property
    def registry(self) -> dict[str, TaskSpec]: ...

    @property
    def queue(self) -> Queue | None: ...

    @property
    def recent(self) -> RecentOutcomes: ...

    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def request_reload(self, source: str) -> None: ...

    def schedules(self) -> list[dict[str, Any]]: ...


class EndpointError(Exception):
    """The endpoint cannot serve with these settings; str() is one line naming the key."""


def describe_bind_error(settings: Settings, exc: OSError) -> str:
    """One line naming the metrics key at fault and the address or file."""
    m = settings.metrics
    address = f"{m.host}:{m.port}"
    if isinstance(exc, socket.gaierror):
        return f"metrics.host: cannot resolve {m.host!r}: {exc.strerror or exc}"
    if isinstance(exc, TlsFilesError):
        key_missing = m.tls_key_file is not None and not os.access(m.tls_key_file, os.R_OK)
        key, path = (
            ("tls_key_file", m.tls_key_file)
            if key_missing and os.access(m.tls_cert_file or "", os.R_OK)
            else ("tls_cert_file", m.tls_cert_file)
        )
        return f"metrics.{key}: cannot load the TLS certificate or key from {path}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        return f"metrics.port: cannot listen on {address}: address already in use"
    return f"metrics.host/metrics.port: cannot listen on {address}: {exc.strerror or exc}"


class Endpoint:
    """One HTTP server at a time, started, rebound at a reload, stopped at the end."""

    def __init__(self, source: EndpointSource) -> None:
        self._source = source
        self.http: HttpServer | None = None

    def start(self, settings: Settings) -> None:
        """Bind and serve; EndpointError (naming the key) when that cannot be done."""
        self.http = self._serve(settings)

    def restart(self, new: Settings, old: Settings) -> None:
        """Serve with the new metrics settings, or raise EndpointError and keep the old.

        The new server is complete (bound, its TLS files loaded) before the old one
        stops. On the same address it takes over the old listening socket, so the
        port is never free for another process to take, and port 0 keeps its port.
        """
        assert self.http is not None
        same = (new.metrics.host, new.metrics.port) == (old.metrics.host, old.metrics.port)
        listener = self.http.duplicate_listener() if same else None
        try:
            server = self._bind(new, listener)
        except EndpointError:
            if listener is not None:
                listener.close()
            raise
        self.http.stop()
        self.http = self._run(server)

    def _serve(self, settings: Settings) -> HttpServer:
        return self._run(self._bind(settings, None))

    def _run(self, server: HttpServer) -> HttpServer:
        server.start()
        host, port = server.address
        log.info("metrics on %s://%s:%d/metrics", server.scheme, host, port)
        return server

    def _bind(self, settings: Settings, listener: socket.socket | None) -> HttpServer:
        m = settings.metrics
        try:
            return HttpServer(
                m.host,
                m.port,
                self._endpoints(),
                tls_cert=m.tls_cert_file,
                tls_key=m.tls_key_file,
                listener=listener,
            )
        except OSError as exc:
            raise EndpointError(describe_bind_error(settings, exc)) from None

    def _endpoints(self) -> Endpoints:
        source = self._source
        console = Console(
            ConsoleSource(
                status=source.status,
                queue=lambda: source.queue,
                outcomes=source.recent.snapshot,
                settings=lambda: source.loaded.settings.console,
                request_reload=lambda: source.request_reload("console"),
                schedules=source.schedules,
            )
        )
        endpoints = Endpoints(
            source.metrics.registry,
            source.healthy,
            source.ready,
            source.status,
            extra_routes=console.get_routes(),
            post_routes=console.post_routes(),
            read_guard=console.read_guard,
        )
        endpoints.extra_routes["/api/config"] = lambda request: request.send_json(
            config_view(source.loaded, source.registry)
        )
        return endpoints

    @property
    def address(self) -> tuple[str, int]:
        assert self.http is not None
        return self.http.address

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
