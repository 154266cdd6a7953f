"""drainpool's adapters for the shared bodies: `[tasks] name = "drainpool_tasks:fn"`.

The daemon imports this module (the bench puts bench/ on its PYTHONPATH) and
calls each function as a task, `(ctx, payload) -> result`. Each adapter runs
the shared body from bench/bodies.py and reports completion:
- noop, sleep_10ms, hold: in process, by datagram to the bench (no Redis in
  the path of the daemon on SQLite);
- noop_incr, sleep_10ms_incr: one Redis INCR per job, exactly as the peers
  count, for the "same task bodies" comparison with them;
- stamp: waits `payload["seconds"]`, then returns its CLOCK_MONOTONIC time as
  its result, for the wait() latency of bench/record_scenarios.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bodies
from completion import DatagramCounter, RedisCounter

_datagrams = DatagramCounter()
_redis = RedisCounter()

# ctx is the daemon's TaskContext; typed loosely so this module never imports the daemon.
Task = Callable[[Any, Any], None]


def _adapter(name: str, body: Callable[[], None], counter: DatagramCounter | RedisCounter) -> Task:
    def task(ctx: Any, payload: Any) -> None:
        body()
        counter.done()

    task.__name__ = task.__qualname__ = name  # what the daemon's logs and tracebacks show
    return task


noop = _adapter("noop", bodies.noop, _datagrams)
sleep_10ms = _adapter("sleep_10ms", bodies.sleep_10ms, _datagrams)
noop_incr = _adapter("noop_incr", bodies.noop, _redis)
sleep_10ms_incr = _adapter("sleep_10ms_incr", bodies.sleep_10ms, _redis)


def stamp(ctx: Any, payload: Any) -> None:
    """The pickup-latency job: its start time, and nothing else (bench/wakeup_scenarios.py)."""
    _redis.stamp(payload["seq"])


def hold(ctx: Any, payload: Any) -> None:
    """In flight until a drain: ctx.sleep raises Interrupted, so the job is released."""
    _datagrams.started()
    bodies.hold(float(payload["seconds"]), ctx.sleep)
    _datagrams.done()


def finish_stamp(ctx: Any, payload: Any) -> dict[str, float]:
    """The job a producer waits on: its result is the time it finished (one clock per host)."""
    ctx.sleep(float(payload["seconds"]))
    return {"finished": time.monotonic()}
