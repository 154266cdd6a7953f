"""The daemon's one HTTP endpoint: /metrics, /healthz, /readyz, /api/status, /api/config
and the console, bound to metrics.host:metrics.port and bound again when they change.

It reads everything through an EndpointSource of callables (as the console
reads its ConsoleSource), so it knows nothing of the supervisor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drainpool.console import Console, ConsoleSource
from drainpool.httpserver import Endpoints, HttpServer
from drainpool.settings import Settings

log = logging.getLogger("drainpool.supervisor")


@dataclass(frozen=True)
class EndpointSource:
    """What the endpoint serves; the supervisor provides each callable."""

    registry: Any  # the metrics' prometheus CollectorRegistry
    healthy: Callable[[], bool]
    ready: Callable[[], bool]
    status: Callable[[], dict[str, Any]]
    config_view: Callable[[], dict[str, Any]]
    console: ConsoleSource


class Endpoint:
    """One HTTP server at a time, started, rebound at a reload, stopped at the end."""

    def __init__(self, source: EndpointSource) -> None:
        self._source = source
        self.http: HttpServer | None = None

    def start(self, settings: Settings) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        source = self._source
        console = Console(source.console)
        endpoints = Endpoints(
            source.registry,
            source.healthy,
            source.ready,
            source.status,
            extra_routes=console.get_routes(),
            post_routes=console.post_routes(),
        )
        endpoints.extra_routes["/api/config"] = lambda request: request.send_json(
            source.config_view()
        )
        m = settings.metrics
        self.http = HttpServer(
            m.host, m.port, endpoints, tls_cert=m.tls_cert_file, tls_key=m.tls_key_file
        )
        self.http.start()
        host, port = self.http.address
        log.info("metrics on %s://%s:%d/metrics", self.http.scheme, host, port)

    def restart(self, new: Settings, old: Settings) -> None:
        """Rebind to the new address; keep the old one when the new cannot be bound."""
        self.stop()
        try:
            self.start(new)
        except OSError as exc:
            log.error(
                "cannot bind metrics on %s:%d (%s); keeping %s:%d",
                new.metrics.host,
                new.metrics.port,
                exc,
                old.metrics.host,
                old.metrics.port,
            )
            self.start(old)

    @property
    def address(self) -> tuple[str, int]:
        assert self.http is not None
        return self.http.address

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
