"""sd_notify: READY, RELOADING, STOPPING, STATUS and WATCHDOG as datagrams to $NOTIFY_SOCKET.

No dependency: the protocol is one AF_UNIX datagram per message (sd_notify(3)).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("drainpool.systemd")


class Notifier:
    """Sends state changes to systemd; does nothing when NOTIFY_SOCKET is unset."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self._warned = False
        self.watchdog_interval = watchdog_usec / 1e6 if watchdog_usec else None
        self._next_ping = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        address = environ.get("NOTIFY_SOCKET") or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _send(self, *fields: str) -> None:
        if self._address is None:
            return
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
                self._warned = True

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self._send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog_due(self, now: float) -> bool:
        return self.watchdog_interval is not None and now >= self._next_ping

    def watchdog_ping(self, now: float) -> None:
        if self.watchdog_interval is not None:
            self._send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval / 2

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
