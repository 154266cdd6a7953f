"""Tasks for the chaos, leak and limit tests: each logs what it did, with O_APPEND.

A line is `KIND JOB ATTEMPT PID N`: KIND is start, done, failed or
interrupted; N is the job's number in the test's own numbering (from the
payload), so a job can be found whatever id the queue gave it. One short
os.write per line with O_APPEND is atomic on Linux, so every worker of every
daemon lifetime can share one log.
"""

from __future__ import annotations

import os
import time
from typing import Any

from drainpool import Interrupted, TaskContext

from tests.support.tasks import append


def _line(ctx: TaskContext, payload: dict[str, Any], kind: str) -> None:
    append(payload["log"], f"{kind} {ctx.job_id} {ctx.attempt} {os.getpid()} {payload['n']}")


def _work(ctx: TaskContext, payload: dict[str, Any], *, cooperative: bool) -> str:
    """Log start; wait `seconds` (on the event, or not at all); fail while attempt <= `fail`."""
    _line(ctx, payload, "start")
    seconds = float(payload.get("seconds", 0))
    if cooperative:
        try:
            ctx.sleep(seconds)
        except Interrupted:
            _line(ctx, payload, "interrupted")
            raise
    else:
        time.sleep(seconds)  # ignores the event on purpose: abandoned at the grace deadline
    if ctx.attempt <= int(payload.get("fail", 0)):
        _line(ctx, payload, "failed")
        raise RuntimeError(f"chaos: failing attempt {ctx.attempt} on purpose")
    _line(ctx, payload, "done")
    return "ok"


def coop(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Short and cooperative."""
    return _work(ctx, payload, cooperative=True)


# The same function under a second name: a config that switches `coop` between the two
# references changes the task's source, which restarts its pool at a reload.
coop_again = coop


def slow(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Long and cooperative: usually the one a drain interrupts."""
    return _work(ctx, payload, cooperative=True)


def flaky(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Fails its first `fail` attempts (always, with a large `fail`): retried, maybe dead."""
    return _work(ctx, payload, cooperative=True)


def stubborn(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Never looks at the event: a drain that outlasts the grace abandons it."""
    return _work(ctx, payload, cooperative=False)
