"""pgqueuer on PostgreSQL running the peers' jobs (run from bench/.venv-peers).

Worker: `python -m pgqueuer_app`, which is `pgqueuer.run(create)`, what its
`pgq run pgqueuer_app:create` command calls (that command fails at start with
this typer, on its --log-level default), on its asyncpg driver, at its defaults
(batches of 10, no cap on jobs picked, SIGTERM waits for running jobs).
pgqueuer runs only `async def` entrypoints; each one here hands the shared body
to a pool of 8 threads, the 8 workers the other systems run.

The bench's enqueue starts from an empty queue, as the Redis peers' flush does:
the tables are created on first use and emptied before each enqueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import jobs
import pgqueuer
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job

THREADS = ThreadPoolExecutor(8)


def _entry(fn: Callable[..., None]) -> Callable[[Job], Awaitable[None]]:
    async def run(job: Job) -> None:
        args = json.loads(job.payload or b"[]")
        await asyncio.get_running_loop().run_in_executor(THREADS, fn, *args)

    return run


@contextlib.asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ["BENCH_PG_URL"])
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))
        for name, fn in jobs.JOBS.items():
            pgq.entrypoint(name)(_entry(fn))
        yield pgq
    finally:
        await connection.close()


async def _enqueue(task: str, n: int, args: list[float]) -> None:
    connection = await asyncpg.connect(os.environ["BENCH_PG_URL"])
    try:
        queries = Queries(AsyncpgDriver(connection))
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.clear_queue()
        await queries.clear_queue_log()
        body = json.dumps(args).encode()
        await queries.enqueue([task] * n, [body] * n, [0] * n)
    finally:
        await connection.close()


def enqueue(task: str, n: int, args: list[float]) -> None:
    """n jobs in one enqueue call (pgqueuer's bulk form: lists of entrypoints and payloads)."""
    asyncio.run(_enqueue(task, n, args))


async def _pending() -> int:
    connection = await asyncpg.connect(os.environ["BENCH_PG_URL"])
    try:
        # A finished job leaves the table (for the log): what is left is queued or picked,
        # and a picked job whose worker stopped its heartbeat is picked again.
        return int(await connection.fetchval("SELECT count(*) FROM pgqueuer"))
    finally:
        await connection.close()


def pending() -> int:
    return asyncio.run(_pending())


if __name__ == "__main__":
    asyncio.run(pgqueuer.run(create))
