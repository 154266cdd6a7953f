"""How an idle dispatcher learns of new work: the small protocol every backend provides.

An idle pool does not poll (issue 21). Its listener thread blocks in
`Waiter.wait(timeout)`, which returns True when the backend says that a job
of one of the pool's tasks may be ready; the dispatcher then fetches once.
Each backend brings its own way to be told: a doorbell datagram beside the
SQLite file (drainpool.queue.doorbell), a Redis pub/sub connection
(drainpool.queue.redis_wakeups), and a LISTEN connection on PostgreSQL
(drainpool.queue.postgres_wakeups).

A waiter may also hear that a running job was cancelled (Redis: a
"cancel ID" message on the wake-up channel; PostgreSQL: a "cancel" notification
on the same channel): it hands the id to the callback
given to `Waiter.hear_cancels`, and the pool stops the job at once; the pool's job
watch (drainpool.jobwatch) still reads the cancels, as the safety net.

A waiter whose channel breaks logs one line, reports the mode "poll" and
keeps trying to re-arm; the pool's safety-net fetch (every
`queue.poll_interval_seconds`) finds whatever a lost notification announced,
so nothing depends on a notification arriving. A waiter reports one wake-up
each time it is armed (the first time too), since notifications may have been
missed before.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Collection
from typing import Literal, Protocol, runtime_checkable

from drainpool.queue.base import Job

log = logging.getLogger("drainpool.queue")

WaitMode = Literal["doorbell", "blocking read", "poll"]
REARM_SECONDS = 1.0  # a broken waiter tries to re-arm at least this often


@runtime_checkable
class Waiter(Protocol):
    """Blocks an idle pool until its backend announces work for its tasks."""

    @property
    def mode(self) -> WaitMode:
        """How it waits now: "poll" while its channel is broken (or for a backend without one)."""
        ...

    # Whether the woken thread may fetch for its pool itself (SQLite, PostgreSQL: the pool's
    # listener then runs the job it claimed, drainpool.pool). False where only the dispatcher
    # may fetch: a Redis fetch also keeps the pool's push registration (IdleMemory).
    fetch_anywhere: bool
    # The last wait returned True because the channel was (re)armed, not for an
    # announcement: notifications may have been missed, so the dispatcher fetches in full.
    rearmed: bool

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds; True when woken by the backend (or by a re-arm)."""
        ...

    def take_due(self) -> float | None:
        """The earliest due time (epoch seconds) of delayed jobs announced since the last call.

        So a pool woken for a delayed job learns when it is due without asking the
        queue: a herd of woken daemons costs one fetch each (issue 21, item 4).
        """
        ...

    def due_heard(self) -> bool:
        """Whether a due time waits to be taken (the listener leaves it to the dispatcher)."""
        ...

    def hear_cancels(self, stop: Callable[[str], None]) -> None:
        """Call `stop(job_id)` on the waiting thread when the backend announces a cancel of
        a running job (issue 19); set before the first wait. A waiter whose backend
        announces none ignores it: the pool's job watch reads the cancels anyway."""
        ...

    def hear_pushes(self, take: Callable[[list[Job]], bool]) -> None:
        """Call `take(jobs)` on the waiting thread with jobs the backend leased to this pool
        at their enqueue (Redis: drainpool.queue.redis_push); `take` returns False when the
        pool no longer takes jobs (a drain), and the waiter releases them. Set before the
        first wait; a backend that pushes nothing ignores it."""
        ...

    def close(self) -> None:
        """Ends a wait in progress on another thread; the waiter is not used again."""
        ...


@runtime_checkable
class WakingQueue(Protocol):
    """The optional part of the queue protocol that lets an idle pool sleep."""

    def waiter(self, tasks: Collection[str]) -> Waiter:
        """A waiter woken when a job of one of `tasks` is enqueued, released or retried."""
        ...

    def next_due(self, tasks: Collection[str]) -> float | None:
        """Seconds until the earliest delayed job of `tasks` comes due (0: due), or None."""
        ...


class Interrupter:
    """A socket pair that ends a `select` on another thread: how `close()` wakes a waiter."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.closed = threading.Event()

    def fileno(self) -> int:
        return self._read.fileno()

    def interrupt(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):  # already written: one byte is enough
            self._write.send(b"x")

    def select(self, fds: Collection[int], timeout: float | None) -> list[int]:
        """The fds of `fds` readable within `timeout` (None: no limit); [] once interrupted."""
        if self.closed.is_set():
            return []
        wait = None if timeout is None else max(timeout, 0.0)
        try:
            readable, _, _ = select.select([*fds, self.fileno()], [], [], wait)
        except (OSError, ValueError):  # an fd closed under us: treated as readable (broken)
            return list(fds)
        return [] if self.fileno() in readable else list(readable)

    def sleep(self, timeout: float) -> None:
        self.select((), timeout)

    def release(self) -> None:
        for sock in (self._read, self._write):
            sock.close()


class PollWaiter:
    """For a queue that cannot notify: sleeps the timeout, so the safety net does it all."""

    mode: WaitMode = "poll"
    fetch_anywhere = False  # never woken: the dispatcher's safety net fetches
    rearmed = False

    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        self._closed.wait(timeout)
        return False

    def take_due(self) -> float | None:
        return None

    def due_heard(self) -> bool:
        return False

    def hear_cancels(self, stop: Callable[[str], None]) -> None:
        pass  # nothing announced: the job watch finds the cancels

    def hear_pushes(self, take: Callable[[list[Job]], bool]) -> None:
        pass  # nothing pushed: every job is fetched

    def close(self) -> None:
        self._closed.set()


class ChannelWaiter(abc.ABC):
    """A waiter on a channel that can break: arms it, listens, falls back, re-arms.

    Subclasses say how to arm (bind a socket, connect and subscribe), listen
    and disarm; this class keeps the fault rules of the module docstring, and
    makes `close()` safe from any thread (the waiting thread releases what it
    holds when a close ended its wait).
    """

    armed_mode: WaitMode
    fetch_anywhere = True  # see Waiter

    def __init__(self, label: str) -> None:
        self._label = label  # names the channel in the log: "doorbell in /x/q.db-doorbell"
        self._interrupter = Interrupter()
        self._busy = threading.Lock()  # held by a wait in progress
        self._armed = False
        self._broken = False  # it failed since it last worked: the one line is logged
        self._released = False
        self._due: float | None = None  # the earliest announced due time not yet taken
        self._due_lock = threading.Lock()  # the listener notes, the dispatcher takes
        self._on_cancel: Callable[[str], None] | None = None  # see Waiter.hear_cancels
        self._take_pushed: Callable[[list[Job]], bool] | None = None  # Waiter.hear_pushes
        self.rearmed = False  # see Waiter

    @property
    def mode(self) -> WaitMode:
        return self.armed_mode if self._armed else "poll"

    def wait(self, timeout: float) -> bool:
        with self._busy:
            try:
                if self._interrupter.closed.is_set():
                    return False
                self.rearmed = not self._armed
                if self.rearmed:
                    return self._rearm(timeout)
                return self._listen(timeout)
            except Exception as exc:  # any fault of the channel: fall back, never stop
                self._fail(exc)
                return False
            finally:
                if self._interrupter.closed.is_set():
                    self._release()

    def take_due(self) -> float | None:
        with self._due_lock:
            due, self._due = self._due, None
        return due

    def due_heard(self) -> bool:
        return self._due is not None  # one read: a due noted just after is the fetch's too

    def _note_due(self, due: float) -> None:
        """A delayed job of our tasks announced, due at `due` (epoch seconds)."""
        with self._due_lock:
            self._due = due if self._due is None else min(self._due, due)

    def hear_cancels(self, stop: Callable[[str], None]) -> None:
        self._on_cancel = stop

    def hear_pushes(self, take: Callable[[list[Job]], bool]) -> None:
        self._take_pushed = take

    def _cancel_heard(self, job_id: str) -> None:
        """A running job was cancelled: called on the waiting thread, by `_listen`."""
        if self._on_cancel is not None:
            self._on_cancel(job_id)

    def _rearm(self, timeout: float) -> bool:
        try:
            self._arm()
        except Exception as exc:
            self._fail(exc)
            self._interrupter.sleep(min(timeout, REARM_SECONDS))
            return False
        self._armed = True
        if self._broken:
            self._broken = False
            log.warning("%s: wake-ups are back", self._label)
        return True  # notifications may have been missed before it was armed

    def _fail(self, exc: BaseException) -> None:
        if self._armed:
            with contextlib.suppress(Exception):
                self._disarm()
            self._armed = False
        if not self._broken:
            self._broken = True
            log.warning(
                "%s: %s; polling every queue.poll_interval_seconds until it is back",
                self._label,
                " ".join(str(exc).split()) or type(exc).__name__,
            )

    def close(self) -> None:
        self._interrupter.interrupt()
        if self._busy.acquire(blocking=False):  # no wait in progress: release it here
            try:
                self._release()
            finally:
                self._busy.release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._armed:
            with contextlib.suppress(Exception):
                self._closing()
            with contextlib.suppress(Exception):
                self._disarm()
            self._armed = False
        self._interrupter.release()

    @abc.abstractmethod
    def _arm(self) -> None:
        """Open the channel; raise when it cannot be opened now."""

    @abc.abstractmethod
    def _listen(self, timeout: float) -> bool:
        """Wait on the open channel (use self._interrupter.select); raise when it broke."""

    @abc.abstractmethod
    def _disarm(self) -> None:
        """Close the channel."""

    def _closing(self) -> None:  # noqa: B027 - a hook: most channels hold nothing to settle
        """The waiter is closed while armed: settle what the channel holds (before _disarm)."""


def waiter_for(queue: object, tasks: Collection[str]) -> Waiter:
    """The queue's own waiter, or a PollWaiter for a queue without one."""
    if isinstance(queue, WakingQueue):
        return queue.waiter(tasks)
    return PollWaiter()


def next_due(queue: object, tasks: Collection[str]) -> float | None:
    return queue.next_due(tasks) if isinstance(queue, WakingQueue) else None


def process_tag() -> str:
    """A name unique to this process and moment, for a waiter's socket or connection."""
    return f"{os.getpid()}-{os.urandom(4).hex()}"
