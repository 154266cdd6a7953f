"""Job records (issue 18): what keeping a record per job costs, and how soon wait() returns.

- records-retention: no-op jobs/s with queue.retention_seconds = 86400 and = 0,
  in interleaved runs on fresh queues, on SQLite and on Redis;
- records-depth: no-op jobs/s over 1,000 queued jobs with a million completed
  records beside them, against none (SQLite);
- records-wait: wait() return latency after the job finished, on both backends;
- records-size: SQLite bytes per retained no-op record (bench/record_size.py).

The daemon runs through its command line as in bench/drainpool_scenarios.py;
the retained records are written by one SQL statement, the producer that waits
is a process of its own (bench/wait_probe.py).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from context import BENCH, Context
from drainpool_cli import Drainpool, config_text, jobs_file, steady_rate, wait_done
from drainpool_scenarios import fresh_dir, jobs_timeout, window_rate
from harness import BenchError, inbox, run_checked
from results import Metric

SECTION = "records"
RETENTIONS = (0, 86_400)
DEPTH_QUEUED = 1_000  # the "beside 1,000 queued"
DEPTH_RETENTION = 86_400


def _metric(key: str, label: str, unit: str, digits: int = 0) -> Metric:
    return Metric(f"records.{key}", SECTION, label, unit, digits)


def retention(ctx: Context) -> None:
    """No-op jobs/s, retention 86400 against 0, alternating which goes first, per backend."""
    s = ctx.sizes
    n = s.noop_jobs
    for backend in ("sqlite", "redis"):
        for rep in range(s.reps):
            order = RETENTIONS if rep % 2 == 0 else RETENTIONS[::-1]
            for kept in order:
                sustained, from_start = _noop_run(ctx, backend, kept, n)
                ctx.results.add(
                    _metric(
                        f"noop.{backend}.{kept}",
                        f"no-op, {backend}, retention_seconds = {kept}, sustained ({n:,} jobs)",
                        "jobs/s",
                    ),
                    sustained,
                )
                ctx.results.add(
                    _metric(
                        f"noop.{backend}.{kept}.from_start",
                        f"no-op, {backend}, retention_seconds = {kept}, start to last done",
                        "jobs/s",
                    ),
                    from_start,
                )
    ctx.results.note(
        "records-retention",
        "each run on a fresh queue (SQLite: a new file; Redis: FLUSHALL), the two retentions"
        " alternating which runs first; counted in process (datagrams), as drainpool-noop",
    )


def _noop_run(ctx: Context, backend: str, kept: int, n: int) -> tuple[float, float]:
    """One run of `n` queued no-op jobs: (sustained jobs/s, start to last done jobs/s)."""
    directory = fresh_dir(ctx, f"records-{backend}")
    url = _empty_queue_url(ctx, backend, directory)
    dp = Drainpool(ctx, directory, config_text({"job": "noop"}, url=url, retention_seconds=kept))
    dp.check()
    dp.enqueue_file(jobs_file(ctx, "job", n))
    with inbox("notify") as notify, inbox("events") as events:
        child = dp.start(notify, events=events, expect=n)
        try:
            done = wait_done(events, child, n, timeout=jobs_timeout(n))
        finally:
            dp.stop(child)
    steady = steady_rate(events, n)
    if steady is None:
        raise BenchError(f"too few progress reports for a rate ({backend}, retention {kept})")
    return steady, n / (done - child.started_at)


def _empty_queue_url(ctx: Context, backend: str, directory: Path) -> str:
    """An empty queue: the run's Redis, flushed, or a file in a fresh `directory`."""
    if backend == "redis":
        redis = ctx.redis()
        redis.flush()
        return redis.url
    return f"sqlite:///{directory / 'queue.db'}"  # absolute: sqlite:////...


def depth(ctx: Context) -> None:
    """Flat scaling: 1,000 queued no-op jobs with N completed records beside them, and none.

    Pairs of runs alternating which queue goes first, as drainpool-depth's flat
    pairs: the window is only the 1,000 queued jobs, tens of milliseconds.
    """
    s = ctx.sizes
    counts = (0, s.retained_records)
    queues: dict[int, Drainpool] = {}
    try:
        for count in counts:
            dp = Drainpool(
                ctx,
                fresh_dir(ctx, f"records-depth-{count}"),
                config_text({"job": "noop"}, retention_seconds=DEPTH_RETENTION),
            )
            dp.check()
            dp.stats()  # creates the queue file at the current schema
            took = _insert_records(dp, count)
            if count:
                ctx.results.add(
                    _metric(
                        "depth.build",
                        f"{count:,} completed records written by one INSERT",
                        "records/s",
                    ),
                    count / took,
                )
            queues[count] = dp
        for rep in range(s.flat_reps):
            for count in counts if rep % 2 == 0 else counts[::-1]:
                queues[count].fill_to("job", DEPTH_QUEUED)
                rate = window_rate(ctx, queues[count], DEPTH_QUEUED)
                ctx.results.add(
                    _metric(
                        f"depth.noop.{count}",
                        f"no-op, {DEPTH_QUEUED:,} queued, {count:,} records retained,"
                        " sustained (interleaved pairs)",
                        "jobs/s",
                    ),
                    rate,
                )
    finally:
        for dp in queues.values():
            shutil.rmtree(dp.dir)  # a million records take some hundred megabytes
    ctx.results.note(
        "records-depth",
        f"retention_seconds = {DEPTH_RETENTION} for both queues, so the jobs each run completes"
        f" stay too (at most {s.flat_reps * DEPTH_QUEUED:,} beside the 'none' side)",
    )


def _insert_records(dp: Drainpool, count: int) -> float:
    """Completed no-op records, as an ack with retention leaves them; one statement, seconds."""
    if not count:
        return 0.0
    from drainpool.queue.sqlite_records import COMPLETED  # the schema of the tree under test

    now = time.time()
    began = time.monotonic()
    with sqlite3.connect(dp.dir / "queue.db") as conn:
        conn.execute(
            "INSERT INTO jobs (task, payload, state, due_at, attempts, enqueued_at, started_at,"
            " finished_at, expires_at, worker_host, worker_pid, worker_pool, result)"
            " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)"
            f" SELECT 'job', '{{}}', {COMPLETED}, ?2, 1, ?2, ?2, ?2, ?2 + ?3,"
            " 'bench-host', 1, 'default', 'null' FROM n",
            (count, now, DEPTH_RETENTION),
        )
    conn.close()
    return time.monotonic() - began


def wait_latency(ctx: Context) -> None:
    """wait() return - the task's finish time, from a producer process, on SQLite and Redis."""
    n = ctx.sizes.wait_jobs
    for backend in ("sqlite", "redis"):
        directory = fresh_dir(ctx, f"records-wait-{backend}")
        url = _empty_queue_url(ctx, backend, directory)
        dp = Drainpool(ctx, directory, config_text({"stamp": "finish_stamp"}, url=url))
        dp.check()
        with inbox("notify") as notify:
            child = dp.start(notify)
            try:
                dp.wait_ready(child, notify, since=0)
                out = run_checked(
                    [sys.executable, str(BENCH / "wait_probe.py"), url, str(n)],
                    env=dp.env(),
                    cwd=directory,
                    timeout=jobs_timeout(n) + n,
                )
            finally:
                dp.stop(child)
        for latency in json.loads(out)["latencies"]:
            ctx.results.add(
                _metric(
                    f"wait.{backend}",
                    f"wait() return after the task finished, {backend}, one producer process",
                    "ms",
                    2,
                ),
                latency * 1000,
            )
    ctx.results.note(
        "records-wait",
        f"{n} jobs per backend, one at a time, each `stamp` job running 0-0.3 s"
        " (spread evenly) and returning its CLOCK_MONOTONIC finish time;"
        " latency = the producer's clock when wait() returned - that time",
    )


def size(ctx: Context) -> None:
    """SQLite bytes per retained no-op record: retention 86400 against 0, same job count.

    Measured once, whatever the repetitions: a size on disk does not vary between runs
    (five runs of 100,000 jobs gave the same figure to the byte).
    """
    import record_size  # imports the daemon's queue: only when this scenario runs

    n = ctx.sizes.record_size_jobs
    directory = fresh_dir(ctx, "records-size")
    try:
        without, kept, per_record = record_size.measure(directory, n)
    finally:
        shutil.rmtree(directory)
    ctx.results.add(
        _metric("size.per_record", "SQLite bytes per retained no-op record", "bytes", 1),
        per_record,
    )
    ctx.results.note(
        "records-size",
        f"{n:,} no-op jobs through enqueue, claim and ack in rounds of {record_size.ROUND},"
        f" in process (bench/record_size.py), once; files: {without:,} bytes with retention 0,"
        f" {kept:,} with 86400 (database + WAL after a checkpoint)",
    )
