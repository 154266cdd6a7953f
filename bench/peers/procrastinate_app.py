"""procrastinate on PostgreSQL running the peers' jobs (run from bench/.venv-peers).

Worker: `python -m procrastinate_app`, which is `app.run_worker_async(concurrency=8)`
on an event loop whose default executor has 8 threads: procrastinate runs a
synchronous task in that executor, whose own default (cores + 4 threads) would
be 6 here and cap the 8 jobs the others run at once. Everything else is at
procrastinate's defaults: LISTEN/NOTIFY on, finished jobs kept as rows, and a
SIGTERM waits for the running jobs with no time limit.

The bench's enqueue starts from an empty queue, as the Redis peers' flush does:
the tables are created on first use and emptied before each enqueue.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from concurrent.futures import ThreadPoolExecutor

import jobs
import procrastinate
import psycopg

THREADS = 8
app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("BENCH_PG_URL", ""))
)
TASKS = {name: app.task(name=name)(fn) for name, fn in jobs.JOBS.items()}


def _reset() -> None:
    with psycopg.connect(os.environ["BENCH_PG_URL"], autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
        if found is None or found[0] is None:
            app.schema_manager.apply_schema()
        else:
            conn.execute("TRUNCATE procrastinate_jobs, procrastinate_events CASCADE")


def enqueue(task: str, n: int, args: list[float]) -> None:
    """n jobs in one batch_defer (procrastinate's bulk call): a task takes keyword arguments."""
    fn = TASKS[task]
    kwargs = dict(zip(inspect.signature(jobs.JOBS[task]).parameters, args, strict=False))
    with app.open():
        _reset()
        fn.batch_defer(*([kwargs] * n))


def pending() -> int:
    """Jobs a worker would start: `todo`. A `doing` job whose worker is gone waits for a
    stalled-jobs sweep, which procrastinate leaves to the operator."""
    with psycopg.connect(os.environ["BENCH_PG_URL"]) as conn:
        row = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
        return int(row.fetchone()[0])


async def _work() -> None:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(THREADS))
    async with app.open_async():
        await app.run_worker_async(concurrency=THREADS)


if __name__ == "__main__":
    asyncio.run(_work())
