"""A free loopback port, for the harnesses that must name one before they start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picked it).

    Another process may take it before the caller binds: callers that start a
    server on it retry on "address in use" (see redis_server and prometheus).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
