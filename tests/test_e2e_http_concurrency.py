"""Fifty clients at once: every one is accepted and answered (issue 23, item 7).

socketserver's listen backlog was 5, so a burst of connections overflowed it and
the kernel dropped their SYNs, to be retried a second or more later. The test
makes the burst deterministic: while the daemon is stopped (SIGSTOP) nothing is
accepted, so only connections the listen queue holds complete their handshake;
all 50 must. After SIGCONT every one of them gets its answer. The timing (p50,
p99) lives in bench/http_concurrency.py, not here.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.support.daemon import DaemonFactory
from tests.support.waiting import wait_until

CLIENTS = 50
PATHS = ("/metrics", "/healthz")
REQUEST = "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def connected(sockets: list[socket.socket]) -> bool:
    """True when every non-blocking connect has completed its handshake."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_WRITE)
        ready = selector.select(timeout=0.5)
    return len(ready) == len(sockets) and all(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for sock in sockets
    )


def answer_code(sock: socket.socket) -> int:
    sock.setblocking(True)
    sock.settimeout(30)
    with sock.makefile("rb") as reply:
        return int(reply.readline().split()[1])


def test_a_burst_of_connections_is_queued_and_every_one_answered(factory: DaemonFactory) -> None:
    daemon = factory.start(factory.config())
    port = daemon.port
    sockets: list[socket.socket] = []
    daemon.signal(signal.SIGSTOP)
    try:
        for _ in range(CLIENTS):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        # Nothing is accepted now: a connection completes only if the backlog holds it.
        wait_until(lambda: connected(sockets), timeout=20, what=f"{CLIENTS} connections queued")
        for n, sock in enumerate(sockets):
            path = PATHS[n % 2]
            sock.setblocking(True)
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
    finally:
        daemon.signal(signal.SIGCONT)
    try:
        assert [answer_code(sock) for sock in sockets] == [200] * CLIENTS
    finally:
        for sock in sockets:
            sock.close()
    daemon.terminate()


def test_fifty_concurrent_gets_are_all_answered_past_a_slow_client(factory: DaemonFactory) -> None:
    daemon = factory.start(factory.config())

    def get(n: int) -> int:
        url = f"http://127.0.0.1:{daemon.port}{PATHS[n % 2]}"
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            return int(response.status)

    # A client that sent half a request and went quiet holds its connection meanwhile.
    with socket.create_connection(("127.0.0.1", daemon.port)) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        with ThreadPoolExecutor(CLIENTS) as pool:
            codes = list(pool.map(get, range(CLIENTS)))
    assert codes == [200] * CLIENTS
    daemon.terminate()
