"""Time limits (issue 19): `[tasks.x] timeout_seconds` and `enqueue --timeout`, real daemon.

At the limit the job's own signal is set with the reason `timeout`; a task
that stops then is a failed attempt (`timed_out`), retried with backoff and
dead after max_attempts, with the error `timed out after S s`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from drainpool.queue import JobState, from_url

from tests.support.daemon import DaemonFactory, enqueue, render_config, wait_until

URL = "sqlite:///queue.db"


def limited(factory: DaemonFactory, kind: str = "thread", **tasks: Any) -> Path:
    return factory.config(
        pool={"workers": 2, "kind": kind},
        shutdown={"grace_seconds": 1.0},
        queue={"url": URL, "max_attempts": 2, "retry_backoff_seconds": 0.05},
        tasks={
            "limited": {
                "function": "tests.support.cancel_tasks:wait_stop",
                "timeout_seconds": 0.5,
            },
            "free": "tests.support.cancel_tasks:wait_stop",
            "stubborn": {"function": "drainpool.tasks.examples:stubborn", "timeout_seconds": 0.5},
            **tasks,
        },
    )


def dead(factory: DaemonFactory, job_id: str) -> Any:
    with contextlib.closing(from_url(URL, base_dir=factory.tmp)) as queue:

        def ended() -> Any:
            info = queue.job(job_id)
            return info if info is not None and info.state is JobState.DEAD else None

        return wait_until(ended, what=f"job {job_id} dead")


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_task_at_its_limit_is_retried_then_dead(
    factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    daemon = factory.start(limited(factory, kind))
    log = tmp_path / "jobs.log"
    job_id = enqueue(factory, factory.tmp / "drainpool.toml", "limited", {"log": str(log)})
    info = dead(factory, job_id)
    assert info.attempts == 2
    assert info.error == "timed out after 0.5 s"
    lines = log.read_text().splitlines()
    assert [line for line in lines if line.startswith("stopped")] == [
        f"stopped {job_id} 1 timeout",
        f"stopped {job_id} 2 timeout",
    ]
    assert daemon.metric("drainpool_tasks_timed_out_total", task="limited") == 2
    assert daemon.metric("drainpool_tasks_failed_total", task="limited") == 0


def test_enqueue_timeout_limits_one_job_of_a_task_without_a_limit(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    cfg = limited(factory)
    daemon = factory.start(cfg)
    log = tmp_path / "jobs.log"
    job_id = enqueue(factory, cfg, "free", {"log": str(log)}, "--timeout", "0.4")
    info = dead(factory, job_id)
    assert info.error == "timed out after 0.4 s" and info.timeout == 0.4
    quick = enqueue(factory, cfg, "free", {"log": str(log), "seconds": 0})
    with contextlib.closing(from_url(URL, base_dir=factory.tmp)) as queue:
        wait_until(lambda: (i := queue.job(quick)) is not None and i.state is JobState.COMPLETED)
    assert daemon.metric("drainpool_tasks_timed_out_total", task="free") == 2


def test_a_task_ignoring_its_limit_is_abandoned_a_grace_later(factory: DaemonFactory) -> None:
    daemon = factory.start(limited(factory))
    job_id = enqueue(factory, factory.tmp / "drainpool.toml", "stubborn", {"seconds": 30})
    info = dead(factory, job_id)
    assert info.error == "timed out after 0.5 s"
    assert "still ran 1.0s after its timeout: abandoned" in daemon.log()
    assert daemon.metric("drainpool_tasks_timed_out_total", task="stubborn") == 2


def test_a_command_timeout_is_the_timed_out_outcome(factory: DaemonFactory) -> None:
    cfg = limited(factory, pause={"command": ["sleep", "30"], "timeout_seconds": 0.3})
    daemon = factory.start(cfg)
    job_id = enqueue(factory, cfg, "pause", {})
    info = dead(factory, job_id)
    assert info.error == "sleep timed out after 0.3s"
    assert daemon.metric("drainpool_tasks_timed_out_total", task="pause") == 2


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "31700000", '"ten"'])
def test_a_bad_timeout_seconds_is_a_config_error_naming_the_key(
    factory: DaemonFactory, bad: str
) -> None:
    path = factory.tmp / "bad.toml"
    text = render_config({"queue": {"url": URL}, "metrics": {"port": 0}})
    path.write_text(
        text
        + f'[tasks.export]\nfunction = "drainpool.tasks.examples:noop"\ntimeout_seconds = {bad}\n'
    )
    done = factory.cli("check-config", config=path)
    assert done.returncode == 78, done.stderr
    assert "tasks.export.timeout_seconds" in done.stderr
    command = factory.tmp / "cmd.toml"
    command.write_text(text + f'[tasks.c]\ncommand = ["true"]\ntimeout_seconds = {bad}\n')
    refused = factory.cli("check-config", config=command)
    assert refused.returncode == 78 and "tasks.c.timeout_seconds" in refused.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", str(400 * 86400), "soon"])
def test_a_bad_enqueue_timeout_is_a_usage_error(factory: DaemonFactory, bad: str) -> None:
    cfg = limited(factory)
    done = factory.cli("enqueue", "free", "{}", "--timeout", bad, config=cfg)
    assert done.returncode == 2
    assert "--timeout" in done.stderr
    stats = factory.cli("queue", "stats", "--json", config=cfg)
    assert '"ready": 0' in stats.stdout


def test_a_reload_with_a_bad_limit_is_rejected_and_the_old_one_kept(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    cfg = factory.config(
        reload={"watch": False},
        shutdown={"grace_seconds": 1.0},
        queue={"url": URL, "max_attempts": 2, "retry_backoff_seconds": 0.05},
        tasks={
            "limited": {"function": "tests.support.cancel_tasks:wait_stop", "timeout_seconds": 0.5}
        },
    )
    daemon = factory.start(cfg)
    cfg.write_text(cfg.read_text().replace("timeout_seconds = 0.5", "timeout_seconds = -3"))
    refused = factory.cli("reload", "--pid", str(daemon.pid))
    assert refused.returncode == 78, (refused.returncode, refused.stderr)
    assert "tasks.limited.timeout_seconds" in daemon.log()
    with contextlib.closing(from_url(URL, base_dir=factory.tmp)) as queue:  # the file is bad
        job_id = queue.enqueue("limited", {"log": str(tmp_path / "jobs.log")})
    assert dead(factory, job_id).error == "timed out after 0.5 s"  # the old limit runs on
