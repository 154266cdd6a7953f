"""The job watch's own thread: it starts on the first job and ends with its pool.

The watch runs against a real SQLite queue (its cancel check reads it); the
pool it watches is a small Watched of this file that holds one job until it
says it has drained, so the watch alone is under test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from drainpool.context import StopReason
from drainpool.jobwatch import JobWatch
from drainpool.queue import from_url
from drainpool.queue.base import Job, Queue

from tests.support.waiting import wait_until

HOUR = 3600.0


class OneJobPool:
    """Holds one job until `drained` is set; counts the watch's sweeps."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.drained = False
        self.sweeps = 0

    def sweep(self) -> tuple[list[Job], float | None, bool]:
        self.sweeps += 1
        if self.drained:
            return [], None, True
        return [self.job], None, False

    def stop_job(self, job_id: str, reason: StopReason) -> None:
        raise AssertionError(f"nothing was cancelled, yet {job_id} was stopped ({reason})")


def _watch_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"{name}-jobwatch" and t.is_alive()]


def _one_job(tmp_path: Path) -> tuple[Queue, Job]:
    queue = from_url(f"sqlite:///{tmp_path / 'queue.db'}")
    queue.enqueue("t", {})
    (job,) = queue.fetch(1, ["t"], 60.0)
    return queue, job


def test_end_stops_a_watch_pausing_between_checks(tmp_path: Path) -> None:
    queue, job = _one_job(tmp_path)
    pool = OneJobPool(job)
    watch = JobWatch(pool, queue, "hourly", check_seconds=HOUR, clock=time.monotonic)
    try:
        watch.wake()
        wait_until(lambda: pool.sweeps >= 1, what="the watch's first sweep")
        assert _watch_threads("hourly"), "the first wake() starts the thread"
        pool.drained = True
        watch.end()  # the watch is (or is about to be) in its hour-long pause
        watch.join(timeout=30.0)
        assert not _watch_threads("hourly"), "end() must cut the pause short"
    finally:
        pool.drained = True
        watch.end()
        watch.join(timeout=30.0)
        queue.close()


def test_a_watch_never_woken_has_no_thread_to_end(tmp_path: Path) -> None:
    queue, job = _one_job(tmp_path)
    try:
        watch = JobWatch(OneJobPool(job), queue, "unused", clock=time.monotonic)
        watch.end()
        watch.join(timeout=1.0)
        assert not _watch_threads("unused")
    finally:
        queue.close()
