"""Stopping one job (issue 19): `drainpool job cancel` against the real daemon.

Every cancel here goes through the real command (or the queue object a
producer would use), the daemon runs the jobs, and the record, the task's own
log and the metrics must agree on how each job ended: exactly one state.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from drainpool.queue import JobState, Queue, from_url

from tests.support.console import authorized, call, console_config
from tests.support.console import open_queue as console_queue
from tests.support.daemon import DaemonFactory, enqueue, wait_until

NOTHING = "nothing changed\n"
TASKS: dict[str, Any] = {
    "wait_stop": "tests.support.cancel_tasks:wait_stop",
    "async_wait_stop": "tests.support.cancel_tasks:async_wait_stop",
    "stubborn": "drainpool.tasks.examples:stubborn",
    "spin": "tests.support.tasks:spin",
    "pause": {"command": ["sleep", "{seconds}"]},
}


pytestmark = pytest.mark.queue_backends("sqlite", "redis", "postgres")  # for queue_url


@pytest.fixture
def sqlite_url() -> str:
    return "sqlite:///queue.db"


def config(factory: DaemonFactory, url: str, **pool: Any) -> Path:
    return factory.config(
        pool={"workers": 2, **pool},
        shutdown={"grace_seconds": 1.0},
        queue={"url": url, "max_attempts": 2},
        tasks=TASKS,
    )


def opened(factory: DaemonFactory, url: str) -> contextlib.closing[Queue]:
    """The test's queue, opened from the test process as a producer would."""
    return contextlib.closing(from_url(url, base_dir=factory.tmp))


def cancel(factory: DaemonFactory, cfg: Path, job_id: str, *options: str) -> Any:
    return factory.cli("job", "cancel", job_id, *options, config=cfg)


def wait_state(queue: Queue, job_id: str, state: JobState) -> None:
    def reached() -> bool:
        info = queue.job(job_id)
        return info is not None and info.state is state

    wait_until(reached, what=f"job {job_id} {state}")


def jobs_logging(log: Path, kind: str) -> list[str]:
    """The job ids of the log's lines of one kind (start, stopped, done), in order."""
    if not log.exists():
        return []
    return [parts[1] for parts in map(str.split, log.read_text().splitlines()) if parts[0] == kind]


def cancel_running(
    factory: DaemonFactory, cfg: Path, queue: Queue, job_id: str, *options: str
) -> Any:
    """`job cancel --wait` of a running job: it says so, and the record ends cancelled."""
    done = cancel(factory, cfg, job_id, "--wait", *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"job {job_id} cancelled; it was stopped while running\n"
    info = queue.job(job_id)
    assert info is not None and info.state is JobState.CANCELLED
    return info


def wait_line(log: Path, line: str) -> None:
    wait_until(lambda: log.exists() and line in log.read_text(), what=line)


def test_a_waiting_and_a_delayed_job_are_never_delivered(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    cfg = config(factory, queue_url)
    log = tmp_path / "jobs.log"
    waiting = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 0})
    delayed = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 0}, "--delay", "1")
    first = cancel(factory, cfg, waiting, "--reason", "not needed")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"job {waiting} cancelled; it had not started\n"
    assert cancel(factory, cfg, delayed).returncode == 0
    again = cancel(factory, cfg, waiting)  # the same cancel twice: nothing changes
    assert again.returncode == 1
    assert (
        again.stderr == f"drainpool: job {waiting} had already ended (cancelled); nothing changed\n"
    )
    factory.start(cfg)
    # Due after the delayed one: once it has run, the cancelled ones would have too.
    marker = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 0}, "--delay", "1.5")
    with opened(factory, queue_url) as queue:
        wait_state(queue, marker, JobState.COMPLETED)
        for job_id in (waiting, delayed):
            info = queue.job(job_id)
            assert info is not None and info.state is JobState.CANCELLED
            assert info.started_at is None and info.attempts == 0
        record = queue.job(waiting)
        assert record is not None
        assert record.cancel_reason == "not needed" and record.cancelled_by.startswith("cli ")
    assert jobs_logging(log, "start") == [marker]


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("thread", "wait_stop"),
        ("process", "wait_stop"),
        ("thread", "async_wait_stop"),
        ("thread", "pause"),
        ("process", "pause"),
    ],
)
def test_a_running_job_is_stopped_and_ends_cancelled(
    factory: DaemonFactory, sqlite_url: str, tmp_path: Path, kind: str, task: str
) -> None:
    cfg = config(factory, sqlite_url, kind=kind)
    daemon = factory.start(cfg)
    log = tmp_path / "jobs.log"
    payload = {"seconds": 60} if task == "pause" else {"log": str(log), "seconds": 60}
    job_id = enqueue(factory, cfg, task, payload)
    with opened(factory, sqlite_url) as queue:
        wait_state(queue, job_id, JobState.RUNNING)
        if task != "pause":
            wait_line(log, f"start {job_id} 1")
        info = cancel_running(factory, cfg, queue, job_id, "--reason", "runaway")
        assert info.cancel_reason == "runaway" and info.attempts == 1
    if task == "pause":
        assert "stop asked (cancel): SIGTERM to command pid" in daemon.log()
    else:
        assert f"stopped {job_id} 1 cancel" in log.read_text()
    wait_until(lambda: daemon.metric("drainpool_tasks_aborted_total", task=task) == 1)
    assert daemon.metric("drainpool_tasks_interrupted_total", task=task) == 0
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    with opened(factory, sqlite_url) as queue:
        info = queue.job(job_id)
        assert info is not None and info.state is JobState.CANCELLED  # never re-run


def test_a_reserved_job_is_dropped_without_starting(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    cfg = config(factory, queue_url, workers=1, prefetch=1)
    daemon = factory.start(cfg)
    log = tmp_path / "jobs.log"
    busy = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 60})
    wait_line(log, f"start {busy} 1")
    reserved = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 0})
    with opened(factory, queue_url) as queue:
        wait_state(queue, reserved, JobState.RUNNING)  # leased: in the pool's reserve
        assert cancel(factory, cfg, reserved, "--wait").returncode == 0
        assert cancel(factory, cfg, busy, "--wait").returncode == 0
        for job_id in (busy, reserved):
            info = queue.job(job_id)
            assert info is not None and info.state is JobState.CANCELLED
    assert jobs_logging(log, "start") == [busy]
    assert daemon.metric("drainpool_tasks_aborted_total", task="wait_stop") == 2
    assert daemon.metric("drainpool_tasks_started_total", task="wait_stop") == 1


@pytest.mark.parametrize(("kind", "task"), [("thread", "stubborn"), ("process", "spin")])
def test_a_task_that_ignores_the_cancel_is_ended_at_the_grace(
    factory: DaemonFactory, sqlite_url: str, tmp_path: Path, kind: str, task: str
) -> None:
    cfg = config(factory, sqlite_url, kind=kind, workers=1)
    daemon = factory.start(cfg)
    log = tmp_path / "jobs.log"
    job_id = enqueue(factory, cfg, task, {"log": str(log), "seconds": 60})
    with opened(factory, sqlite_url) as queue:
        wait_state(queue, job_id, JobState.RUNNING)
        done = cancel(factory, cfg, job_id, "--wait")
        assert done.returncode == 0, done.stderr
        how = re.escape("abandoned (thread left behind)" if kind == "thread" else "killed")
        daemon.wait_log(f"job {job_id} \\({task}\\) on .* still ran 1.0s after its cancel: {how}")
        # The slot lives on: the next job runs on a new worker (thread) or a new child.
        next_id = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 0})
        wait_state(queue, next_id, JobState.COMPLETED)
        info = queue.job(job_id)
        assert info is not None and info.state is JobState.CANCELLED
    assert daemon.metric("drainpool_tasks_aborted_total", task=task) == 1
    assert daemon.metric("drainpool_tasks_abandoned_total", task=task) == 0


def test_two_daemons_share_the_queue_and_the_one_running_the_job_stops_it(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    cfg = config(factory, queue_url, workers=1, prefetch=0)  # no reserve: one job each
    first, second = factory.start(cfg), factory.start(cfg)
    log = tmp_path / "jobs.log"
    ids = [enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 60}) for _ in range(2)]
    for job_id in ids:
        wait_line(log, f"start {job_id} 1")
    with opened(factory, queue_url) as queue:
        runners = {}
        for job_id in ids:
            info = queue.job(job_id)
            assert info is not None and info.worker is not None
            runners[job_id] = info.worker.pid
        assert sorted(runners.values()) == sorted([first.proc.pid, second.proc.pid])
        for job_id in ids:
            assert cancel(factory, cfg, job_id, "--wait").returncode == 0
            info = queue.job(job_id)
            assert info is not None and info.state is JobState.CANCELLED
    for daemon in (first, second):
        assert "asked to stop: cancel" in daemon.log()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0


def test_a_cancel_racing_completion_ends_in_exactly_one_state(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    cfg = config(factory, queue_url, workers=4)
    factory.start(cfg)
    log = tmp_path / "jobs.log"
    said: dict[str, str] = {}
    with opened(factory, queue_url) as queue:
        ids = [
            queue.enqueue("wait_stop", {"log": str(log), "seconds": 0.002 * (n % 20)})
            for n in range(60)
        ]
        for job_id in ids:
            said[job_id] = str(queue.cancel(job_id, by="test").effect)
        ended = {job_id: queue.wait(job_id, 60).state for job_id in ids}
    finished = set(jobs_logging(log, "done"))
    for job_id in ids:
        state = ended[job_id]
        assert state in (JobState.COMPLETED, JobState.CANCELLED), (job_id, state)
        # Done in its log means completed; a job cancelled before it started never ran.
        assert (job_id in finished) == (state is JobState.COMPLETED), job_id
        if said[job_id] == "cancelled":
            assert state is JobState.CANCELLED
        if said[job_id] == "ended":
            assert state is JobState.COMPLETED
    # Each cancel the command sends says which state won.
    late = ids[-1]
    done = cancel(factory, cfg, late, "--wait")
    assert done.returncode == 1
    assert f"job {late} had already ended ({ended[late]})" in done.stderr


def test_the_command_says_when_completion_won(factory: DaemonFactory) -> None:
    cfg = factory.config(
        shutdown={"grace_seconds": 30.0}, queue={"url": "sqlite:///queue.db"}, tasks=TASKS
    )
    factory.start(cfg)
    # stubborn never looks at its signal: it returns inside the grace, so its ack wins.
    job_id = enqueue(factory, cfg, "stubborn", {"seconds": 3})
    with opened(factory, "sqlite:///queue.db") as queue:
        wait_state(queue, job_id, JobState.RUNNING)
        done = cancel(factory, cfg, job_id, "--wait")
        info = queue.job(job_id)
    assert info is not None and info.state is JobState.COMPLETED
    assert done.returncode == 1
    assert done.stderr == f"drainpool: job {job_id} ended completed before the cancel took effect\n"


@pytest.mark.parametrize("action", ["stop", "reload"])
def test_a_stop_or_reload_during_a_cancel_keeps_the_job_cancelled(
    factory: DaemonFactory, sqlite_url: str, tmp_path: Path, action: str
) -> None:
    cfg = config(factory, sqlite_url, workers=1)
    daemon = factory.start(cfg)
    log = tmp_path / "jobs.log"
    job_id = enqueue(factory, cfg, "stubborn", {"seconds": 60})
    other = enqueue(factory, cfg, "wait_stop", {"log": str(log), "seconds": 0})
    with opened(factory, sqlite_url) as queue:
        wait_state(queue, job_id, JobState.RUNNING)
        assert cancel(factory, cfg, job_id).returncode == 0
        daemon.wait_log(f"job {job_id} \\(stubborn\\) asked to stop: cancel")
        if action == "stop":
            daemon.signal(signal.SIGTERM)
            assert daemon.wait_exit() in (0, 1)
        else:
            config(factory, sqlite_url, workers=2)  # a real change: the pool restarts
            daemon.wait_log(r"reload \(")
            wait_state(queue, other, JobState.COMPLETED)
        wait_state(queue, job_id, JobState.CANCELLED)
        if action == "stop":
            factory.start(cfg)
            wait_state(queue, other, JobState.COMPLETED)
            info = queue.job(job_id)
            assert info is not None and info.state is JobState.CANCELLED


def test_unknown_ids_and_ended_jobs(factory: DaemonFactory, tmp_path: Path) -> None:
    cfg = config(factory, "sqlite:///queue.db")
    factory.start(cfg)
    unknown = cancel(factory, cfg, "999999")
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "no job 999999" in unknown.stderr
    bad = cancel(factory, cfg, "not-an-id")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    job_id = enqueue(factory, cfg, "wait_stop", {"log": str(tmp_path / "l"), "seconds": 0})
    with opened(factory, "sqlite:///queue.db") as queue:
        wait_state(queue, job_id, JobState.COMPLETED)
    ended = cancel(factory, cfg, job_id)
    assert ended.returncode == 1
    assert (
        ended.stderr == f"drainpool: job {job_id} had already ended (completed); nothing changed\n"
    )
    shown = json.loads(factory.cli("job", "show", job_id, "--json", config=cfg).stdout)
    assert shown["state"] == "completed" and shown["cancel_requested_at"] is None


def test_the_console_cancels_under_its_action_rules(factory: DaemonFactory, tmp_path: Path) -> None:
    off = factory.start(console_config(factory, actions=False, name="off.toml"))
    with console_queue(tmp_path) as queue:
        job_id = queue.enqueue("hold", {"log": str(tmp_path / "l"), "gate": str(tmp_path / "g")})
        path = f"/api/jobs/{job_id}/cancel"
        assert call(off, "POST", path, body={}, headers=authorized()).code == 403
        off.signal(signal.SIGTERM)
        assert off.wait_exit() == 0
        daemon = factory.start(console_config(factory))
        wait_state(queue, job_id, JobState.RUNNING)
        assert call(daemon, "POST", path, body={}, headers=authorized("wrong-token")).code == 401
        assert call(daemon, "POST", path, body={}, headers={"Authorization": "x"}).code == 401
        info = queue.job(job_id)
        assert info is not None and info.state is JobState.RUNNING  # refused: nothing changed
        answer = call(daemon, "POST", path, body={"reason": "from a test"}, headers=authorized())
        assert answer.code == 200, answer
        assert answer.body["effect"] == "requested"
        wait_state(queue, job_id, JobState.CANCELLED)
        info = queue.job(job_id)
        assert info is not None and info.cancel_reason == "from a test"
        assert info.cancelled_by == "console 127.0.0.1"
        again = call(daemon, "POST", path, body={}, headers=authorized())
        assert again.code == 409 and "had already ended (cancelled)" in again.body["error"]
        missing = call(daemon, "POST", "/api/jobs/424242/cancel", body={}, headers=authorized())
        assert missing.code == 404
    assert "console cancel by 127.0.0.1" in daemon.log()


def test_a_job_with_a_long_time_limit_is_cancelled_at_once(
    factory: DaemonFactory, sqlite_url: str, tmp_path: Path
) -> None:
    """On SQLite only the job watch reads cancels: its first look must not wait for the limit."""
    cfg = config(factory, sqlite_url)
    factory.start(cfg)
    log = tmp_path / "jobs.log"
    job_id = enqueue(
        factory, cfg, "wait_stop", {"log": str(log), "seconds": 3600}, "--timeout", "3600"
    )
    with opened(factory, sqlite_url) as queue:
        wait_line(log, f"start {job_id} 1")
        cancel_running(factory, cfg, queue, job_id, "--timeout", "60")
