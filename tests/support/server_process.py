"""A server process for tests: started on a free loopback port, awaited until it answers,
stopped or killed by its pid, and restartable on the same port and files.

redis_server and postgres_server are this with their own command line, their
own "does it answer?" and their own stop signal. Each server's output goes to a
log file of its own (a full pipe cannot block it), and every failure to start
carries that log's tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self, TypeVar

from tests.support.net import free_port
from tests.support.waiting import wait_until


class PortTaken(RuntimeError):
    """The server could not bind its port: free_port's answer was taken in between."""


class ServerProcess:
    """One server process on 127.0.0.1; subclasses say how to run it and ask it."""

    name = "server"  # in messages
    stop_signal = signal.SIGTERM  # the graceful stop; SIGKILL follows if it hangs
    port_taken_line = "Address already in use"  # in the log when the port was taken
    start_deadline = 20.0  # seconds: generous, the machine is shared and noisy
    stop_deadline = 10.0
    answer_every = 0.05  # seconds at most between two "does it answer?"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The command line that runs the server in the foreground on self.port."""
        raise NotImplementedError

    def answers(self) -> bool:
        """Whether the running server answers a request now."""
        raise NotImplementedError

    def popen_options(self) -> dict[str, Any]:
        """More keyword arguments for Popen (a user to run as, a session of its own)."""
        return {}

    def kill_pid(self, pid: int) -> None:
        """SIGKILL the server; a server whose children share its group kills the group."""
        os.kill(pid, signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, deadline: float | None = None) -> None:
        """Start the server and return once it answers; raise with its log if not.

        The first start may lose the race for its port to another process (free_port
        only asked the kernel): then it takes a new port. A restart keeps its port.
        """
        first = self.proc is None
        for _ in range(3):
            try:
                return self._start_once(self.start_deadline if deadline is None else deadline)
            except PortTaken:
                if not first:
                    raise
                self.port = free_port()
        raise RuntimeError(f"{self.name} found no free port:\n{self.log_tail()}")

    def _start_once(self, deadline: float) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running (pid {self.proc.pid})")
        with open(self.log_path, "ab") as log:
            offset = log.tell()  # what this start writes begins here
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **self.popen_options(),
            )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    said = log.read().decode(errors="replace")
                if self.port_taken_line in said:
                    raise PortTaken(said)
                raise RuntimeError(f"{self.name} exited at start:\n{said[-2000:]}")
            return self.answers()

        try:
            wait_until(up, deadline, f"{self.name} to answer", every=self.answer_every)
        except AssertionError:
            self.kill()
            raise RuntimeError(
                f"{self.name} did not answer in {deadline} s:\n{self.log_tail()}"
            ) from None

    def stop(self, deadline: float | None = None) -> None:
        """Graceful stop by pid (stop_signal), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=self.stop_deadline if deadline is None else deadline)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL by pid and reap: a crash, or the last resort of a teardown."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                self.kill_pid(self.proc.pid)
        self.proc.wait()

    def discard(self) -> None:
        """The end of a test's server: killed (a subclass may also delete its files)."""
        self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


Server = TypeVar("Server", bound=ServerProcess)


@contextmanager
def started_on_demand(
    kind: Callable[..., Server], base_dir: Path, name: str
) -> Iterator[Callable[..., Server]]:
    """Yield start(**options): one more server of `kind`, started in base_dir/name-N.

    Every server started is discarded on exit, a failed start included.
    """
    servers: list[Server] = []

    def start(**options: Any) -> Server:
        server = kind(base_dir / f"{name}-{len(servers)}", **options)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.discard()
