"""huey on Redis running the peers' jobs (run from bench/.venv-peers).

Worker: `python -m huey.bin.huey_consumer huey_app.huey -w 8 -k thread`;
everything else at huey's defaults (SIGTERM stops at once, SIGINT is graceful).
"""

from __future__ import annotations

import os

import jobs
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])
TASKS = {name: huey.task(name=name)(fn) for name, fn in jobs.JOBS.items()}


def enqueue(task: str, n: int, args: list[float]) -> None:
    fn = TASKS[task]
    for _ in range(n):
        fn(*args)  # calling a huey task enqueues it


def pending() -> int:
    """Messages left in huey's Redis list: a message is popped (gone) once a worker takes it."""
    return int(huey.pending_count())
