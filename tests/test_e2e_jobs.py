"""Jobs through the real daemon: retries, dead letters, bad input at enqueue."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.support.daemon import (
    DaemonFactory,
    base_config,
    queue_stats,
    render_config,
    write_atomic,
)
from tests.support.joblog import count
from tests.support.waiting import wait_until


def dead_list(factory: DaemonFactory, config: Path) -> list[dict]:
    result = factory.cli("queue", "dead", "list", "--json", config=config)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_failing_task_is_retried_with_backoff_then_dead_with_its_error(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(queue={"max_attempts": 3, "retry_backoff_seconds": 0.2})
    payload = json.dumps({"log": str(log), "fail": 99})
    assert factory.cli("enqueue", "record", payload, config=config).returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: dead_list(factory, config), what="job dead")
    (dead,) = dead_list(factory, config)
    assert dead["attempts"] == 3
    assert dead["error"] == "RuntimeError: failing attempt 3 on purpose"
    assert "Traceback" in dead["traceback"] and "tests/support/tasks.py" in dead["traceback"]
    assert count(log, "failed")["1"] == 3
    assert daemon.metric("drainpool_tasks_failed_total", task="record") == 3
    # A second job that fails twice, then succeeds on its third attempt.
    ok = json.dumps({"log": str(log), "fail": 2})
    assert factory.cli("enqueue", "record", ok, config=config).returncode == 0
    wait_until(lambda: count(log, "done")["2"] == 1, what="third attempt succeeds")
    assert count(log, "failed")["2"] == 2
    # dead retry puts the dead job back with a fresh attempt count; it fails 3 times again.
    retried = factory.cli("queue", "dead", "retry", config=config)
    assert retried.returncode == 0 and "1 dead job retried" in retried.stdout
    wait_until(lambda: count(log, "failed")["1"] == 6, what="retried job ran again")
    wait_until(lambda: len(dead_list(factory, config)) == 1, what="dead again")
    purged = factory.cli("queue", "dead", "purge", config=config)
    assert purged.returncode == 0 and "1 dead job purged" in purged.stdout
    assert queue_stats(factory, config)["dead"] == 0
    daemon.terminate()


def test_enqueue_rejects_bad_json_and_unknown_tasks(factory: DaemonFactory) -> None:
    config = factory.config()
    bad_json = factory.cli("enqueue", "sleep", "{not json", config=config)
    assert bad_json.returncode == 2
    assert "payload is not valid JSON" in bad_json.stderr
    unknown = factory.cli("enqueue", "slep", "{}", config=config)
    assert unknown.returncode == 2
    assert "unknown task 'slep'; configured tasks: fail, noop, record, sleep, stray, stubborn" in (
        unknown.stderr
    )
    assert len(unknown.stderr.strip().splitlines()) == 1
    stats = queue_stats(factory, config)
    assert stats["ready"] + stats["delayed"] == 0


def test_delayed_job_waits_for_its_time(factory: DaemonFactory, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config()
    payload = json.dumps({"log": str(log)})
    assert factory.cli("enqueue", "record", payload, "--delay", "5", config=config).returncode == 0
    assert queue_stats(factory, config)["delayed"] == 1
    daemon = factory.start(config)
    wait_until(lambda: count(log, "done")["1"] == 1, what="delayed job ran")
    daemon.terminate()


def test_jobs_of_a_task_removed_by_reload_are_dead_lettered(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(reload={"watch": False})
    delayed = factory.cli("enqueue", "sleep", "{}", "--delay", "3600", config=config)
    assert delayed.returncode == 0
    daemon = factory.start(config)
    without_sleep = base_config(tmp_path, reload={"watch": False})
    del without_sleep["tasks"]["sleep"]
    write_atomic(config, render_config(without_sleep))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: dead_list(factory, config), what="job dead-lettered")
    (dead,) = dead_list(factory, config)
    assert dead["error"] == "task 'sleep' is not configured"
    assert daemon.status()["state"] == "running"
    daemon.terminate()
