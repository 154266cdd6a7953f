"""How a task body tells the bench that it finished: a Redis counter or a datagram.

Both reporters read their settings from the environment the bench gives the
worker process (BENCH_*), lazily and once per process: a peer may fork its
workers after importing the app module, and a connection made before a fork
must not be shared. Standard library plus redis-py, which both the project's
interpreter and the peers' virtual environment have.

- RedisCounter: one INCR per job, as in the issue's peer figures. When the
  count reaches BENCH_EXPECT the body pushes its monotonic clock to a list the
  bench waits on (CLOCK_MONOTONIC is one clock for every process of the machine).
- DatagramCounter: an in-process count for the daemon on SQLite (no Redis in
  the path); every BENCH_REPORT_EVERY-th completion, and the BENCH_EXPECT-th,
  sends "done N T" to the bench's AF_UNIX datagram socket BENCH_EVENTS.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

DONE_KEY = "bench:done"
STARTED_KEY = "bench:started"
FINISHED_KEY = "bench:finished"  # list: the monotonic time of the BENCH_EXPECT-th completion
STAMPS_KEY = "bench:stamps"  # list: "seq start-time" of each stamp job (pickup latency)


def _expect() -> int:
    return int(os.environ.get("BENCH_EXPECT", "0"))


class RedisCounter:
    """Counts completions with one Redis INCR each (the peers' way, and a drainpool variant)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._client: Any = None
        self._expect = 0

    def _redis(self) -> Any:
        if self._pid != os.getpid():  # first use in this process (or after a fork)
            with self._lock:
                if self._pid != os.getpid():
                    import redis  # imported here: only processes that count in Redis need it

                    self._client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
                    self._expect = _expect()
                    self._pid = os.getpid()
        return self._client

    def started(self) -> None:
        self._redis().incr(STARTED_KEY)

    def stamp(self, seq: float) -> None:
        """The task's start on CLOCK_MONOTONIC, taken first; pushed after (not timed)."""
        started = time.monotonic()
        self._redis().rpush(STAMPS_KEY, f"{int(seq)} {started!r}")

    def done(self) -> None:
        client = self._redis()
        if client.incr(DONE_KEY) == self._expect:
            client.rpush(FINISHED_KEY, repr(time.monotonic()))


class DatagramCounter:
    """Counts completions in process and reports progress by datagram (no I/O per job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._sock: socket.socket | None = None
        self._path = ""
        self._every = 0
        self._expect = 0

    def _setup(self) -> None:
        """Caller holds the lock."""
        self._path = os.environ["BENCH_EVENTS"]
        self._every = max(int(os.environ.get("BENCH_REPORT_EVERY", "100")), 1)
        self._expect = _expect()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def _send(self, text: str) -> None:
        assert self._sock is not None
        # The bench stopped listening: losing a progress report must not fail the job.
        with contextlib.suppress(OSError):
            self._sock.sendto(text.encode(), self._path)

    def started(self) -> None:
        with self._lock:
            if self._sock is None:
                self._setup()
        self._send(f"started {time.monotonic()!r}")

    def done(self) -> None:
        # A lock, not the GIL, makes the count exact: the body runs on 8 threads.
        with self._lock:
            if self._sock is None:
                self._setup()
            self._count += 1
            n = self._count
        if n % self._every == 0 or n == self._expect:
            self._send(f"done {n} {time.monotonic()!r}")


def wait_finished(client: Any, alive: Callable[[], bool], timeout: float) -> float | None:
    """Bench side of RedisCounter: the monotonic time of the BENCH_EXPECT-th completion.

    None when `timeout` passed or the worker died first (`alive` turned false).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popped = client.blpop([FINISHED_KEY], timeout=0.5)
        if popped is not None:
            return float(popped[1])
        if not alive():
            return None
    return None
