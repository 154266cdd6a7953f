"""Stopping the real daemon with real signals: drain, interrupt, cancel, abandon."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from tests.support.daemon import DaemonFactory, enqueue, queue_stats
from tests.support.joblog import count
from tests.support.waiting import wait_until


def generation_counts(log: str, generation: int = 1) -> dict[str, int]:
    match = re.search(rf"pool default generation {generation} ended: (.*)", log)
    assert match, log
    return {k: int(v) for k, v in (part.split() for part in match.group(1).split(", "))}


def enqueue_jobs(factory: DaemonFactory, config: Path, jobs: list[dict]) -> None:
    lines = "".join(json.dumps(job) + "\n" for job in jobs)
    result = factory.cli("enqueue", "--file", "-", config=config, input=lines)
    assert result.returncode == 0, result.stderr


def test_sigterm_mid_run_loses_nothing_and_a_restart_finishes(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 8}, shutdown={"grace_seconds": 30.0})
    jobs = [
        {"task": "record", "payload": {"log": str(log), "seconds": 1 + (i % 5)}}
        for i in range(1000)
    ]
    enqueue_jobs(factory, config, jobs)
    daemon = factory.start(config)
    wait_until(lambda: sum(count(log, "done").values()) >= 8, what="8 jobs done")
    wait_until(lambda: len(daemon.status()["pools"][0]["running"]) == 8, what="8 in flight")
    daemon.terminate()
    daemon.notify.wait_for("STOPPING")

    started, done, interrupted = (count(log, kind) for kind in ("start", "done", "interrupted"))
    assert max(done.values()) == 1, "a job completed twice"
    assert max(interrupted.values()) == 1
    # Every job that started either finished or was interrupted: none was cut off silently.
    assert set(started) == set(done) | set(interrupted)
    assert not set(done) & set(interrupted)
    stats = queue_stats(factory, config)
    assert stats["leased"] == 0 and stats["dead"] == 0
    assert stats["ready"] + len(done) == 1000, "a job was lost"
    # The daemon's own counts agree with what the tasks logged. (A job may complete at the
    # very moment of the signal, so "8 in flight" is 1 to 8 interrupted plus cancelled; the
    # pool holds at most its 8 workers and a reserve of 1: prefetch "auto" keeps one for
    # jobs of a second or more on 8 workers.)
    outcomes = generation_counts(daemon.log())
    assert outcomes["interrupted"] == len(interrupted)
    assert 1 <= outcomes["interrupted"] <= 8
    assert outcomes["interrupted"] + outcomes["cancelled"] <= 8 + 1
    assert outcomes["completed"] == len(done)
    assert outcomes["abandoned"] == 0

    restarted = factory.start(config, env={"TEST_TIME_SCALE": "0"})
    wait_until(lambda: sum(count(log, "done").values()) == 1000, timeout=120, what="all done")
    done = count(log, "done")
    assert len(done) == 1000 and max(done.values()) == 1
    wait_until(lambda: queue_stats(factory, config)["ready"] == 0, what="queue empty")
    restarted.terminate()


def test_task_ignoring_the_event_is_abandoned_and_its_job_released(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(pool={"workers": 2}, shutdown={"grace_seconds": 0.5})
    result = factory.cli("enqueue", "stubborn", '{"seconds": 600}', config=config)
    assert result.returncode == 0, result.stderr
    daemon = factory.start(config)
    wait_until(lambda: daemon.status()["pools"][0]["running"], what="stubborn running")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 1
    assert "abandoned job 1 (stubborn)" in daemon.log()
    assert generation_counts(daemon.log())["abandoned"] == 1
    stats = queue_stats(factory, config)
    assert stats == {**stats, "ready": 1, "leased": 0, "dead": 0}


def test_stray_thread_finishing_late_does_not_ack_the_released_job(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """Reload abandons a stubborn run; the new generation runs the job again; the stray's
    late finish must not ack it (the job stays leased by the new run until that finishes)."""
    log = tmp_path / "stray.log"
    config = factory.config(pool={"workers": 2}, shutdown={"grace_seconds": 0.3})
    payload = json.dumps({"log": str(log), "first": 2.0, "later": 6.0})
    assert factory.cli("enqueue", "stray", payload, config=config).returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: "start 1 run1" in log.read_text() if log.exists() else False)
    factory.config(pool={"workers": 3}, shutdown={"grace_seconds": 0.3})  # reload: abandon run1
    wait_until(lambda: "start 1 run2" in log.read_text(), what="job re-run by generation 2")
    wait_until(lambda: "finish 1 run1" in log.read_text(), what="stray thread finished")
    stats = queue_stats(factory, config)
    assert stats["leased"] == 1, f"the stray's late result touched the job: {stats}"
    assert daemon.metric("drainpool_tasks_completed_total", task="stray") == 0
    assert daemon.metric("drainpool_tasks_abandoned_total", task="stray") == 1
    wait_until(lambda: "finish 1 run2" in log.read_text(), what="second run finished")
    wait_until(lambda: daemon.metric("drainpool_tasks_completed_total", task="stray") == 1)
    wait_until(lambda: queue_stats(factory, config)["leased"] == 0, what="job acked")
    assert queue_stats(factory, config)["ready"] == 0
    daemon.terminate()


def test_second_sigterm_ends_the_grace_at_once(factory: DaemonFactory) -> None:
    config = factory.config(pool={"workers": 1}, shutdown={"grace_seconds": 3600.0})
    assert factory.cli("enqueue", "stubborn", '{"seconds": 600}', config=config).returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: daemon.status()["pools"][0]["running"], what="stubborn running")
    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING")
    wait_until(lambda: daemon.status()["state"] == "draining", what="draining")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 1  # well inside the hour of grace
    assert "again during the drain" in daemon.log()
    assert queue_stats(factory, config)["ready"] == 1


def test_sigint_is_a_graceful_stop_too(factory: DaemonFactory) -> None:
    daemon = factory.start(factory.config())
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 0
    assert "SIGINT: stopping gracefully" in daemon.log()


def test_sigusr1_dumps_running_tasks_and_thread_stacks(factory: DaemonFactory) -> None:
    config = factory.config(pool={"workers": 2})
    result = factory.cli("enqueue", "sleep", '{"seconds": 60}', config=config)
    assert result.returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: daemon.status()["pools"][0]["running"], what="task running")
    daemon.signal(signal.SIGUSR1)
    dump = daemon.wait_log(r"state dump: .*").group(0)
    assert dump
    log = daemon.wait_log(r"job 1 task sleep attempt 1 running [\d.]+s on default-g1-w\d")
    assert log
    assert "thread MainThread:" in daemon.log()
    assert "in sleep" in daemon.log()  # the task's own frame in its thread's stack
    daemon.terminate()


def test_a_thread_a_task_left_running_does_not_keep_the_daemon_alive(
    factory: DaemonFactory,
) -> None:
    """Issue 23, item 5: the interpreter would wait for a non-daemon thread for ever."""
    config = factory.config(tasks={"leave": "tests.support.tasks:leave_thread"})
    daemon = factory.start(config)
    job = enqueue(factory, config, "leave")
    wait_until(lambda: daemon.metric("drainpool_tasks_completed_total", task="leave") == 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, f"job {job}"
    daemon.wait_log("exiting without waiting for threads a task left running: left-by-a-task")
