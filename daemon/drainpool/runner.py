"""How a pool's worker runs a job: on the worker thread itself, or in a child process.

The Pool (drainpool.pool) owns what every kind shares: the dispatcher, the
job bookkeeping, the drain and the metrics. A Runner owns only what differs
by `pool.kind`: the handler a worker calls for each task, what a worker
thread holds while it lives (nothing, or a child process), and what a drain
and an abandon do to it. The pool calls it; it knows nothing of the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from drainpool.tasks import TaskSpec


class Runner(Protocol):
    """What a pool asks of the way its jobs run."""

    # The least time a pool's join gives its worker threads (closing a child takes a moment).
    join_seconds: float
    # Whether a job may run on any of the pool's threads: then they take turns listening
    # (leader/follower, drainpool.pool). False when each worker thread owns what runs it.
    any_thread: bool

    def prepare(self, label: str, tasks: Mapping[str, TaskSpec]) -> dict[str, TaskSpec]:
        """The tasks as the workers will call them; `label` names threads and log lines."""
        ...

    def ends(self, task: str) -> bool:
        """Whether kill() ends a run of this task (a child can be killed, a thread cannot).

        The pool counts as drained only once each such abandoned run has ended
        or been given up.
        """
        ...

    def worker(self) -> contextlib.AbstractContextManager[None]:
        """Held by each worker thread around its whole loop."""
        ...

    def drain_begun(self) -> None:
        """The pool's shutdown event was just set."""
        ...

    def kill(self, job_ids: set[str], given_up: Callable[[set[str]], None]) -> None:
        """End the runs of these abandoned jobs; return at once (never blocks the caller).

        `given_up` is called with the ids whose run could not be ended, so the
        pool stops waiting for them.
        """
        ...

    def join(self, deadline: float) -> None:
        """Wait, until the monotonic `deadline`, for the runner's own threads."""
        ...

    def children(self) -> int:
        """Child processes not yet reaped."""
        ...

    def describe(self, snapshot: dict[str, Any]) -> None:
        """Add what this kind knows to a pool's snapshot (the status API)."""
        ...


class ThreadRunner:
    """Each job runs on its worker thread; an abandoned one is left to finish on its own."""

    join_seconds = 0.0
    any_thread = True

    def prepare(self, label: str, tasks: Mapping[str, TaskSpec]) -> dict[str, TaskSpec]:
        return dict(tasks)

    def ends(self, task: str) -> bool:
        return False

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        yield

    def drain_begun(self) -> None:
        """The shutdown event is all a thread's task sees: nothing to forward."""

    def kill(self, job_ids: set[str], given_up: Callable[[set[str]], None]) -> None:
        """A Python thread cannot be killed; the pool does not wait for it (ends is False)."""

    def join(self, deadline: float) -> None:
        """No thread of its own."""

    def children(self) -> int:
        return 0

    def describe(self, snapshot: dict[str, Any]) -> None:
        """A thread pool's snapshot says all there is."""


def runner_for(kind: str) -> Runner:
    """The runner of a `pool.kind`: "thread" or "process"."""
    if kind == "process":
        from drainpool.procpool import ProcessRunner  # children, pipes: process pools only

        return ProcessRunner()
    return ThreadRunner()
