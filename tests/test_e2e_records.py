"""Job records through the real daemon: results of every task kind, on SQLite and Redis.

The test process is the producer: it enqueues with the queue API and waits with
`wait()` / `result()` while the daemon (another process) runs the jobs. Records
must survive the daemon's restart, and a kill -9 in the middle of a job.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from drainpool.queue import JobFailed, JobState, Queue, from_url

from tests.support.daemon import DaemonFactory, base_config, render_config, write_atomic
from tests.support.waiting import wait_until

TASKS: dict[str, Any] = {
    "echo": "tests.support.tasks:echo",
    "aecho": "tests.support.tasks:async_echo",
    "odd": "tests.support.tasks:unjsonable",
    "fail": "drainpool.tasks.examples:fail",
    "record": "tests.support.tasks:record",
    "pecho": "tests.support.tasks:echo",
    "words": {"command": [sys.executable, "-c", "print('one'); print('{word}')"]},
}
pytestmark = pytest.mark.queue_backends("sqlite", "redis", "postgres")  # for queue_url
POOLS = {
    "threads": {"workers": 2, "tasks": ["echo", "aecho", "odd", "fail", "record", "words"]},
    "children": {"workers": 1, "kind": "process", "tasks": ["pecho"]},
}


def write_config(path: Path, url: str, **queue: Any) -> Path:
    config = base_config(path.parent, reload={"watch": False})
    del config["pool"]
    config["queue"].update(url=url, max_attempts=2, **queue)
    config["tasks"] = dict(TASKS)
    config["pools"] = POOLS
    write_atomic(path, render_config(config))
    return path


def producer(url: str, folder: Path) -> Queue:
    """The test's own handle on the queue (a relative SQLite URL is the config's, in `folder`)."""
    return from_url(url, base_dir=folder)


def test_every_task_kind_keeps_its_result(
    factory: DaemonFactory, tmp_path: Path, queue_url: str
) -> None:
    config = write_config(tmp_path / "drainpool.toml", queue_url, result_max_bytes=1000)
    queue = producer(queue_url, tmp_path)
    try:
        ids = {
            "thread": queue.enqueue("echo", {"value": {"n": [1, 2, 3]}}),
            "async": queue.enqueue("aecho", {"value": "a"}),
            "process": queue.enqueue("pecho", {"value": 42}),
            "command": queue.enqueue("words", {"word": "two"}),
            "too big": queue.enqueue("echo", {"size": 5000}),
            "not json": queue.enqueue("odd", {}),
            "dead": queue.enqueue("fail", {"message": "no disk"}),
        }
        daemon = factory.start(config)
        assert queue.result(ids["thread"], timeout=60) == {"n": [1, 2, 3]}
        assert queue.result(ids["async"], timeout=60) == {"async": "a"}
        assert queue.result(ids["process"], timeout=60) == 42
        command = queue.result(ids["command"], timeout=60)
        assert command["exit_code"] == 0 and command["stdout_tail"] == "one\ntwo"
        big = queue.wait(ids["too big"], timeout=60)
        assert big.state is JobState.COMPLETED and not big.result_kept
        assert big.result_note == "result not kept: 4.9 KiB > 1000 B"
        odd = queue.wait(ids["not json"], timeout=60)
        assert odd.state is JobState.COMPLETED and odd.result_note.startswith(
            "result not kept: not JSON"
        )
        with pytest.raises(JobFailed) as failed:
            queue.result(ids["dead"], timeout=60)
        assert failed.value.info.state is JobState.DEAD
        assert failed.value.info.error == "DemandedFailure: no disk"
        process = queue.job(ids["process"])
        thread = queue.job(ids["thread"])
        assert process is not None and process.worker is not None
        assert process.worker.pid == daemon.pid and process.worker.pool == "children"
        assert thread is not None and thread.worker is not None
        assert thread.worker.pool == "threads" and thread.attempts == 1
        assert thread.started_at is not None and thread.finished_at is not None
        assert thread.enqueued_at <= thread.started_at <= thread.finished_at
        # The pool's outcomes reach the queue's per-minute counts (the console's chart).
        totals: dict[str, int] = {}
        for minute in queue.outcome_minutes(thread.enqueued_at - 120):
            for outcome, n in minute.items():
                if outcome != "minute":
                    totals[outcome] = totals.get(outcome, 0) + n
        assert (totals["completed"], totals["failed"], totals["dead"]) == (6, 2, 1), totals
        daemon.terminate()
    finally:
        queue.close()


def test_records_survive_a_restart_and_a_kill_9(
    factory: DaemonFactory, tmp_path: Path, queue_url: str
) -> None:
    config = write_config(tmp_path / "drainpool.toml", queue_url, lease_seconds=2)
    log = tmp_path / "jobs.log"
    queue = producer(queue_url, tmp_path)
    try:
        done = queue.enqueue("echo", {"value": "kept"})
        daemon = factory.start(config)
        assert queue.result(done, timeout=60) == "kept"
        daemon.terminate()
        # A job running when its daemon is killed: delivered again after the lease.
        slow = queue.enqueue("record", {"log": str(log), "seconds": 3})
        daemon = factory.start(config)
        wait_until(lambda: log.exists() and "start" in log.read_text(), what="job started")
        running = queue.job(slow)
        assert running is not None and running.state is JobState.RUNNING
        daemon.signal(signal.SIGKILL)
        daemon.wait_exit()
        daemon = factory.start(config)
        finished = queue.wait(slow, timeout=60)
        assert finished.state is JobState.COMPLETED and finished.result == "ok"
        assert finished.attempts == 2 and finished.worker is not None
        assert finished.worker.pid == daemon.pid  # the second daemon ran the last attempt
        kept = queue.job(done)
        assert kept is not None and kept.result == "kept"  # across both restarts
        daemon.terminate()
    finally:
        queue.close()


def test_retention_zero_keeps_no_record(
    factory: DaemonFactory, tmp_path: Path, queue_url: str
) -> None:
    config = write_config(tmp_path / "drainpool.toml", queue_url, retention_seconds=0)
    queue = producer(queue_url, tmp_path)
    try:
        job = queue.enqueue("echo", {"value": 1})
        daemon = factory.start(config)
        gone: Callable[[], bool] = lambda: queue.job(job) is None  # noqa: E731
        wait_until(gone, what="record removed at the ack")
        assert daemon.metric("drainpool_tasks_completed_total", task="echo", pool="threads") == 1
        daemon.terminate()
    finally:
        queue.close()
