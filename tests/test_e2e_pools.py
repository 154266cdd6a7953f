"""Several named pools in one daemon, and a reload that restarts only what changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, DaemonFactory, base_config, render_config, write_atomic
from tests.support.joblog import count
from tests.support.waiting import wait_until

TASKS = {
    "quick": "tests.support.tasks:record",
    "heavy": "tests.support.tasks:record",
    "other": "drainpool.tasks.examples:noop",
}


def pools_config(tmp: Path, pools: dict[str, dict[str, Any]], **extra: Any) -> str:
    config = base_config(tmp, reload={"watch": False}, **extra)
    del config["pool"]
    config["tasks"] = dict(TASKS)
    config["pools"] = pools
    return render_config(config)


def pool_view(daemon: Daemon) -> dict[str, tuple[int, int]]:
    """name -> (generation, workers) as the daemon reports it."""
    return {p["name"]: (p["generation"], p["workers"]) for p in daemon.status()["pools"]}


TWO_POOLS = {
    "quick": {"workers": 2, "tasks": ["quick", "other"]},
    "heavy": {"workers": 1, "tasks": ["heavy"], "grace_seconds": 30.0},
}


def enqueue(factory: DaemonFactory, config: Path, task: str, payload: dict[str, Any]) -> None:
    result = factory.cli("enqueue", task, json.dumps(payload), config=config)
    assert result.returncode == 0, result.stderr


def test_changing_one_pool_leaves_the_other_running(factory: DaemonFactory, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    config = tmp_path / "drainpool.toml"
    write_atomic(config, pools_config(tmp_path, TWO_POOLS))
    enqueue(factory, config, "heavy", {"log": str(log), "seconds": 4})
    enqueue(factory, config, "quick", {"log": str(log), "seconds": 3600})
    daemon = factory.start(config)
    assert pool_view(daemon) == {"quick": (1, 2), "heavy": (1, 1)}
    wait_until(lambda: len(count(log, "start")) == 2, what="both jobs running")

    changed = {**TWO_POOLS, "quick": {"workers": 5, "prefetch": 0, "tasks": ["quick", "other"]}}
    write_atomic(config, pools_config(tmp_path, changed))
    dry = factory.cli("reload", "--dry-run", "--pid", str(daemon.pid), config=config)
    assert dry.returncode == 0, dry.stderr
    assert "pool quick: drain and restart (workers 2 -> 5, prefetch auto -> 0)" in dry.stdout
    assert "pool heavy: unchanged (keeps running)" in dry.stdout
    assert pool_view(daemon) == {"quick": (1, 2), "heavy": (1, 1)}  # the dry run changed nothing

    result = factory.cli("reload", "--pid", str(daemon.pid))
    assert result.returncode == 0, result.stderr
    assert pool_view(daemon) == {"quick": (2, 5), "heavy": (1, 1)}
    restarted = "pool quick restarts (workers 2 -> 5, prefetch auto -> 0); unchanged: heavy"
    assert restarted in daemon.log()
    # quick's job was interrupted by its pool's restart; heavy's ran on and completed.
    assert count(log, "interrupted") == {"2": 1}
    wait_until(lambda: count(log, "done").get("1") == 1, what="heavy job completed")
    assert "1" not in count(log, "interrupted")
    assert daemon.metric("drainpool_tasks_interrupted_total", task="heavy") == 0
    daemon.terminate()


def test_add_and_remove_pools_moves_tasks(factory: DaemonFactory, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    config = tmp_path / "drainpool.toml"
    write_atomic(config, pools_config(tmp_path, TWO_POOLS))
    daemon = factory.start(config)
    enqueue(factory, config, "heavy", {"log": str(log), "seconds": 3600})
    wait_until(lambda: count(log, "start").get("1") == 1, what="heavy job running")

    # Remove `heavy`; a new pool `bulk` now serves its task.
    moved = {
        "quick": TWO_POOLS["quick"],
        "bulk": {"workers": 3, "tasks": ["heavy"]},
    }
    write_atomic(config, pools_config(tmp_path, moved))
    dry = factory.cli("check-config", "--diff", "--pid", str(daemon.pid), config=config)
    assert dry.returncode == 0, dry.stderr
    assert "pool heavy: drain and stop (removed)" in dry.stdout
    assert "pool bulk: start (new pool)" in dry.stdout
    assert "pool quick: unchanged (keeps running)" in dry.stdout
    assert factory.cli("reload", "--pid", str(daemon.pid)).returncode == 0
    assert pool_view(daemon) == {"quick": (1, 2), "bulk": (1, 3)}
    # The job drained from `heavy` runs again in `bulk`.
    wait_until(lambda: count(log, "start").get("1") == 2, what="job re-run by the new pool")
    running = {p["name"]: p["running"] for p in daemon.status()["pools"]}
    assert [r["job_id"] for r in running["bulk"]] == ["1"]
    daemon.terminate()


INVALID_POOLS = {
    "task-in-two-pools": (
        {
            "quick": {"workers": 1, "tasks": ["quick", "other"]},
            "heavy": {"workers": 1, "tasks": ["heavy", "quick"]},
        },
        "pools.heavy.tasks: task 'quick' is already served by pool 'quick'",
    ),
    "task-in-none": (
        {"quick": {"workers": 1, "tasks": ["quick"]}, "heavy": {"workers": 1, "tasks": ["heavy"]}},
        "tasks.other: served by no pool",
    ),
    "zero-workers": (
        {
            "quick": {"workers": 0, "tasks": ["quick", "other"]},
            "heavy": {"workers": 1, "tasks": ["heavy"]},
        },
        "pools.quick.workers: Input should be greater than or equal to 1",
    ),
    "unknown-task": (
        {**TWO_POOLS, "extra": {"workers": 1, "tasks": ["ghost"]}},
        "pools.extra.tasks: 'ghost' is not a configured task",
    ),
}


@pytest.mark.parametrize("kind", sorted(INVALID_POOLS))
def test_invalid_pool_configs_are_rejected(
    factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    pools, message = INVALID_POOLS[kind]
    config = tmp_path / "drainpool.toml"
    write_atomic(config, pools_config(tmp_path, TWO_POOLS))
    daemon = factory.start(config)
    write_atomic(config, pools_config(tmp_path, pools))
    result = factory.cli("reload", "--pid", str(daemon.pid))
    assert result.returncode == 78
    assert message in result.stderr
    assert pool_view(daemon) == {"quick": (1, 2), "heavy": (1, 1)}
    daemon.terminate()
    at_start = factory.start(config, ready=False)
    assert at_start.wait_exit() == 78
    assert message in at_start.log()
