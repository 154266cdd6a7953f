"""What a pool does around each attempt for the application: its hooks and its trace span.

A pool with neither has no `JobWatch` at all (None), so the worker's path for
it is one `is None` test per job; everything here runs only when configured.
"""

from __future__ import annotations

import threading
from typing import Any

from drainpool.context import TaskContext
from drainpool.hooks import Hooks, JobEvent
from drainpool.queue.base import Job


def job_watch(config: Any, generation: int) -> JobWatch | None:
    """The watch of a pool generation whose config names hooks or tracing; else None."""
    if not config.hooks and config.tracing is None:
        return None
    hooks = Hooks(config.hooks, config.grace_seconds) if config.hooks else None
    tracer = None
    if config.tracing is not None:
        from drainpool import tracing

        tracer = tracing.tracer(config.tracing)
    return JobWatch(config.name, generation, hooks, tracer)


class JobWatch:
    """One pool generation's hooks and tracer."""

    def __init__(self, pool: str, generation: int, hooks: Hooks | None, tracer: Any) -> None:
        self.pool = pool
        self.generation = generation
        self.hooks = hooks
        self.tracer = tracer

    def begin(self, job: Job, ctx: TaskContext) -> Watched:
        """Called by the worker before the task: the span starts, then before_job runs."""
        attempt = None
        if self.tracer is not None:
            from drainpool.tracing import Attempt

            attempt = Attempt(self.tracer, job, self.pool, self.generation)
        watched = Watched(self, job, ctx, attempt)
        if self.hooks is not None:
            self.hooks.call("before_job", self.hooks.before_job, watched.event())
        return watched


class Watched:
    """One attempt under watch; its outcome is reported once (by the worker or the abandon)."""

    def __init__(self, watch: JobWatch, job: Job, ctx: TaskContext, attempt: Any) -> None:
        self._watch = watch
        self._job = job
        self._ctx = ctx
        self._attempt = attempt
        self._lock = threading.Lock()
        self._reported = False

    def event(
        self, outcome: str | None = None, seconds: float | None = None, error: str = ""
    ) -> JobEvent:
        watch = self._watch
        return JobEvent(self._job, self._ctx, watch.pool, watch.generation, outcome, seconds, error)

    def _first_report(self) -> bool:
        with self._lock:
            first, self._reported = not self._reported, True
        return first

    def end(self, outcome: str, seconds: float, error: str) -> None:
        """The worker's end of the run: after_job always, then the outcome unless abandoned."""
        hooks = self._watch.hooks
        event = self.event(outcome, seconds, error)
        if hooks is not None:
            hooks.call("after_job", hooks.after_job, event)
        first = self._first_report()
        if self._attempt is not None:
            self._attempt.end(outcome, error)  # detaches its context either way
        if first and hooks is not None:
            hooks.call("on_outcome", hooks.on_outcome, event)

    def abandoned(self, seconds: float) -> None:
        """Called at the grace deadline, off the worker: report now, wait for nothing."""
        if not self._first_report():
            return
        if self._attempt is not None:
            self._attempt.abandoned()
        hooks = self._watch.hooks
        if hooks is not None:
            event = self.event("abandoned", seconds, "still running when the grace ran out")
            hooks.call("on_outcome", hooks.on_outcome, event, wait=False)
