"""The peers' jobs: the shared bodies plus one Redis INCR each, before any framework wraps them.

Each peer's app module registers these same three functions under the same
names with its own decorator, so the three peers run identical code per job.
"""

from __future__ import annotations

import bodies
from completion import RedisCounter

counter = RedisCounter()


def noop() -> None:
    bodies.noop()
    counter.done()


def sleep_10ms() -> None:
    bodies.sleep_10ms()
    counter.done()


def hold(seconds: float) -> None:
    counter.started()
    bodies.hold(seconds)
    counter.done()


def stamp(seq: float) -> None:
    """The pickup-latency job: its start time, and nothing else."""
    counter.stamp(seq)


JOBS = {"noop": noop, "sleep_10ms": sleep_10ms, "hold": hold, "stamp": stamp}
