"""SQLite bytes per retained no-op job record: retention on against retention 0.

Runs N no-op jobs through enqueue, claim and ack, in rounds of ROUND jobs (the
queue stays short, as in a daemon keeping up), once with retention_seconds = 0
and once with 86400, each in a fresh file, and prints the size of each file
(database plus WAL, after a checkpoint) and the difference per job:

    python bench/record_size.py [--jobs N]

bench/run.py's records-size scenario calls `measure` and reports the figure.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

from drainpool.queue.base import Done, WorkerIdentity
from drainpool.queue.sqlite import SqliteQueue

ROUND = 500
WORKER = WorkerIdentity("bench-host.example", 123456, "default")


def run(path: Path, jobs: int, retention_seconds: float) -> int:
    """Bytes on disk after `jobs` no-op jobs completed with this retention."""
    queue = SqliteQueue(path, retention_seconds=retention_seconds, durable_commits=False)
    done = 0
    try:
        while done < jobs:
            size = min(ROUND, jobs - done)
            queue.enqueue_many(("noop", {}) for _ in range(size))
            leased = queue.fetch(size, ["noop"], 60, worker=WORKER)
            # A no-op's result: None, as JSON (what the pool will store for it).
            queue.settle(acks=[Done(job, "null") for job in leased])
            done += len(leased)
    finally:
        queue.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def measure(directory: Path, jobs: int) -> tuple[int, int, float]:
    """(bytes with retention 0, bytes with 86400, bytes per retained record), fresh files."""
    without = run(directory / "retention-0.db", jobs, 0)
    kept = run(directory / "retention-86400.db", jobs, 86_400)
    return without, kept, (kept - without) / jobs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per run (default 100000)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="record-size-") as tmp:
        without, kept, per_record = measure(Path(tmp), args.jobs)
    print(f"jobs: {args.jobs}  (rounds of {ROUND}; sqlite {sqlite3.sqlite_version})")
    print(f"retention 0:     {without:>12,} bytes")
    print(f"retention 86400: {kept:>12,} bytes")
    print(f"per retained no-op record: {per_record:.1f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
