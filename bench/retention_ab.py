"""What keeping job records costs a pool (issue 18), without a daemon around it.

A real Pool (thread kind, 8 workers) in this process over N queued no-op jobs,
retention_seconds 86400 against 0, ABBA (the retention that goes first
alternates), each run on a fresh queue: a new SQLite file, or a FLUSHALL of a
redis-server of its own. Reports jobs/s and the process's CPU time per job (all
its threads; other processes move it much less than the wall clock), their
medians, and the two ratios. The daemon-level figure is
`bench/run.py --only records-retention`; this one leaves out the daemon's start,
the command line and the producer, and takes a minute instead of eight.

    PYTHONPATH=daemon python bench/retention_ab.py [--backend sqlite|redis]
        [--jobs 20000] [--reps 4]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from drainpool.metrics import Metrics
from drainpool.outcomes import Outcome
from drainpool.pool import Pool, PoolConfig
from drainpool.queue.records import RESULT_MAX_BYTES
from drainpool.tasks import TaskSpec

RETENTIONS = (0, 86_400)
WORKERS = 8


def noop(ctx: Any, payload: Any) -> None:
    """Returns None: the result kept with retention is JSON null."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Backend:
    """Fresh queues of one kind: SQLite files in `work`, or one redis-server flushed per run."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        self.server: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0

    def __enter__(self) -> Backend:
        if self.kind == "redis":
            import redis

            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("redis-server is missing: apt-get install redis-server")
            self.port = free_port()
            argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self.work)]
            self.server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            client = redis.Redis(port=self.port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    threading.Event().wait(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)

    def queue(self, retention: int) -> Any:
        self.runs += 1
        if self.kind == "redis":
            import redis
            from drainpool.queue.redis import RedisQueue

            redis.Redis(port=self.port).flushall()
            url = f"redis://127.0.0.1:{self.port}/0"
            return RedisQueue.from_url(url, retention_seconds=retention)
        from drainpool.queue.sqlite import SqliteQueue

        path = self.work / f"run{self.runs}.db"
        return SqliteQueue(path, durable_commits=False, retention_seconds=retention)


def one_run(backend: Backend, retention: int, jobs: int) -> tuple[float, float]:
    """(jobs/s, CPU µs per job) of a pool over `jobs` no-ops on a fresh queue."""
    queue = backend.queue(retention)
    queue.enqueue_many(("noop", None) for _ in range(jobs))
    spec = TaskSpec("noop", "retention_ab:noop", "function", noop)
    kept = RESULT_MAX_BYTES if retention else None  # as the supervisor plans it
    config = PoolConfig("default", WORKERS, 5.0, 60.0, 0.05, result_max_bytes=kept)
    drained = threading.Event()
    pool = Pool(config, 1, {"noop": spec}, queue, Metrics(), on_drained=lambda p: drained.set())
    started, cpu = time.perf_counter(), time.process_time()
    pool.start()
    while pool.counts[Outcome.COMPLETED] < jobs:
        drained.wait(0.005)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    pool.begin_drain()
    drained.wait(30)
    pool.join()
    queue.close()
    return jobs / seconds, cpu / jobs * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args(argv)
    rates: dict[int, list[float]] = {r: [] for r in RETENTIONS}
    cpus: dict[int, list[float]] = {r: [] for r in RETENTIONS}
    with (
        tempfile.TemporaryDirectory(prefix="drainpool-retention-") as tmp,
        Backend(args.backend, Path(tmp)) as backend,
    ):
        one_run(backend, 0, 1000)  # warm-up: imports, the first file or connection
        for rep in range(args.reps):
            for retention in RETENTIONS if rep % 2 == 0 else RETENTIONS[::-1]:
                rate, cpu = one_run(backend, retention, args.jobs)
                rates[retention].append(rate)
                cpus[retention].append(cpu)
    print(f"{args.backend}, {args.jobs} no-op jobs x {args.reps} reps, {WORKERS} workers")
    for retention in RETENTIONS:
        shown = ", ".join(f"{v:,.0f}" for v in rates[retention])
        cpu = ", ".join(f"{v:.1f}" for v in cpus[retention])
        print(f"retention {retention}: jobs/s {shown}; CPU us per job {cpu}")
    ratio = statistics.median(rates[86_400]) / statistics.median(rates[0])
    cpu_ratio = statistics.median(cpus[0]) / statistics.median(cpus[86_400])
    print(f"retention 86400 / 0: jobs/s {ratio:.3f}x, CPU per job (0's / 86400's) {cpu_ratio:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
