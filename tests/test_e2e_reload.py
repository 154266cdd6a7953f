"""Reloading the real daemon: SIGHUP, every way of editing the file, bad files, bursts."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from drainpool.queue import from_url

from tests.support.daemon import Daemon, DaemonFactory, base_config, render_config, write_atomic
from tests.support.joblog import count
from tests.support.net import free_port
from tests.support.waiting import wait_until


def workers_are(daemon: Daemon, n: int, generation: int) -> bool:
    return (
        daemon.metric("drainpool_pool_workers") == n
        and daemon.metric("drainpool_pool_generation") == generation
    )


def test_sighup_starts_a_new_generation_and_reruns_interrupted_jobs(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 2}, reload={"watch": False})
    for _ in range(2):
        payload = json.dumps({"log": str(log), "seconds": 3600})
        assert factory.cli("enqueue", "record", payload, config=config).returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: sum(count(log, "start").values()) == 2, what="both running")
    factory.config(pool={"workers": 5}, reload={"watch": False})
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: workers_are(daemon, 5, 2), what="generation 2 with 5 workers")
    daemon.notify.wait_for("RELOADING")
    daemon.notify.wait_for("READY", 2)
    assert sum(count(log, "interrupted").values()) == 2
    # The interrupted jobs run again in generation 2, at their first attempt still.
    wait_until(lambda: sum(count(log, "start").values()) == 4, what="jobs re-run")
    assert "start 1 1" in log.read_text().split("interrupted 1 1")[1]
    assert daemon.metric("drainpool_pool_restarts_total", reason="sighup") == 1
    assert daemon.metric("drainpool_config_reloads_total", result="applied") == 1
    assert daemon.metric("drainpool_tasks_interrupted_total", task="record") == 2
    daemon.terminate()


def _atomic_rename(path: Path, text: str) -> None:
    write_atomic(path, text)


def _truncate_and_write(path: Path, text: str) -> None:
    with open(path, "r+") as f:
        f.truncate(0)
        f.flush()
        f.write(text)


def _delete_and_recreate(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


EDITS: dict[str, Callable[[Path, str], None]] = {
    "atomic-rename": _atomic_rename,
    "truncate-and-write": _truncate_and_write,
    "delete-and-recreate": _delete_and_recreate,
}


@pytest.mark.parametrize("style", sorted(EDITS))
def test_config_edit_reloads(factory: DaemonFactory, tmp_path: Path, style: str) -> None:
    config = factory.config(pool={"workers": 2})
    daemon = factory.start(config)
    EDITS[style](config, render_config(base_config(tmp_path, pool={"workers": 6})))
    wait_until(lambda: workers_are(daemon, 6, 2), what=f"reload after {style}")
    assert daemon.metric("drainpool_pool_restarts_total", reason="config_file") == 1
    daemon.terminate()


def test_configmap_symlink_swap_reloads(factory: DaemonFactory, tmp_path: Path) -> None:
    """The Kubernetes way: drainpool.toml -> ..data/drainpool.toml, ..data -> ..v1, swapped."""
    confdir = tmp_path / "configmap"
    (confdir / "..v1").mkdir(parents=True)
    (confdir / "..v1" / "drainpool.toml").write_text(
        render_config(base_config(tmp_path, pool={"workers": 2}))
    )
    os.symlink("..v1", confdir / "..data")
    os.symlink("..data/drainpool.toml", confdir / "drainpool.toml")
    daemon = factory.start(confdir / "drainpool.toml")
    (confdir / "..v2").mkdir()
    (confdir / "..v2" / "drainpool.toml").write_text(
        render_config(base_config(tmp_path, pool={"workers": 7}))
    )
    os.symlink("..v2", confdir / "..data_tmp")
    os.replace(confdir / "..data_tmp", confdir / "..data")
    for leftover in (confdir / "..v1").iterdir():
        leftover.unlink()
    (confdir / "..v1").rmdir()
    wait_until(lambda: workers_are(daemon, 7, 2), what="reload after the ..data swap")
    daemon.terminate()


INVALID = {
    "toml-syntax": ("[pool]\nworkers = = 3\n", "TOML syntax error"),
    "wrong-type": ('[pool]\nworkers = "many"\n', "pool.workers: Input should be a valid integer"),
    "out-of-range": (
        "[pool]\nworkers = 0\n",
        "pool.workers: Input should be greater than or equal to 1",
    ),
    "unknown-key": ("[pool]\nworkers = 2\nworkerz = 3\n", "pool.workerz: unknown key"),
    "bad-task": (
        '[tasks]\nghost = "no_such_module_x:run"\n',
        "tasks.ghost: cannot import 'no_such_module_x:run'",
    ),
}


def _invalid_text(tmp_path: Path, fragment: str) -> str:
    """A full valid config with `fragment` appended: later tables override or break it."""
    good = base_config(tmp_path)
    if fragment.startswith("[pool]"):
        good.pop("pool")
    if fragment.startswith("[tasks]"):
        good.pop("tasks")
    return render_config(good) + fragment


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_config_at_reload_keeps_the_old_generation(
    factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    fragment, message = INVALID[kind]
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 3})
    daemon = factory.start(config)
    write_atomic(config, _invalid_text(tmp_path, fragment))
    wait_until(
        lambda: daemon.metric("drainpool_config_reloads_total", result="rejected") == 1,
        what="rejection counted",
    )
    assert message in daemon.log()
    assert str(config) in daemon.log()
    assert daemon.metric("drainpool_config_last_reload_successful") == 0
    assert workers_are(daemon, 3, 1)
    # The old generation keeps processing (the CLI cannot enqueue: its config is the bad file).
    queue = from_url("sqlite:///queue.db", base_dir=tmp_path)
    queue.enqueue("record", {"log": str(log), "seconds": 0})
    queue.close()
    wait_until(lambda: count(log, "done"), what="old generation still processing")
    # `drainpool reload` reports the rejection with exit 78.
    result = factory.cli("reload", "--pid", str(daemon.pid))
    assert result.returncode == 78, result.stderr
    assert message in result.stderr
    daemon.terminate()


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_config_at_start_exits_78(
    factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    fragment, message = INVALID[kind]
    config = tmp_path / "bad.toml"
    config.write_text(_invalid_text(tmp_path, fragment))
    daemon = factory.start(config, ready=False)
    assert daemon.wait_exit() == 78
    assert message in daemon.log()
    check = factory.cli("check-config", config=config)
    assert check.returncode == 78 and message in check.stderr


def test_a_burst_of_edits_coalesces_and_ends_on_the_last_file(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(pool={"workers": 1})
    daemon = factory.start(config)
    for i in range(50):
        write_atomic(config, render_config(base_config(tmp_path, pool={"workers": 2 + i % 9})))
    final_workers = 2 + 49 % 9
    wait_until(lambda: daemon.metric("drainpool_pool_workers") == final_workers, what="last file")
    reloads = sum(
        daemon.metric("drainpool_config_reloads_total", result=r)
        for r in ("applied", "unchanged", "rejected")
    )
    assert 1 <= reloads <= 5, f"{reloads} reloads for one burst"
    daemon.terminate()


def test_reload_command_waits_for_the_new_generation(factory: DaemonFactory) -> None:
    metrics = {"port": free_port()}
    config = factory.config(pool={"workers": 2}, reload={"watch": False}, metrics=metrics)
    daemon = factory.start(config)
    unchanged = factory.cli("reload", "--pid", str(daemon.pid))
    assert unchanged.returncode == 0 and "reload unchanged" in unchanged.stdout
    factory.config(pool={"workers": 4}, reload={"watch": False}, metrics=metrics)
    applied = factory.cli("reload", config=config)  # found through the config's endpoint
    assert applied.returncode == 0, applied.stderr
    assert "reload applied" in applied.stdout and "(4 workers)" in applied.stdout
    assert workers_are(daemon, 4, 2)  # no waiting: the command returned after the swap
    daemon.terminate()
