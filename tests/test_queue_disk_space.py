"""The queue's file under attack: a disk too small for its WAL, and a WAL deleted (issue 23).

A deleted WAL: producers got ids for jobs written to a new WAL the daemon
never read, /readyz stayed 200, and the jobs were gone after a restart.

A tiny file system: SQLite checkpoints the WAL every 1000 pages (4 MiB), so on a
1 MiB disk the WAL alone filled it, every commit then failed for space, and the
daemon stayed "disk is full" with room to spare once the WAL was checkpointed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonFactory, enqueue, queue_stats, wait_until
from tests.support.joblog import count
from tests.support.mountns import MountNamespace

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter")),
    reason="mounts a private file system: needs root, unshare and nsenter",
)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[MountNamespace]:
    with MountNamespace(tmp_path) as ns:
        yield ns


def readyz(daemon: Daemon) -> int:
    return daemon.get("/readyz")[0]


def enqueue_file(namespace: MountNamespace, config: Path, payloads: list[dict]) -> None:
    jobs = config.with_name("jobs.jsonl")
    jobs.write_text("".join(json.dumps({"task": "record", "payload": p}) + "\n" for p in payloads))
    done = namespace.cli("enqueue", "--file", str(jobs), config=config)
    assert done.returncode == 0, done.stderr


@needs_root
def test_a_tiny_disk_recovers_once_space_is_freed(
    factory: DaemonFactory, tmp_path: Path, namespace: MountNamespace
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    namespace.run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(vol))
    namespace.run("dd", "if=/dev/zero", f"of={vol}/filler", "bs=4k", "count=64")
    log = tmp_path / "jobs.log"  # off the tiny disk
    config = factory.config(
        pool={"workers": 2},
        queue={"url": f"sqlite:///{vol}/queue.db", "retention_seconds": 0},
        reload={"watch": False},
    )
    jobs = 2000
    enqueue_file(namespace, config, [{"log": str(log)}] * jobs)
    daemon = namespace.start(config)
    # Each claim and ack appends pages to the WAL, which SQLite checkpoints only at 4 MiB:
    # the WAL fills the disk long before all the jobs are done.
    daemon.wait_log(r"queue unavailable .*database or disk is full")
    wait_until(lambda: readyz(daemon) == 503, what="/readyz 503 while the disk is full")

    namespace.run("rm", f"{vol}/filler")  # 256 KiB free: the WAL must not swallow it again
    wait_until(lambda: len(count(log, "done")) == jobs, timeout=120, what="every job done")
    assert set(count(log, "start").values()) == {1}  # none lost, none run twice
    wait_until(lambda: readyz(daemon) == 200, what="/readyz 200 once there is room")
    daemon.terminate()


def test_a_wal_deleted_under_the_daemon_is_reported_and_loses_nothing(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(reload={"watch": False})
    db = tmp_path / "queue.db"
    daemon = factory.start(config)
    # Waiting jobs whose rows are in the WAL only (the daemon's connection keeps it open).
    kept = [enqueue(factory, config, "noop", {"n": n}, "--delay", "3600") for n in range(5)]
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink()

    wait_until(lambda: readyz(daemon) == 503, what="/readyz 503")
    daemon.wait_log(r"queue unavailable \(not ready; retrying with backoff\): .*-wal or -shm")
    # A producer is refused loudly instead of writing a WAL the daemon never reads.
    refused = factory.cli("enqueue", "noop", "{}", config=config)
    assert refused.returncode == 1 and "-wal or -shm file is gone" in refused.stderr, refused
    assert "Traceback" not in refused.stderr
    assert readyz(daemon) == 503  # stays: the daemon does not claim health again

    daemon.terminate()  # its connection's close writes the WAL it held into the file
    again = factory.start(config)
    assert queue_stats(factory, config)["delayed"] == len(kept)
    assert readyz(again) == 200
    again.terminate()
