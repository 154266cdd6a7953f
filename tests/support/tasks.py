"""Tasks for the end-to-end tests: each appends what happened to a log with O_APPEND.

One write per line with O_APPEND is atomic on Linux for these short lines, so
several workers (and several daemons) can share one log without interleaving.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from daemon import TaskContext

_runs = 0
_runs_lock = threading.Lock()


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Log start, sleep cooperatively `seconds`, log done; fail while attempt <= `fail`."""
    log = payload["log"]
    append(log, f"start {ctx.job_id} {ctx.attempt}")
    # TEST_TIME_SCALE lets a restarted daemon finish a long queue quickly.
    scale = float(os.environ.get("TEST_TIME_SCALE", "1"))
    try:
        ctx.sleep(float(payload.get("seconds", 0)) * scale)
    except BaseException:
        append(log, f"interrupted {ctx.job_id} {ctx.attempt}")
        raise
    if ctx.attempt <= int(payload.get("fail", 0)):
        append(log, f"failed {ctx.job_id} {ctx.attempt}")
        raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")
    append(log, f"done {ctx.job_id} {ctx.attempt}")
    return "ok"


def stray(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Ignores the event: the first run in this process sleeps `first` s, later runs `later` s."""
    global _runs
    with _runs_lock:
        _runs += 1
        run = _runs
    seconds = float(payload["first"] if run == 1 else payload["later"])
    append(payload["log"], f"start {ctx.job_id} run{run}")
    time.sleep(seconds)
    append(payload["log"], f"finish {ctx.job_id} run{run}")
    return "late"


def gate(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Ignores the event and returns once the file `release` exists: the test ends it.

    A drain therefore lasts exactly as long as the test wants, which lets it look
    at the daemon while it drains without any timing assumption.
    """
    release = payload["release"]
    while not os.path.exists(release):
        time.sleep(0.01)  # test code: a short poll keeps the task free of daemon internals
    return "released"


def say(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Logs `text` through the task's own logger, which tags records with job and task."""
    ctx.logger.info("task says %s", payload["text"])
