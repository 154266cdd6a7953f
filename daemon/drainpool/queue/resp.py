"""A small RESP2 reader for the Redis wake-up connection (issue 21, pickup latency).

Why our own: the wake-up connection only ever reads pub/sub replies (message,
subscribe, pong, an error), and each is on the path from an enqueue to its
job's start. redis-py's read of one message (`can_read`, `read_response`,
and `can_read` again to find the batch empty) sets the socket's timeout twice
per call (four fcntl), polls before each recv, raises and catches an exception
for the empty socket and walks its generic parser: about 27 µs hot and over
100 µs on a path that sat idle, here. This reader keeps the socket
non-blocking, makes one recv per wake-up and parses every complete reply it
holds: one syscall and a few slices.

redis-py still opens the connection (TCP, unix socket or TLS, AUTH, SELECT,
its client name) and closes it; this reads what comes after SUBSCRIBE. TLS
needs one thing more: a record the SSL layer has read but not yet handed
over is not seen by select, so `buffered()` asks the socket (`pending()`).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any

CHUNK = 65536  # bytes per recv: redis-py's own read size, below malloc's mmap threshold

CRLF = b"\r\n"
_BULK, _ARRAY, _PUSH, _INT, _SIMPLE, _ERROR = b"$*>:+-"  # as ints, the first byte's values


class RespError(Exception):
    """An error reply (`-ERR ...`): returned as a reply, not raised, so a caller decides."""


class _Incomplete(Exception):
    """The buffer ends inside a reply; `need` is how long it must be, at least."""

    def __init__(self, need: int) -> None:
        self.need = need


class RespReader:
    """Reads RESP2 replies (and RESP3 pushes, parsed as arrays) from one socket.

    The socket is made non-blocking; `send` writes with the timeout given here.
    Bulk strings come back as bytes, integers as int, simple strings as bytes,
    error replies as RespError instances, nil as None.
    """

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        self._timeout = timeout  # for sends and for read_until
        self._partial = bytearray()  # the start of a reply not yet complete
        self._need = 0  # the length _partial must reach before it is parsed again
        sock.settimeout(0)
        self._pending = sock.pending if isinstance(sock, ssl.SSLSocket) else None

    def fileno(self) -> int:
        return self._sock.fileno()

    def buffered(self) -> bool:
        """Bytes that a select on the socket would not announce: read them first (TLS)."""
        return self._pending is not None and self._pending() > 0

    def read(self) -> list[Any]:
        """The complete replies now readable (one recv); [] when none is complete yet.

        Raises ConnectionError when the server closed the connection.
        """
        try:
            data = self._sock.recv(CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return []  # nothing yet (a select that woke for half a TLS record)
        if not data:
            raise ConnectionError("the server closed the connection")
        if self._partial:
            self._partial += data
            if len(self._partial) < self._need:
                return []
            data, self._partial = bytes(self._partial), bytearray()
        replies = []
        pos = 0
        end = len(data)
        try:
            while pos < end:
                reply, pos = _parse(data, pos)
                replies.append(reply)
        except _Incomplete as short:
            self._partial = bytearray(data[pos:])
            self._need = short.need - pos
        return replies

    def read_until(self, deadline: float) -> list[Any]:
        """At least one complete reply, waiting up to `deadline` (time.monotonic)."""
        while True:
            if not self.buffered():
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    raise TimeoutError("no reply from the server in time")
            replies = self.read()
            if replies:
                return replies

    def send(self, *args: str | bytes) -> None:
        """One command, written in full (blocking up to the timeout, then non-blocking again)."""
        packed = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else arg
            packed.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        self._sock.settimeout(self._timeout)
        try:
            self._sock.sendall(b"".join(packed))
        finally:
            self._sock.settimeout(0)


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One reply starting at `pos`, and where the next one starts."""
    eol = buf.find(CRLF, pos)
    if eol < 0:
        raise _Incomplete(len(buf) + 1)
    kind = buf[pos]
    if kind == _BULK:
        size = int(buf[pos + 1 : eol])
        if size < 0:
            return None, eol + 2
        start = eol + 2
        stop = start + size
        if stop + 2 > len(buf):
            raise _Incomplete(stop + 2)
        return buf[start:stop], stop + 2
    if kind in (_ARRAY, _PUSH):
        count = int(buf[pos + 1 : eol])
        if count < 0:
            return None, eol + 2
        items: list[Any] = []
        pos = eol + 2
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == _INT:
        return int(buf[pos + 1 : eol]), eol + 2
    if kind == _SIMPLE:
        return buf[pos + 1 : eol], eol + 2
    if kind == _ERROR:
        return RespError(buf[pos + 1 : eol].decode(errors="replace")), eol + 2
    raise ConnectionError(f"not a RESP reply: {buf[pos : pos + 20]!r}")
