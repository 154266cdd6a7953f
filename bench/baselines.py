"""The raw limits, measured in the same run: a bare thread pool and bare SQLite commits.

These bound what any daemon on this machine can do, so the daemon's figures
are read as a share of them rather than as absolute numbers.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import bodies
from context import Context
from results import Metric

SECTION = "baselines"
WORKERS = 8


class _Count:
    """The same in-process completion count as the daemon's adapters (a locked counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.n = 0

    def done(self) -> None:
        with self._lock:
            self.n += 1


def _pool_rate(body: Callable[[], None], n: int) -> float:
    """Jobs/s of ThreadPoolExecutor(8) running `n` jobs submitted up front, no queue."""
    count = _Count()

    def job() -> None:
        body()
        count.done()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        start = time.monotonic()
        futures = [pool.submit(job) for _ in range(n)]
        wait(futures)
        took = time.monotonic() - start
    assert count.n == n
    return n / took


def thread_pool(ctx: Context) -> None:
    s = ctx.sizes
    for _ in range(s.reps):
        ctx.results.add(
            Metric(
                "tpe.noop", SECTION, f"ThreadPoolExecutor(8), no-op ({s.tpe_jobs:,} jobs)", "jobs/s"
            ),
            _pool_rate(bodies.noop, s.tpe_jobs),
        )
        ctx.results.add(
            Metric(
                "tpe.10ms",
                SECTION,
                f"ThreadPoolExecutor(8), 10 ms ({s.sleep_jobs:,} jobs)",
                "jobs/s",
            ),
            _pool_rate(bodies.sleep_10ms, s.sleep_jobs),
        )


def _sqlite_rate(path: str, synchronous: str, n: int) -> float:
    """One INSERT and one DELETE per job, each in its own committed transaction (WAL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, task TEXT, payload TEXT)")
        start = time.monotonic()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute("INSERT INTO jobs (task, payload) VALUES ('job', '{}')")
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM jobs WHERE id = ?", (cur.lastrowid,))
            conn.execute("COMMIT")
        return n / (time.monotonic() - start)
    finally:
        conn.close()


def sqlite_raw(ctx: Context) -> None:
    """The disk's bound for a SQLite queue: synchronous=NORMAL (the daemon's consumer
    connection) and FULL (producers' durability, an fsync per commit)."""
    s = ctx.sizes
    directory = ctx.work / "sqlite-raw"
    for _ in range(s.reps):
        for synchronous, n in (("NORMAL", s.sqlite_jobs), ("FULL", max(s.sqlite_jobs // 20, 200))):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            rate = _sqlite_rate(str(directory / "raw.db"), synchronous, n)
            ctx.results.add(
                Metric(
                    f"sqlite.{synchronous.lower()}",
                    SECTION,
                    f"SQLite WAL insert+delete, a commit each, "
                    f"synchronous={synchronous} ({n:,} jobs)",
                    "jobs/s",
                ),
                rate,
            )
    ctx.results.note(
        "sqlite-raw",
        f"database in {directory} (the daemon's queues are beside it); "
        f"SQLite {sqlite3.sqlite_version}",
    )
