"""What the daemon says about itself: the status line, /api/status, the SIGUSR1 dump.

Built from a source object (the supervisor, through `StatusSource`), as the
console reads its ConsoleSource, so the supervisor only decides and this
module only describes. `document()` runs on the HTTP thread, never the loop.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any, Protocol

from drainpool.queue_monitor import QueueMonitor
from drainpool.reloads import ReloadRecord
from drainpool.settings import LoadedConfig


class _PoolConfig(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def workers(self) -> int: ...


class _Pool(Protocol):
    @property
    def config(self) -> _PoolConfig: ...

    @property
    def generation(self) -> int: ...

    def snapshot(self) -> dict[str, Any]: ...


class StatusSource(Protocol):
    """What the status documents read; the supervisor provides it."""

    @property
    def phase(self) -> enum.Enum: ...

    @property
    def pools(self) -> Mapping[str, _Pool]: ...

    @property
    def generations(self) -> Mapping[str, int]: ...

    @property
    def loaded(self) -> LoadedConfig: ...

    @property
    def reload_record(self) -> ReloadRecord: ...

    @property
    def queue_monitor(self) -> QueueMonitor: ...

    @property
    def started_at(self) -> float: ...

    def ready(self) -> bool: ...


def running_line(source: StatusSource) -> str:
    """The log line of a daemon that has started: its pid, pools and config file."""
    pools = ", ".join(f"{n} ({p.config.workers} workers)" for n, p in source.pools.items())
    return f"running: pid {os.getpid()}, pools {pools}, config {source.loaded.path}"


def status_line(source: StatusSource, state: str | None = None) -> str:
    """One line for sd_notify's STATUS= and the logs."""
    pools = list(source.pools.values())
    in_flight = sum(len(p.snapshot()["running"]) for p in pools)
    workers = sum(p.config.workers for p in pools)
    generation = max(source.generations.values(), default=0)
    return (
        f"{state or source.phase.value}: generation {generation}, {workers} workers,"
        f" {in_flight} in flight"
    )


def document(source: StatusSource) -> dict[str, Any]:
    """The /api/status document; it answers even when the queue cannot."""
    monitor = source.queue_monitor
    record = source.reload_record
    queue, problem = None, monitor.problem
    try:
        queue = monitor.stats().as_dict()
    except Exception as exc:  # the answer must come even when the queue cannot
        problem = problem or f"{type(exc).__name__}: {exc}"
    return {
        "pid": os.getpid(),
        "state": source.phase.value,
        "ready": source.ready(),
        "queue_ok": monitor.ok,
        "queue_problem": problem,
        "queue": queue,
        "config": str(source.loaded.path),
        "started_at": source.started_at,
        "pools": [p.snapshot() for p in list(source.pools.values())],
        "reload": {
            "seq": record.seq,
            "result": record.result,
            "message": record.message,
            "source": record.source,
            "at": record.at,
        },
    }


def state_dump(source: StatusSource) -> str:
    """SIGUSR1: every running task, its job, its run time, and every thread's stack."""
    lines = [f"state dump: {status_line(source)}"]
    for pool in list(source.pools.values()):
        for r in pool.snapshot()["running"]:
            lines.append(
                f"  pool {pool.config.name} g{pool.generation}: job {r['job_id']}"
                f" task {r['task']} attempt {r['attempt']}"
                f" running {r['seconds']:.1f}s on {r['thread']}"
                + (
                    f", asked to stop ({r['stop_reason']}) {r['stopping_seconds']:.1f}s ago"
                    if r.get("stop_reason")
                    else ""
                )
            )
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"  thread {names.get(ident, ident)}:")
        lines.extend("    " + line.rstrip() for line in traceback.format_stack(frame))
    return "\n".join(lines)
