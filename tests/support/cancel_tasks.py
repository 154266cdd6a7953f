"""Tasks for the cancel and time-limit tests (issue 19): each logs why it was asked to stop.

Lines go to payload["log"] with O_APPEND (tests.support.tasks.append):
`start JOB ATTEMPT PID`, then `stopped JOB ATTEMPT REASON` or `done JOB ATTEMPT`.
"""

from __future__ import annotations

import os
from typing import Any

from drainpool import Interrupted, TaskContext

from tests.support.tasks import append


def wait_stop(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Sleep on the job's own signal; log the reason it was stopped for (ctx.stop_reason)."""
    append(payload["log"], f"start {ctx.job_id} {ctx.attempt} {os.getpid()}")
    try:
        ctx.sleep(float(payload.get("seconds", 60)))
    except Interrupted:
        append(payload["log"], f"stopped {ctx.job_id} {ctx.attempt} {ctx.stop_reason}")
        raise
    append(payload["log"], f"done {ctx.job_id} {ctx.attempt}")
    return "ok"


async def async_wait_stop(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """The async twin of wait_stop: cancelled at its await."""
    import asyncio

    append(payload["log"], f"start {ctx.job_id} {ctx.attempt} {os.getpid()}")
    try:
        await asyncio.sleep(float(payload.get("seconds", 60)))
    except BaseException:
        append(payload["log"], f"stopped {ctx.job_id} {ctx.attempt} {ctx.stop_reason}")
        raise
    append(payload["log"], f"done {ctx.job_id} {ctx.attempt}")
    return "ok"
