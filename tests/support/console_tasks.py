"""Tasks for the console tests: a job that holds a worker until a gate file exists,
and one that fails with a chosen error until a "fixed" file exists.

Retrying a dead job resets its attempt count, so a task that fails by attempt
number would fail again after a retry; these depend on files the test creates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drainpool import TaskContext

from tests.support.tasks import append

GATE_POLL_SECONDS = 0.05


def hold(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Occupy a worker until payload["gate"] exists; interruptible like any task."""
    append(payload["log"], f"start {ctx.job_id} {ctx.attempt}")
    gate = Path(payload["gate"])
    while not gate.exists():
        ctx.sleep(GATE_POLL_SECONDS)  # raises Interrupted at a drain
    append(payload["log"], f"done {ctx.job_id} {ctx.attempt}")
    return "released"


class ChosenError(RuntimeError):
    """The error a test asked for, with its exact text."""


def flaky(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Raise ChosenError(payload["error"]) unless payload["fixed"] exists."""
    append(payload["log"], f"start {ctx.job_id} {ctx.attempt}")
    if not Path(payload["fixed"]).exists():
        append(payload["log"], f"failed {ctx.job_id} {ctx.attempt}")
        raise ChosenError(payload["error"])
    append(payload["log"], f"done {ctx.job_id} {ctx.attempt}")
    return "fixed"
