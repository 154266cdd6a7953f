"""The daemon's one HTTP endpoint: /metrics, /healthz, /readyz, /api/status, /api/config
and the console, bound to metrics.host:metrics.port and bound again when they change.

It reads everything through an EndpointSource (the supervisor), and hands the
console its ConsoleSource, so neither knows the supervisor itself.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from drainpool.console import Console, ConsoleSource
from drainpool.httpserver import Endpoints, HttpServer
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


class Endpoint:
    """One HTTP server at a time, started, rebound at a reload, stopped at the end."""

    def __init__(self, source: EndpointSource) -> None:
        self._source = source
        self.http: HttpServer | None = None

    def start(self, settings: Settings) -> None:
        """Bind and serve; raises OSError when the address is taken."""
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
        )
        endpoints.extra_routes["/api/config"] = lambda request: request.send_json(
            config_view(source.loaded, source.registry)
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
