"""What a pool does around each attempt for the application: its hooks and its trace span.

A pool with neither has no `JobWatch` at all (None), so the worker's path for
it is one `is None` test per job; everything here runs only when configured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from drainpool.context import JobStop, StopReason, TaskContext, task_logger
from drainpool.hooks import Hooks, JobEvent
from drainpool.outcomes import Outcome
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


def _attempt_class() -> Any:
    from drainpool.tracing import Attempt  # only once tracing is on

    return Attempt


class JobWatch:
    """One pool generation's hooks and tracer."""

    def __init__(self, pool: str, generation: int, hooks: Hooks | None, tracer: Any) -> None:
        self.pool = pool
        self.generation = generation
        self.hooks = hooks
        self.tracer = tracer
        self._attempt = None if tracer is None else _attempt_class()
        self._reporting: list[threading.Thread] = []  # on_outcome of jobs that never started

    def begin(self, job: Job, ctx: TaskContext) -> Watching:
        """Called by the worker before the task: the span starts, then before_job runs."""
        attempt = None
        if self._attempt is not None:
            attempt = self._attempt(self.tracer, job, self.pool, self.generation)
            if self.hooks is None:
                return attempt  # reports itself once: one object and three calls less per job
        watched = Watched(self, job, ctx, attempt)
        if self.hooks is not None:
            self.hooks.call("before_job", self.hooks.before_job, watched.event())
        return watched

    def never_started(self, jobs: Iterable[Job], outcome: str) -> None:
        """Jobs handed to the pool and dropped before they started: on_outcome, once each.

        A drain cancels the reserve (outcome cancelled), a cancel by id drops a
        reserved job (aborted). No span: no attempt ran. The hook's `ctx` is
        already stopped, its `stop_reason` saying why; it is not waited for.
        """
        hooks = self.hooks
        if hooks is None or hooks.on_outcome is None:
            return
        reason: StopReason = "drain" if outcome == Outcome.CANCELLED else "cancel"
        events = []
        for job in jobs:
            stop = JobStop()
            stop.set(reason)
            ctx = TaskContext(job.id, job.attempt, job.task, task_logger(job.task, job.id), stop)
            events.append(JobEvent(job, ctx, self.pool, self.generation, outcome, None, ""))
        if not events:
            return

        def report() -> None:
            for event in events:
                hooks.call("on_outcome", hooks.on_outcome, event)  # each within the grace

        # Off the caller (the supervisor's drain, the job watch), and joined by the pool's
        # join: a stop that exits right after the drain still reports them.
        thread = threading.Thread(target=report, name=f"{self.pool}-unstarted-hooks", daemon=True)
        thread.start()
        self._reporting.append(thread)

    def join(self, deadline: float) -> None:
        """Wait, until `deadline` (monotonic), for the hooks of jobs that never started."""
        for thread in self._reporting:
            thread.join(max(deadline - time.monotonic(), 0))


class Watching(Protocol):
    """What the worker and the abandon call: a Watched, or a tracing.Attempt alone."""

    def end(self, outcome: str, seconds: float, error: str) -> None: ...

    def abandoned(self, seconds: float) -> None: ...


class Watched:
    """One attempt under watch; its outcome is reported once (by the worker or the abandon)."""

    __slots__ = ("_attempt", "_ctx", "_job", "_unreported", "_watch")

    def __init__(self, watch: JobWatch, job: Job, ctx: TaskContext, attempt: Any) -> None:
        self._watch = watch
        self._job = job
        self._ctx = ctx
        self._attempt = attempt
        # Taken once by list.pop, atomic without a lock: a lock shared by the pool's workers,
        # taken once per job, was one more place for them to queue up behind each other.
        self._unreported = [True]

    def event(
        self, outcome: str | None = None, seconds: float | None = None, error: str = ""
    ) -> JobEvent:
        watch = self._watch
        return JobEvent(self._job, self._ctx, watch.pool, watch.generation, outcome, seconds, error)

    def _first_report(self) -> bool:
        try:
            return self._unreported.pop()
        except IndexError:
            return False

    def end(self, outcome: str, seconds: float, error: str) -> None:
        """The worker's end of the run: after_job always, then the outcome unless abandoned."""
        hooks = self._watch.hooks
        event = None
        if hooks is not None:
            event = self.event(outcome, seconds, error)
            hooks.call("after_job", hooks.after_job, event)
        first = self._first_report()
        if self._attempt is not None:
            self._attempt.detach()  # on the worker's thread, reported or not
            if first:
                self._attempt.close(outcome, error)
        if first and hooks is not None and event is not None:
            hooks.call("on_outcome", hooks.on_outcome, event)

    def abandoned(self, seconds: float) -> None:
        """Called at the grace deadline, off the worker: report now, wait for nothing."""
        if not self._first_report():
            return
        if self._attempt is not None:
            self._attempt.close("abandoned", "still running when the grace ran out")
        hooks = self._watch.hooks
        if hooks is not None:
            event = self.event("abandoned", seconds, "still running when the grace ran out")
            hooks.call("on_outcome", hooks.on_outcome, event, wait=False)
