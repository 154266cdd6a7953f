"""Stopping one job of a pool: cancels asked on the queue, time limits, and their grace.

A pool's dispatcher learns of jobs to fetch; this thread learns of jobs to
stop (issue 19). While the pool holds jobs (running or in reserve) it asks the
queue every CHECK_SECONDS which of them were cancelled, with one cheap read
(SQLite: one primary-key query on the side connection; Redis: one
SMISMEMBER), and sweeps the pool's running jobs for time limits and for the
grace after a stop. While the pool holds nothing it sleeps until the pool
hands it work: an idle daemon asks nothing (and the thread itself starts with
the first job handed over: a pool never given one has no watch). The latency of a cancel is bounded
by CHECK_SECONDS, never by the lease renewal. On Redis and PostgreSQL a cancel
also comes as a message on the wake-up channel of issue 21, which the pool's
listener turns into a stop at once (Waiter.hear_cancels); there this interval
is the safety net.

A thread of its own rather than a step of the dispatcher's loop: the
dispatcher blocks in the queue's fetch and settle, and a cancel must not wait
behind them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from drainpool.context import StopReason
from drainpool.queue.base import Job, Queue

log = logging.getLogger("drainpool.pool")

CHECK_SECONDS = 0.05  # how often a pool holding jobs asks the queue for cancels


class Watched(Protocol):
    """What the watch asks of its pool (drainpool.pool.Pool)."""

    def sweep(self) -> tuple[list[Job], float | None, bool]:
        """(jobs held, seconds to the next time limit or grace, whether to stop watching).

        Stops the jobs whose time limit passed and ends those whose grace is over.
        """
        ...

    def stop_job(self, job_id: str, reason: StopReason) -> None:
        """Ask one held job to stop (a reserved one is dropped at once)."""
        ...


class JobWatch:
    """One pool's cancel and time-limit thread; sleeps while the pool holds no job."""

    def __init__(
        self,
        pool: Watched,
        queue: Queue,
        name: str,
        *,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float],
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._check_seconds = check_seconds
        self._clock = clock
        self._wake = threading.Condition(threading.Lock())
        self._busy = False  # the pool may hold jobs: set by wake(), cleared when it holds none
        self._first_look = 0.0  # seconds from a wake-up to the first sweep
        self._failing = False  # one log line per streak of failed checks
        self._ended = False  # the pool drained: no more pauses (set by end())
        # Started by the first wake() (issue 17): a pool that was never handed a job has none.
        self._thread = threading.Thread(target=self._loop, name=f"{name}-jobwatch", daemon=True)

    @property
    def watching(self) -> bool:
        return self._busy

    def wake(self, first_look: float = 0.0) -> None:
        """The pool was handed jobs (or began to drain): watch them, from `first_look` on.

        Called for every batch the dispatcher hands over, so the common case
        (already watching) is one attribute read. A pool that was idle passes
        CHECK_SECONDS, or a shorter time limit of its jobs: a sweep and a read of
        the queue at once would compete with the start of those jobs (issue 21).
        """
        if self._busy:
            return
        with self._wake:
            if self._thread.ident is None:
                self._thread.start()
            self._busy = True
            self._first_look = first_look
            self._wake.notify()

    def end(self) -> None:
        """The pool has drained: a watch pausing between checks looks now, and ends.

        Not wake(): that returns at once while watching, and the pause (up to
        CHECK_SECONDS) would then delay the pool's join and the daemon's exit.
        """
        with self._wake:
            if self._thread.ident is None:
                return  # never started: nothing to end
            self._ended = True
            self._busy = True
            self._first_look = 0.0
            self._wake.notify()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._busy:
                    self._wake.wait()
                first_look, self._first_look = self._first_look, 0.0
                if first_look > 0 and not self._ended:
                    self._wake.wait(first_look)  # wake() notifies no more while busy
            held, next_deadline, done = self._pool.sweep()
            if done:
                return
            if not held:
                with self._wake:
                    self._busy = False
                # A hand-over between the sweep and the flag set it again: look once more.
                held, next_deadline, done = self._pool.sweep()
                if done:
                    return
                if not held:
                    continue
                self.wake()
            for job_id in self._cancelled(held):
                self._pool.stop_job(job_id, "cancel")
            pause = self._check_seconds
            if next_deadline is not None:
                pause = min(pause, max(next_deadline, 0.0))
            with self._wake:
                if not self._ended:  # an end() during the sweep is not missed
                    self._wake.wait(pause)

    def _cancelled(self, held: Sequence[Job]) -> set[str]:
        try:
            found = self._queue.cancel_requests(held)
        except Exception as exc:  # the dispatcher reports the queue's health; keep watching
            if not self._failing:
                log.warning("cannot check for cancelled jobs: %s", exc)
            self._failing = True
            return set()
        self._failing = False
        return found
