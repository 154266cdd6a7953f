"""Notifier against real AF_UNIX datagram sockets that the tests own.

Each test binds a receiving socket where systemd would (a filesystem path or
an abstract "@name"), points NOTIFY_SOCKET at it and reads the exact bytes a
service manager would get. The watchdog is driven by an injected clock, so
nothing here sleeps.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from drainpool.systemd import Notifier

# A datagram that the tests expect is there at once: the send has returned
# before recv is called. The timeout only keeps a broken build from hanging.
RECV_TIMEOUT = 5.0


class Receiver:
    """The service manager's end: a bound datagram socket and its address."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def pending(self) -> bytes | None:
        """The next datagram if one is queued, without waiting."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None
        finally:
            self.sock.settimeout(RECV_TIMEOUT)


def _receiver_at(address: str | bytes, env_value: str) -> Receiver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT)
    return Receiver(sock, env_value)


@pytest.fixture
def path_receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = str(tmp_path / "notify.sock")
    assert len(path) < 108, "sun_path is 108 bytes"
    receiver = _receiver_at(path, path)
    yield receiver
    receiver.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"drainpool-test-{os.getpid()}-{secrets.token_hex(6)}"
    receiver = _receiver_at(b"\0" + name.encode(), "@" + name)
    yield receiver
    receiver.sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue(f"{request.param}_receiver")


Make = Callable[[Mapping[str, str]], Notifier]


@pytest.fixture
def make() -> Iterator[Make]:
    """Notifier.from_env, with every notifier closed even when a test fails."""
    made: list[Notifier] = []

    def _make(environ: Mapping[str, str]) -> Notifier:
        made.append(Notifier.from_env(environ))
        return made[-1]

    yield _make
    for n in made:
        n.close()


@pytest.fixture
def notifier(receiver: Receiver, make: Make) -> Notifier:
    return make({"NOTIFY_SOCKET": receiver.env_value})


def test_ready_carries_the_status_line(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.enabled
    notifier.ready("running: generation 1, 8 workers, 0 in flight")
    assert receiver.recv() == b"READY=1\nSTATUS=running: generation 1, 8 workers, 0 in flight"


def test_reloading_sends_the_monotonic_clock(receiver: Receiver, notifier: Notifier) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("reloading: generation 1 draining")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    lines = receiver.recv().decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert lines[2:] == ["STATUS=reloading: generation 1 draining"]


def test_stopping_status_and_extend_timeout(receiver: Receiver, notifier: Notifier) -> None:
    notifier.stopping("draining: 3 in flight")
    notifier.status("draining: 1 in flight")
    notifier.extend_timeout(12.5)
    assert receiver.recv() == b"STOPPING=1\nSTATUS=draining: 3 in flight"
    assert receiver.recv() == b"STATUS=draining: 1 in flight"
    assert receiver.recv() == b"EXTEND_TIMEOUT_USEC=12500000"


def test_a_multi_line_status_is_sent_as_one_line(receiver: Receiver, notifier: Notifier) -> None:
    # systemd reads STATUS= up to the newline; the rest would become bogus keys.
    notifier.status("running\nREADY=1\tgeneration 2 ")
    assert receiver.recv() == b"STATUS=running READY=1 generation 2"


def test_unset_socket_disables_everything(make: Make) -> None:
    n = make({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.watchdog_interval is None
    assert not n.watchdog_due(0.0)
    # Every call is a quiet no-op, including after close.
    n.ready("x")
    n.reloading("x")
    n.stopping("x")
    n.status("x")
    n.extend_timeout(1.0)
    n.watchdog_ping(0.0)
    n.close()
    assert not n.enabled


def test_from_env_changes_no_variable(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch, make: Make
) -> None:
    env = {
        "NOTIFY_SOCKET": path_receiver.env_value,
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    snapshot = dict(env)
    make(env)
    assert env == snapshot

    # The default reads os.environ, and must leave it as it was too.
    for key, value in snapshot.items():
        monkeypatch.setenv(key, value)
    n = Notifier.from_env()
    try:
        n.ready("up")
    finally:
        n.close()
    assert {key: os.environ.get(key) for key in snapshot} == snapshot
    assert path_receiver.recv() == b"READY=1\nSTATUS=up"


def test_a_missing_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Make
) -> None:
    caplog.set_level(logging.DEBUG, logger="drainpool.systemd")
    missing = str(tmp_path / "gone.sock")
    n = make({"NOTIFY_SOCKET": missing})
    n.ready("up")
    n.status("still up")
    n.stopping("bye")
    n.close()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert missing in warnings[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2


def test_a_socket_nobody_reads_from_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Make
) -> None:
    # The manager died: its socket file is left behind and refuses datagrams.
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()

    n = make({"NOTIFY_SOCKET": str(path)})
    n.ready("up")
    n.ready("up again")
    n.close()
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1


def test_an_unsupported_address_disables_notification(
    caplog: pytest.LogCaptureFixture, make: Make
) -> None:
    n = make({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    n.ready("up")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_watchdog_pings_every_half_timeout_on_the_callers_clock(
    receiver: Receiver, make: Make
) -> None:
    n = make({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "10000000"})
    assert n.watchdog_interval == 5.0

    # A supervisor loop that wakes every 0.5 s of its own clock for 20 s.
    pinged_at = []
    for step in range(41):
        now = 1000.0 + step * 0.5
        if n.watchdog_due(now):
            n.watchdog_ping(now)
            pinged_at.append(now)
    n.close()

    assert pinged_at == [1000.0, 1005.0, 1010.0, 1015.0, 1020.0]
    assert [receiver.recv() for _ in pinged_at] == [b"WATCHDOG=1"] * 5
    assert receiver.pending() is None


def test_a_late_loop_pings_once_and_restarts_the_interval(receiver: Receiver, make: Make) -> None:
    n = make({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "4000000"})
    n.watchdog_ping(10.0)
    # The loop was busy for three intervals: one ping, not a burst of catch-ups.
    assert n.watchdog_due(16.5)
    n.watchdog_ping(16.5)
    assert not n.watchdog_due(18.4)
    assert n.watchdog_due(18.5)
    n.close()
    assert [receiver.recv(), receiver.recv()] == [b"WATCHDOG=1"] * 2
    assert receiver.pending() is None


def test_watchdog_for_this_pid_is_enabled(receiver: Receiver, make: Make) -> None:
    env = {
        "NOTIFY_SOCKET": receiver.env_value,
        "WATCHDOG_USEC": "3000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    n = make(env)
    assert n.watchdog_interval == 1.5
    n.watchdog_ping(0.0)
    n.close()
    assert receiver.recv() == b"WATCHDOG=1"


def test_watchdog_pid_of_another_process_disables_pings(receiver: Receiver, make: Make) -> None:
    # A real other process, as when the daemon's child inherits the variables.
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        env = {
            "NOTIFY_SOCKET": receiver.env_value,
            "WATCHDOG_USEC": "3000000",
            "WATCHDOG_PID": str(other.pid),
        }
        n = make(env)
        assert n.enabled
        assert n.watchdog_interval is None
        assert not n.watchdog_due(100.0)
        n.watchdog_ping(100.0)
        n.status("after the ping")
        n.close()
    finally:
        other.communicate(b"", timeout=30)
    # The status is the first datagram: no WATCHDOG=1 was sent before it.
    assert receiver.recv() == b"STATUS=after the ping"


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_usable_watchdog_usec_means_no_watchdog(
    receiver: Receiver, usec: str, make: Make
) -> None:
    n = make({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": usec})
    assert n.enabled
    assert n.watchdog_interval is None
    assert not n.watchdog_due(0.0)
    n.close()


def test_close_stops_sending(receiver: Receiver, notifier: Notifier) -> None:
    notifier.status("before close")
    notifier.close()
    notifier.status("after close")
    notifier.close()
    assert not notifier.enabled
    assert receiver.recv() == b"STATUS=before close"
    assert receiver.pending() is None
