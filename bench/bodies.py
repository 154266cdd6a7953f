"""The task bodies every system in the bench runs: written once, imported by all.

drainpool's adapters (bench/drainpool_tasks.py) and each peer's app module
(bench/peers/*_app.py) call these functions and only add their own way of
reporting completion, so a rate difference is the framework's cost, not the
work's. Standard library only: the peers' virtual environment imports it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SLEEP_SECONDS = 0.010  # the "10 ms job" of the issue


def noop() -> None:
    """Do nothing: the job rate is then the framework's own overhead per job."""


def sleep_10ms() -> None:
    """Block for 10 ms, as an I/O-bound job would; 8 workers top out at 800 jobs/s."""
    time.sleep(SLEEP_SECONDS)


def hold(seconds: float, wait: Callable[[float], object] = time.sleep) -> None:
    """Stay busy for `seconds`: the in-flight job of the SIGTERM scenario.

    `wait` is the only difference between systems: drainpool passes its
    cooperative `ctx.sleep` (which returns early by raising Interrupted when a
    drain begins); the peers have no such hook and block in `time.sleep`.
    """
    wait(seconds)
