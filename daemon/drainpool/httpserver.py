"""One small HTTP server for /metrics, /healthz, /readyz, the JSON /api/ and the console.

Every answer comes from callbacks that return snapshots the supervisor keeps,
so a slow scrape can never block the supervisor's loop; the only writes are
the console's POST routes (daemon/drainpool/console.py), which guard themselves. It
binds to loopback unless the config says otherwise.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import selectors
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("drainpool.http")

MAX_BODY_BYTES = 64 * 1024  # the console's POST bodies are a few ids; refuse anything bigger

BUILTIN_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/api/status"})
# GET paths under /api/ that anyone who reaches the endpoint may read (README, "Console"):
# the status (what `drainpool reload` and `status` poll) and the console's own settings.
# Every other /api/ GET passes `Endpoints.read_guard` first, whoever registered it.
PUBLIC_API = frozenset({"/api/status", "/api/console"})

Route = Callable[["Handler"], None]


@dataclass(eq=False)  # never compared: no generated __eq__
class Endpoints:
    """What the server answers with; each callable is cheap and thread-safe."""

    registry: CollectorRegistry
    healthy: Callable[[], bool]
    ready: Callable[[], bool]
    status: Callable[[], dict[str, Any]]
    # GET routes by path; a path ending in "/" also serves one level below it.
    extra_routes: dict[str, Route] = field(default_factory=dict)
    post_routes: dict[str, Route] = field(default_factory=dict)
    # Runs before every GET under /api/ not in PUBLIC_API: True to go on, or False once it
    # has answered the refusal itself. None refuses them all (fail closed).
    read_guard: Callable[[Handler], bool] | None = None

    def post_route(self, path: str) -> Route | None:
        """The POST route of `path`, or of "/a/*/c" for "/a/ID/c" (/api/jobs/ID/cancel)."""
        route = self.post_routes.get(path)
        if route is None and path.count("/") >= 3:
            head, _, rest = path.rpartition("/")
            route = self.post_routes.get(head[: head.rfind("/")] + "/*/" + rest)
        return route

    def get_route(self, path: str) -> Route | None:
        """The GET route of `path`, or of its parent "/a/b/" for "/a/b/ID" (/api/jobs/ID)."""
        parent = path[: path.rfind("/") + 1]
        return self.extra_routes.get(path) or (
            self.extra_routes.get(parent) if len(parent) > 1 else None
        )


HANDSHAKE_SECONDS = 10.0  # a TLS client that says nothing is dropped after this
CLIENT_TIMEOUT_SECONDS = 30.0  # and so is one that stops mid-request


class BodyTooLarge(Exception):
    """The request has no usable length or a body over MAX_BODY_BYTES; it was answered."""


class Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT_SECONDS

    def do_GET(self) -> None:
        endpoints = self.server.endpoints
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/") and path not in PUBLIC_API and not self._may_read():
            return
        if path == "/metrics":
            self.reply(200, generate_latest(endpoints.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = endpoints.healthy()
            self.reply(200 if ok else 503, b"ok\n" if ok else b"supervisor loop stalled\n")
        elif path == "/readyz":
            ok = endpoints.ready()
            self.reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        elif path == "/api/status":
            self.send_json(endpoints.status())
        elif (route := endpoints.get_route(path)) is not None:
            route(self)
        elif path in endpoints.post_routes:
            self.reply(405, b"use POST\n", headers={"Allow": "POST"})
        else:
            self.reply(404, b"not found\n")

    def _may_read(self) -> bool:
        """The one read guard of every non-public /api/ GET route (issue 23)."""
        guard = self.server.endpoints.read_guard
        if guard is None:
            self.reply(403, b"reading the API is not configured\n")
            return False
        return guard(self)

    def send_json(self, data: Any, code: int = 200) -> None:
        self.reply(code, json.dumps(data, indent=1).encode(), "application/json")

    def do_POST(self) -> None:
        endpoints = self.server.endpoints
        path = self.path.split("?", 1)[0]
        route = endpoints.post_route(path)
        if route is not None:
            route(self)
            return
        # The body was not read: close, or its bytes would be parsed as the next request.
        self.close_connection = True
        if endpoints.get_route(path) is not None or path in BUILTIN_PATHS:
            self.reply(405, b"use GET\n", headers={"Allow": "GET", "Connection": "close"})
        else:
            self.reply(404, b"not found\n", headers={"Connection": "close"})

    def read_body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The request body, at most `limit` bytes; otherwise answer 411/413 and raise."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self.reply(411, b"send a Content-Length\n", headers={"Connection": "close"})
            raise BodyTooLarge
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > limit:
            self.close_connection = True
            self.reply(413, b"request body too large\n", headers={"Connection": "close"})
            raise BodyTooLarge
        return self.rfile.read(length) if length else b""

    def reply(
        self,
        code: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send one whole response; routes outside this module answer through it."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


# accept(2) failing for want of resources: the connection stays in the backlog.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_RETRY_SECONDS = 0.1


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of 50 GETs (a scrape, a probe and a
    # console tab at once) overflowed it and waited on SYN retransmits, 1 s and more.
    request_queue_size = socket.SOMAXCONN
    endpoints: Endpoints
    starved: OSError | None = None  # the last accept that failed for want of resources

    def server_bind(self) -> None:
        """Bind, without HTTPServer's reverse DNS lookup of the address (socket.getfqdn).

        Nothing here reads the name it finds, and the lookup can hang a start for
        seconds where DNS is broken. It also loads the idna codec and its
        stringprep tables: about 1 MB of the idle daemon's heap (issue 17).
        """
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES and not isinstance(exc, ssl.SSLError):
                self.starved = exc
            raise  # socketserver drops the attempt; _serve backs off

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr for a client that hung up
        # before its answer (a scrape that timed out): that is not the daemon's error.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, exc)
        else:
            log.exception("error answering %s", client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            # The handshake runs here, on the request's own thread. Done in accept(),
            # on the serving thread, one client that connects and says nothing would
            # stall every endpoint, /healthz included.
            request.settimeout(HANDSHAKE_SECONDS)
            try:
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError is an OSError
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)


class TlsFilesError(OSError):
    """The certificate or key cannot be loaded (missing, unreadable, not a pair)."""


def _tls_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one
        raise TlsFilesError(exc.errno, exc.strerror or str(exc)) from None
    return context


class HttpServer:
    """Serves the endpoints on a background thread until `stop()`."""

    def __init__(
        self,
        host: str,
        port: int,
        endpoints: Endpoints,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        """Bind (host, port), or serve on `listener`, a socket already listening there.

        Everything that can fail (the TLS files, the bind) fails here, before
        `start()`, so a caller can keep its old server until the new one exists.
        """
        context = _tls_context(tls_cert, tls_key) if tls_cert is not None else None
        if listener is None:
            self._server = _Server((host, port), Handler)
        else:
            self._server = _Server(listener.getsockname(), Handler, bind_and_activate=False)
            self._server.socket.close()
            self._server.socket = listener
            self._server.server_address = listener.getsockname()
        self._server.endpoints = endpoints
        if context is not None:
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls_cert else "http"
        self._wake_r, self._wake_w = os.pipe()
        self._wake_poll = select.poll()
        self._wake_poll.register(self._wake_r, select.POLLIN)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def duplicate_listener(self) -> socket.socket:
        """A second descriptor of the listening socket, plain (not TLS), for the
        server that replaces this one on the same address: the port is never let go."""
        return socket.socket(fileno=os.dup(self._server.socket.fileno()))

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        # Own loop instead of serve_forever: a pipe wakes it at once on stop, where
        # serve_forever would notice only at its next poll interval.
        starved = False
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_r:
                        return
                    self._server.handle_request()
                    error, self._server.starved = self._server.starved, None
                    if error is not None:
                        if not starved:
                            log.error(
                                "cannot accept connections on the metrics endpoint: %s;"
                                " retrying every %.1fs",
                                error,
                                ACCEPT_RETRY_SECONDS,
                            )
                        starved = True
                        # The connection is still pending, so select would return at once:
                        # without this pause the thread spins on a full CPU until it clears.
                        # poll(2) needs no descriptor of its own (epoll would).
                        if self._wake_poll.poll(ACCEPT_RETRY_SECONDS * 1000):
                            return
                    elif starved:
                        log.info("the metrics endpoint accepts connections again")
                        starved = False

    def stop(self) -> None:
        """Stop serving and free the port."""
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._server.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
