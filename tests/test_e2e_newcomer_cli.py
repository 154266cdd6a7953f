"""A newcomer's run of the README (issue 23, item 13): the commands answer what was asked.

`reload --dry-run --pid` compares with the running daemon's own file, `status`
still finds a daemon whose file an edit broke, `queue` alone lists its actions,
and a negative --delay is a usage error. Real daemon, real commands.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import DaemonFactory, enqueue
from tests.support.net import free_port

QUIET = {"reload": {"watch": False}}


def test_dry_run_by_pid_reads_the_daemons_own_config(factory: DaemonFactory) -> None:
    config = factory.config(**QUIET, pool={"workers": 2})
    daemon = factory.start(config)
    factory.config(**QUIET, pool={"workers": 3})
    result = factory.cli("reload", "--dry-run", "--pid", str(daemon.pid))  # no --config
    assert result.returncode == 0, result.stderr
    assert "pool default: drain and restart" in result.stdout, result.stdout
    assert "/etc/drainpool" not in result.stderr
    daemon.terminate()


def test_status_and_reload_find_a_daemon_whose_config_is_broken(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(**QUIET, metrics={"port": free_port()})
    daemon = factory.start(config)
    config.write_text(config.read_text().replace("workers = 4", "workers = 0"))  # invalid
    status = factory.cli("status", config=config)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("state        running")
    assert "config is invalid" in status.stderr
    reload = factory.cli("reload", config=config)
    assert reload.returncode == 78 and "rejected" in reload.stderr, reload.stderr
    broken = tmp_path / "unreadable.toml"
    broken.write_text("[metrics\n")
    lost = factory.cli("status", config=broken)
    assert lost.returncode == 1 and "pass --pid" in lost.stderr, lost.stderr
    daemon.terminate()


def test_queue_without_an_action_names_the_actions(factory: DaemonFactory) -> None:
    result = factory.cli("queue", config=factory.config())
    assert result.returncode == 2
    assert "queue needs an action: stats, or dead list|retry|purge" in result.stderr


def test_a_negative_delay_is_a_usage_error(factory: DaemonFactory) -> None:
    config = factory.config()
    for delay in ("-5", "nan"):
        result = factory.cli("enqueue", "noop", "{}", "--delay", delay, config=config)
        assert result.returncode == 2, result
        assert "--delay must be 0 or more seconds" in result.stderr
    assert factory.cli("queue", "stats", "--json", config=config).stdout.count('"ready": 0')


def test_a_job_that_goes_dead_is_logged_with_its_task_attempts_and_error(
    factory: DaemonFactory,
) -> None:
    config = factory.config()  # max_attempts = 3, retries 50 ms apart
    daemon = factory.start(config)
    job_id = enqueue(factory, config, "fail", {"message": "broken on purpose"})
    line = daemon.wait_log(rf"job {job_id} \(task fail\) is dead after 3 attempt\(s\): .*")
    assert "broken on purpose" in line.group(0), line.group(0)
    daemon.terminate()
