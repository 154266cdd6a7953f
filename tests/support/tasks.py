"""Tasks for the end-to-end tests: each appends what happened to a log with O_APPEND.

One write per line with O_APPEND is atomic on Linux for these short lines, so
several workers (and several daemons) can share one log without interleaving.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from drainpool import TaskContext

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


# -- tasks for process workers, async tasks and command tasks (the non-cooperative issue) --


def whoami(ctx: TaskContext, payload: dict[str, Any]) -> int:
    """Log which process ran the job: `pid JOB PID`, then `parent JOB PPID`."""
    append(payload["log"], f"pid {ctx.job_id} {os.getpid()}")
    append(payload["log"], f"parent {ctx.job_id} {os.getppid()}")
    return os.getpid()


def spin(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """CPU-bound and never checks the context: only killing its process stops it early."""
    if payload.get("ignore_sigterm"):
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # in a process worker: its main thread
    append(payload["log"], f"start {ctx.job_id} {os.getpid()}")
    end = time.monotonic() + float(payload.get("seconds", 3600))
    n = 0
    while time.monotonic() < end:
        n += 1
    append(payload["log"], f"done {ctx.job_id} {os.getpid()}")
    return "spun"


def crash(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Kill the worker process: `how` is "segv" (a real segfault) or "exit" (os._exit(code))."""
    append(payload["log"], f"start {ctx.job_id} {os.getpid()}")
    if payload["how"] == "segv":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    os._exit(int(payload.get("code", 3)))


async def async_record(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """The async twin of `record`: `await ctx.sleep(seconds)`, logging start/done/interrupted."""
    import asyncio

    log = payload["log"]
    append(log, f"start {ctx.job_id} {os.getpid()}")
    try:
        await asyncio.sleep(0)  # a real await before the cancellable one
        await ctx.sleep(float(payload.get("seconds", 0)))  # type: ignore[func-returns-value]
    except BaseException as exc:
        append(log, f"interrupted {ctx.job_id} {type(exc).__name__}")
        raise
    append(log, f"done {ctx.job_id} {os.getpid()}")
    return "ok"


def unjsonable(ctx: TaskContext, payload: Any) -> set[int]:
    """Returns what JSON cannot hold: a process worker sends its repr back instead."""
    return {1, 2}


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


# -- tasks whose return values the job-records tests read back --


def echo(ctx: TaskContext, payload: dict[str, Any]) -> Any:
    """Return `value` as it came (a JSON value), or `size` characters of 'x'."""
    if "size" in payload:
        return "x" * int(payload["size"])
    return payload.get("value")


async def async_echo(ctx: TaskContext, payload: dict[str, Any]) -> Any:
    return {"async": payload.get("value")}


def leave_thread(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Start a non-daemon thread that outlives the job (and any drain), then return."""
    threading.Thread(target=time.sleep, args=(3600,), name="left-by-a-task", daemon=False).start()
    return "left"
