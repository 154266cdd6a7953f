"""Job hooks: the application's functions called in the worker around each job.

`[hooks]` names up to three "module:function"s: `before_job` and `after_job`
around each run (per-job resources, audit logs), `on_outcome` once the pool
has classified the attempt (custom metrics). Each gets one `JobEvent`.

A hook is the application's code running inside the daemon's contract, so it
must never change a job's outcome nor hold a worker past the drain: an
exception is logged and dropped, and each call runs on a thread of its own
that the worker waits for at most the pool's grace.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from drainpool.context import TaskContext
from drainpool.queue.base import Job
from drainpool.refs import import_ref
from drainpool.settings import ConfigError, HooksSettings, LoadedConfig

log = logging.getLogger("drainpool.hooks")

HOOK_NAMES = ("before_job", "after_job", "on_outcome")


@dataclass(frozen=True, slots=True)
class JobEvent:
    """What a hook is told: the job, its context, and (after the run) how it ended."""

    job: Job
    ctx: TaskContext
    pool: str
    generation: int
    outcome: str | None = None  # an Outcome value; None before the run
    seconds: float | None = None
    error: str = ""


Hook = Callable[[JobEvent], object]


def check(loaded: LoadedConfig) -> None:
    """Import every configured hook; ConfigError names each one that fails."""
    problems = []
    for name in HOOK_NAMES:
        ref = getattr(loaded.settings.hooks, name)
        if ref is None:
            continue
        try:
            import_ref(ref)
        except ValueError as exc:
            problems.append(f"{loaded.where('hooks', name)}: hooks.{name}: {exc}")
    if problems:
        raise ConfigError(problems)


def refs_of(settings: HooksSettings) -> tuple[tuple[str, str], ...]:
    """(hook name, ref) of the configured hooks: what a pool's plan carries."""
    return tuple((name, ref) for name in HOOK_NAMES if (ref := getattr(settings, name)) is not None)


class Hooks:
    """A pool's resolved hooks, each called on its own thread within a bound."""

    def __init__(self, refs: tuple[tuple[str, str], ...], bound_seconds: float) -> None:
        resolved = {name: import_ref(ref) for name, ref in refs}  # checked at config load
        self.before_job: Hook | None = resolved.get("before_job")
        self.after_job: Hook | None = resolved.get("after_job")
        self.on_outcome: Hook | None = resolved.get("on_outcome")
        self._bound = bound_seconds

    def call(self, name: str, hook: Hook | None, event: JobEvent, *, wait: bool = True) -> None:
        """Run `hook(event)`; wait for it up to the bound (or not at all), never raise."""
        if hook is None:
            return

        def run() -> None:
            try:
                hook(event)
            except BaseException:  # a hook's failure is logged, and the job goes on
                log.exception("hook %s failed for job %s (%s)", name, event.job.id, event.job.task)

        thread = threading.Thread(target=run, name=f"hook-{name}-{event.job.id}", daemon=True)
        thread.start()
        if not wait:
            return
        thread.join(self._bound)
        if thread.is_alive():
            log.warning(
                "hook %s still runs for job %s after %.1fs (the grace): the worker goes on"
                " without it",
                name,
                event.job.id,
                self._bound,
            )
