"""Whether the daemon's queue answers, told once when it goes and once when it comes back.

The pools' dispatchers, the start-up ping and the scrapes report from their
own threads (`report`); a change of readiness is handed to the supervisor's
inbox through `on_change`, and the supervisor's loop calls `changed()` to log
it once rather than once per retry. Dead-lettering the jobs of unconfigured
tasks waits here for the queue to come back rather than fail the start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from drainpool.health import QueueHealth
from drainpool.queue import Queue, QueueStats, QueueUnavailable

log = logging.getLogger("drainpool.supervisor")  # the lines the supervisor always logged


class QueueMonitor:
    """The queue's health as the daemon reports it: readiness, one log line per change."""

    def __init__(
        self,
        queue: Callable[[], Queue | None],
        task_names: Callable[[], Collection[str]],
        clock: Callable[[], float],
        on_change: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._task_names = task_names
        self._clock = clock
        self._on_change = on_change
        self.health = QueueHealth()
        self._down_since: float | None = None  # as logged by the loop
        self._bury_due = False  # bury_unknown could not run: retry when the queue is back

    @property
    def ok(self) -> bool:
        return self.health.ok

    @property
    def problem(self) -> str:
        return self.health.problem

    def report(self, source: str, ok: bool, why: str) -> None:
        """From any thread: one source's latest word on the queue."""
        if self.health.report(source, ok, why):
            self._on_change()

    def ping(self) -> str | None:
        """At start: a queue that does not answer makes the daemon not ready, not dead.

        The pools start anyway; their dispatchers retry with backoff and report
        the queue healthy at their first success, so work begins by itself.
        Returns what `changed()` returns, at once: a pool may report the queue
        back before the loop runs.
        """
        queue = self._queue()
        assert queue is not None
        try:
            queue.ping()
        except QueueUnavailable as exc:
            self.report("start", False, str(exc))
            return self.changed()
        return None

    def stats(self) -> QueueStats:
        """Queue counts for a scrape; a failure here makes /readyz 503 as well."""
        queue = self._queue()
        if queue is None:
            raise QueueUnavailable("no queue yet")
        if self.health.down_for_pools():
            # A pool sees the queue down: a scrape must not wait on it too.
            raise QueueUnavailable(self.problem)
        try:
            stats = queue.stats()
        except QueueUnavailable as exc:
            self.report("stats", False, str(exc))
            raise
        self.report("stats", True, "")
        return stats

    def changed(self) -> str | None:
        """On the loop: log a change of readiness once; "down", "up" or None (no change)."""
        if not self.ok and self._down_since is None:
            self._down_since = self._clock()
            log.error("queue unavailable (not ready; retrying with backoff): %s", self.problem)
            return "down"
        if self.ok and self._down_since is not None:
            down = self._clock() - self._down_since
            self._down_since = None
            log.info("queue available again after %.1fs", down)
            if self._bury_due:
                self.bury_unknown()
            return "up"
        return None

    def bury_unknown(self) -> None:
        """Dead-letter waiting jobs whose task is not configured; later if the queue is down."""
        queue = self._queue()
        assert queue is not None
        self._bury_due = not self.ok
        if self._bury_due:
            return  # known down: do it once the queue is back rather than fail now
        try:
            buried = queue.bury_unknown(self._task_names())
        except QueueUnavailable:
            self._bury_due = True  # the dispatchers will see it too and report it
            return
        except Exception as exc:
            log.error("could not dead-letter jobs of unconfigured tasks: %s", exc)
            return
        if buried:
            log.warning("%d waiting jobs name tasks that are not configured: dead-lettered", buried)
