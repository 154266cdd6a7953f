"""The SQLite queue alone, in process: what one dispatcher round costs at each depth.

The daemon's rates at depth mix the queue's work with eight threads taking
turns at the GIL on a shared machine, where one run can be three times
another. This times only the queue's part of a round (settle the last jobs,
claim the next, one transaction) in one thread, by CPU time, so a depth effect
in SQLite shows apart from that noise.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from context import Context
from results import Metric

SECTION = "drainpool"
ROUND = 264  # jobs a round moves with 8 workers and a full "auto" reserve (8 + 256)
ROUNDS = 12  # timed rounds per run, after the first fetch
TASK = "job"


def _fill(path: Path, depth: int) -> None:
    from drainpool.queue.sqlite import SqliteQueue  # the tree under test, imported when used

    queue = SqliteQueue(path, durable_commits=False)
    try:
        for start in range(0, depth, 100_000):
            queue.enqueue_many((TASK, {}) for _ in range(min(100_000, depth - start)))
    finally:
        queue.close()


def _round_ms(path: Path) -> float:
    """Median CPU time of a round on a fresh connection, as a daemon just started has."""
    from drainpool.queue.sqlite import SqliteQueue

    queue = SqliteQueue(path, durable_commits=False)
    try:
        jobs = queue.fetch(ROUND, [TASK], 60.0)
        times = []
        for _ in range(ROUNDS):
            began = time.thread_time()
            jobs = queue.settle_and_fetch(jobs, [], [], ROUND, [TASK], 60.0)
            times.append(time.thread_time() - began)
            queue.enqueue_many((TASK, {}) for _ in range(ROUND))  # back to the depth, untimed
        queue.settle(acks=jobs)
    finally:
        queue.close()
    return statistics.median(times) * 1000


def rounds(ctx: Context) -> None:
    """Settle + claim rounds of 264 jobs at the smallest and largest depth, interleaved."""
    s = ctx.sizes
    depths = (min(s.depths), max(s.depths))
    directory = ctx.work / "queue-rounds"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    try:
        files = {d: directory / f"queue-{d}.db" for d in depths}
        for d, path in files.items():
            _fill(path, d)
        for rep in range(s.reps):
            for d in depths if rep % 2 == 0 else depths[::-1]:
                ctx.results.add(
                    Metric(
                        f"drainpool.queue_round.{d}",
                        SECTION,
                        f"SQLite queue alone, one thread: settle + claim {ROUND} jobs,"
                        f" {d:,} queued, CPU time",
                        "ms",
                        3,
                    ),
                    _round_ms(files[d]),
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
