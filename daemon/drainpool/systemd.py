"""sd_notify for drainpool, without a dependency.

The protocol is one datagram of newline-separated KEY=VALUE lines sent to the
AF_UNIX socket named by $NOTIFY_SOCKET: a filesystem path, or an abstract name
written with a leading "@" (sd_notify(3)). When the variable is unset the
daemon is not run by systemd (or its unit is not Type=notify) and every call
here does nothing.

Rules this module keeps, and why:

- Nothing here raises into the daemon. A service manager that went away must
  not take the worker pool with it; the first failure is logged at WARNING,
  later ones at DEBUG so a missing socket cannot flood the log.
- The environment is left as it is (unlike sd_notify's unset_environment):
  the supervisor owns the process environment, and systemd already ignores
  datagrams from other processes under the default NotifyAccess=main.
- The watchdog is driven by the caller's monotonic clock (`watchdog_due`,
  `watchdog_ping`), so the pings come from the supervisor loop itself and a
  hung loop stops pinging, which is the whole point of WatchdogSec=.
- There is no `stop_timeout_seconds`: systemd does not hand a service its
  TimeoutStopSec= (not in the environment, and asking over D-Bus or systemctl
  needs a dependency or a subprocess that a container lacks). None is needed:
  EXTEND_TIMEOUT_USEC never shortens a timeout, it only lets the state run
  past the configured one while messages keep coming (systemd.service(5)), so
  the supervisor sends `extend_timeout(grace + margin)` whenever a drain
  starts, and a drain inside TimeoutStopSec= is not affected by it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A send that blocks longer than this (the manager's receive queue is full) is
# dropped: the supervisor loop must not stall on its service manager.
_SEND_TIMEOUT_SECONDS = 2.0


def _socket_address(value: str) -> str | bytes | None:
    """Turn $NOTIFY_SOCKET into a sendto() address; None when unusable.

    "@name" is the abstract namespace: a leading NUL byte and no file. Other
    schemes (vsock:, added in systemd 254) are not supported here.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog timeout in seconds when it is meant for this process."""
    raw = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    # WATCHDOG_PID names the process systemd expects pings from; a child that
    # inherited the environment must stay silent (sd_watchdog_enabled(3)).
    pid = environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    """STATUS= ends at the newline, so a multi-line status would be cut."""
    return " ".join(text.split())


class Notifier:
    """Sends state changes to systemd; a disabled one does nothing.

    Build it with `Notifier.from_env()`. All methods are safe to call in any
    order and from the supervisor loop only; none of them raises.
    """

    def __init__(self, address: str | bytes | None, watchdog_timeout: float | None = None) -> None:
        self._address: str | bytes = address or ""
        # For log lines: the abstract name shown the way NOTIFY_SOCKET spells it.
        self._name = "@" + address[1:].decode() if isinstance(address, bytes) else str(address)
        self._sock: socket.socket | None = None
        self._warned = False
        # Ping every half of the timeout, as sd_watchdog_enabled(3) advises.
        self._watchdog_interval = (
            watchdog_timeout / 2 if address is not None and watchdog_timeout else None
        )
        self._last_ping: float | None = None
        if address is None:
            return
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(_SEND_TIMEOUT_SECONDS)
        except OSError as exc:
            self._warn(exc)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, changing none."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @name; not notifying systemd", raw)
        return cls(address, _watchdog_seconds(environ))

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere (NOTIFY_SOCKET set and usable)."""
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC); None without a watchdog."""
        return self._watchdog_interval if self.enabled else None

    def ready(self, status: str) -> None:
        """The pool runs and the metrics endpoint listens (start or reload done)."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def reloading(self, status: str) -> None:
        """A reload begins; MONOTONIC_USEC lets systemd 253+ match it to its request."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={_one_line(status)}")

    def stopping(self, status: str) -> None:
        """A stop begins: the unit shows "deactivating" from here on."""
        self._send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """Replace the one-line summary that `systemctl status` shows."""
        self._send(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more in the current state; never shortens a timeout."""
        usec = max(1, round(seconds * 1_000_000))
        self._send(f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog_due(self, now: float) -> bool:
        """True when a ping is owed at monotonic time `now`."""
        interval = self.watchdog_interval
        if interval is None:
            return False
        return self._last_ping is None or now - self._last_ping >= interval

    def watchdog_ping(self, now: float) -> None:
        """Send WATCHDOG=1 and remember `now` as the time of the last ping."""
        if self.watchdog_interval is None:
            return
        self._last_ping = now
        self._send("WATCHDOG=1")

    def close(self) -> None:
        """Release the socket; later calls do nothing."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _send(self, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        if self._warned:
            log.debug("sd_notify to %s failed: %s", self._name, exc)
            return
        self._warned = True
        log.warning(
            "cannot notify systemd at %s (%s); later failures are logged at DEBUG", self._name, exc
        )
