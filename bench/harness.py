"""Process plumbing for the bench: children, exit times, datagram inboxes, RSS, Redis.

Every child is started through `Children`, which remembers its pid and kills
whatever is still alive (by pid, never by name) when the run ends, even on an
exception. Exit times come from a pidfd, so "time from SIGTERM to exit" is the
kernel's moment of exit and not the next tick of a polling loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE_KIB = os.sysconf("SC_PAGESIZE") // 1024


class BenchError(RuntimeError):
    """A scenario could not produce a measurement (a timeout, a child that died)."""


def free_port() -> int:
    """A loopback port that was free a moment ago (for children that need a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """One started process: its Popen, its log file and a pidfd for its exit."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started_at: float  # monotonic, just before the fork
    pidfd: int = field(default=-1)
    # Descendants seen before each signal, with their start times, so strays can be
    # killed after the root exits (they are reparented then) without hitting a reused pid.
    seen: set[tuple[int, int]] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> float:
        """Send `signum` to the root; returns the monotonic time just before sending."""
        self.seen.update((p, t) for p in descendants(self.pid) if (t := start_time(p)))
        now = time.monotonic()
        os.kill(self.pid, signum)
        return now

    def wait_exit(self, timeout: float) -> float | None:
        """Wait for the process to exit; its monotonic exit time, or None on timeout."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if not poller.poll(max(timeout, 0.0) * 1000):
            return None
        exited = time.monotonic()
        self.popen.wait()  # reap; the pidfd said it is gone, so this returns at once
        return exited

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_strays(self) -> None:
        """SIGKILL descendants seen earlier that still run (same pid and start time)."""
        for pid, started in self.seen:
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def tail(self, lines: int = 15) -> str:
        """The end of the child's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Starts children with output to files and stops every one of them at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._serial = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._serial += 1
        log = self.log_dir / f"{self._serial:04d}-{name}.log"
        with log.open("wb") as out:
            started = time.monotonic()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,  # a file, never a pipe: a full pipe would block the child
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        child = Child(name, popen, log, started, os.pidfd_open(popen.pid))
        self._children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`, then strays; returns the exit code."""
        try:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.signal(signal.SIGTERM)
                if child.wait_exit(timeout) is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.signal(signal.SIGKILL)
            return child.popen.wait()
        finally:
            child.kill_strays()
            self._forget(child)

    def kill(self, child: Child) -> None:
        """SIGKILL the child and its strays: teardown once its figures are taken."""
        try:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.signal(signal.SIGKILL)
            child.popen.wait()
        finally:
            child.kill_strays()
            self._forget(child)

    def _forget(self, child: Child) -> None:
        if child in self._children:
            self._children.remove(child)
            os.close(child.pidfd)

    def kill_all(self) -> None:
        """SIGKILL (by pid) every child still running, and the strays it left."""
        for child in list(self._children):
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.signal(signal.SIGKILL)
                child.popen.wait()
            child.kill_strays()
            self._forget(child)


def run_checked(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600.0,
) -> str:
    """Run a short command to completion; its stdout, or BenchError with its stderr."""
    proc = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise BenchError(f"{' '.join(argv[:6])} exited {proc.returncode}: " + " | ".join(detail))
    return proc.stdout


# -- /proc ----------------------------------------------------------------


def _ppids() -> dict[int, int]:
    result: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name (field 2) may hold spaces and parentheses: split after the last ")".
        result[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return result


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, children first."""
    ppids = _ppids()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in ppids.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


def tree_rss_mib(pid: int) -> tuple[float, int]:
    """Resident memory of `pid` and all its descendants (MiB), and how many processes."""
    total_kib = 0
    pids = [pid, *descendants(pid)]
    for p in pids:
        with contextlib.suppress(OSError):
            # statm's second field is resident pages, the same figure as VmRSS.
            total_kib += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE_KIB
    return total_kib / 1024, len(pids)


# -- datagram inbox -------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    received: float  # monotonic
    text: str

    def fields(self) -> dict[str, str]:
        """sd_notify "KEY=VALUE" lines as a dict."""
        return dict(line.split("=", 1) for line in self.text.splitlines() if "=" in line)


class Inbox:
    """An AF_UNIX datagram socket of the bench's own, read by a thread that stamps arrivals.

    Used as NOTIFY_SOCKET (sd_notify READY=1, RELOADING=1, STOPPING=1) and as
    BENCH_EVENTS (the task adapters' progress reports).
    """

    def __init__(self, name: str) -> None:
        # AF_UNIX paths are limited to 108 bytes: keep the socket in a short temp dir.
        self._dir = tempfile.mkdtemp(prefix="drainbench-")
        self.path = str(Path(self._dir) / name)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._messages: list[Datagram] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"inbox-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return  # closed
            now = time.monotonic()
            with self._cond:
                if self._closed:
                    return
                self._messages.append(Datagram(now, data.decode(errors="replace")))
                self._cond.notify_all()

    def mark(self) -> int:
        """A position: later waits can look only at messages after it."""
        with self._cond:
            return len(self._messages)

    def wait_for(
        self, match: Callable[[Datagram], bool], timeout: float, since: int = 0
    ) -> Datagram | None:
        """The first message after `since` that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self._messages[since:]:
                    if match(message):
                        return message
                since = len(self._messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def messages(self, since: int = 0) -> list[Datagram]:
        with self._cond:
            return list(self._messages[since:])

    def close(self) -> None:
        with self._cond:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv
        self._reader.join(timeout=2)
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self._dir)


def notify_is(state: str) -> Callable[[Datagram], bool]:
    """A matcher for sd_notify messages carrying `STATE=1` (READY, RELOADING, STOPPING)."""
    return lambda message: message.fields().get(state) == "1"


# -- Redis ----------------------------------------------------------------

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """A real redis-server on a free loopback port with a temp dir, no persistence."""

    def __init__(self, children: Children, work: Path) -> None:
        self._children = children
        self._dir = work / "redis"
        self.port = 0
        self._child: Child | None = None
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        if not Path(REDIS_SERVER).exists():
            raise BenchError(f"{REDIS_SERVER} is missing: apt-get install redis-server")
        self._dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self._dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._child = self._children.start("redis-server", argv)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self._child.alive():
                raise BenchError(f"redis-server exited: {self._child.tail()}")
            with contextlib.suppress(OSError, redis.exceptions.ConnectionError):
                if self.client.ping():
                    return
            time.sleep(0.02)  # readiness poll, with a deadline
        raise BenchError("redis-server did not answer PING within 10 s")

    @property
    def client(self) -> Any:
        """A redis-py client (the project's test extra brings redis-py)."""
        if self._client is None:
            import redis  # only scenarios that use Redis need the package

            self._client = redis.Redis.from_url(self.url)
        return self._client

    def flush(self) -> None:
        self.client.flushall()

    def version(self) -> str:
        out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._child is not None:
            self._children.stop(self._child, timeout=10)
            self._child = None


@contextlib.contextmanager
def inbox(name: str) -> Iterator[Inbox]:
    box = Inbox(name)
    try:
        yield box
    finally:
        box.close()
