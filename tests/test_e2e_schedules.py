"""Schedules with real daemons (issue 20): once per tick across daemons, reload, bad input.

Three daemons share one SQLite file, or one redis-server, with an `every = "1s"`
schedule; one is paused (SIGSTOP, later SIGCONT) and one killed with SIGKILL
while ticks go by. The queue's records then show exactly one job per tick and
no tick missing, since one daemon ran throughout. catch_up = "last" lets a
daemon that was late by more than a tick on the shared machine still enqueue
that tick (README, "Schedules"); the bound is a dozen ticks.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from drainpool.queue import Queue
from drainpool.queue.redis import RedisQueue
from drainpool.queue.sqlite import SqliteQueue

from tests.support.daemon import (
    DaemonFactory,
    daemons,
    render_config,
    wait_until,
    write_atomic,
)
from tests.support.daemon import (
    base_config as base,
)
from tests.support.redis_server import redis_servers

TICK = {"every": "1s", "task": "noop", "catch_up": "last"}


def scheduled(queue: Queue, name: str = "tick") -> list[float]:
    return sorted(
        info.tick for info in queue.jobs(limit=5000) if info.schedule == name and info.tick
    )


def write_config(factory: DaemonFactory, schedules: dict[str, dict], **overrides: dict) -> Path:
    config = base(factory.tmp, **overrides)
    config["schedules"] = schedules
    path = factory.tmp / "drainpool.toml"
    write_atomic(path, render_config(config))
    return path


def more_ticks(queue: Queue, n: int) -> None:
    have = len(scheduled(queue))
    wait_until(lambda: len(scheduled(queue)) >= have + n, 30, f"{n} more ticks")


def pause_kill_and_check(factory: DaemonFactory, config: Path, queue: Queue) -> None:
    paused, killed, steady = (factory.start(config) for _ in range(3))
    more_ticks(queue, 2)
    paused.signal(signal.SIGSTOP)
    more_ticks(queue, 3)
    killed.signal(signal.SIGKILL)
    killed.proc.wait(10)
    more_ticks(queue, 3)
    paused.signal(signal.SIGCONT)
    more_ticks(queue, 3)
    for daemon in (paused, steady):
        daemon.terminate()
    ticks = scheduled(queue)
    assert len(ticks) == len(set(ticks)), f"a tick was enqueued twice: {ticks}"
    assert ticks == [ticks[0] + n for n in range(len(ticks))], f"a tick is missing: {ticks}"
    enqueued_by = sum(
        len(re.findall(r"schedule tick: tick \S+ enqueued", d.log())) for d in factory.started
    )
    assert enqueued_by == len(ticks)


def test_three_daemons_on_one_sqlite_file_enqueue_each_tick_once(tmp_path: Path) -> None:
    with daemons(tmp_path) as factory:
        config = write_config(factory, {"tick": TICK})
        queue = SqliteQueue(tmp_path / "queue.db")
        try:
            pause_kill_and_check(factory, config, queue)
        finally:
            queue.close()


def test_three_daemons_on_one_redis_enqueue_each_tick_once(tmp_path: Path) -> None:
    with redis_servers(tmp_path / "redis") as start, daemons(tmp_path) as factory:
        server = start()
        config = write_config(factory, {"tick": TICK}, queue={"url": server.url})
        queue = RedisQueue.from_url(server.url)
        try:
            pause_kill_and_check(factory, config, queue)
        finally:
            queue.close()


def test_a_reload_changes_a_schedule_under_load_and_restarts_no_pool(tmp_path: Path) -> None:
    with daemons(tmp_path) as factory:
        config = write_config(factory, {"tick": TICK}, pool={"workers": 2})
        daemon = factory.start(config)
        queue = SqliteQueue(tmp_path / "queue.db")
        try:
            for _ in range(6):  # load: both workers busy across the reload
                queue.enqueue("sleep", {"seconds": 3})
            more_ticks(queue, 2)
            write_config(
                factory,
                {"tick": {**TICK, "every": "2s"}, "added": {"every": "1s", "task": "noop"}},
                pool={"workers": 2},
            )
            line = daemon.wait_log(r"reload applied: .*schedules changed: (.*)")
            assert line.group(1).strip() == "added, tick"
            reloaded = len(scheduled(queue))
            wait_until(lambda: len(scheduled(queue)) >= reloaded + 3, 30, "ticks after reload")
            wait_until(lambda: scheduled(queue, "added"), 30, "the added schedule's first tick")
            after = scheduled(queue)[reloaded + 1 :]
            assert all(tick % 2 == 0 for tick in after), after
            assert "restarts" not in daemon.log()
            assert daemon.metric("drainpool_pool_generation") == 1
            assert daemon.metric("drainpool_schedule_enqueued_total", schedule="tick") >= 3
            assert daemon.metric("drainpool_schedule_last_tick_timestamp_seconds") > 0
            code, body = daemon.get("/api/schedules")
            assert code == 200
            rows = {row["name"]: row for row in json.loads(body)}
            assert rows["tick"]["expression"] == "every 2s" and rows["added"]["enabled"]
            page = daemon.get("/")[1]
            assert 'id="schedules"' in page  # the console's table, filled from /api/schedules
            daemon.terminate()
        finally:
            queue.close()


def test_no_scheduler_thread_until_a_reload_adds_the_first_schedule(tmp_path: Path) -> None:
    """Issue 17: a daemon without schedules runs no scheduler thread (nor a job watch
    before its first job); the reload that adds a schedule starts one, ticking from then."""
    with daemons(tmp_path) as factory:
        config = write_config(factory, {})
        daemon = factory.start(config)
        queue = SqliteQueue(tmp_path / "queue.db")
        try:
            daemon.signal(signal.SIGUSR1)
            daemon.wait_log(r"state dump:")
            write_config(factory, {"tick": TICK})
            daemon.wait_log(r"reload applied: .*schedules changed: tick")
            log = daemon.log()
            dump = log[log.index("state dump:") : log.index("reload applied")]
            threads = re.findall(r"^  thread (\S+):$", dump, re.MULTILINE)
            assert "MainThread" in threads, dump
            assert "drainpool-scheduler" not in threads, threads
            assert not [name for name in threads if name.endswith("-jobwatch")], threads
            more_ticks(queue, 2)
            assert daemon.metric("drainpool_schedule_enqueued_total", schedule="tick") >= 2
            daemon.terminate()
        finally:
            queue.close()


def test_schedule_list_and_run_from_the_command_line(tmp_path: Path) -> None:
    with daemons(tmp_path) as factory:
        nightly = {"cron": "30 2 * * *", "task": "noop", "timezone": "Europe/Berlin"}
        config = write_config(factory, {"nightly": nightly})
        listed = factory.cli("schedule", "list", "--json", config=config)
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert row["expression"] == "30 2 * * *" and row["last_tick"] is None
        ran = factory.cli("schedule", "run", "nightly", config=config)
        assert ran.returncode == 0, ran.stderr
        queue = SqliteQueue(tmp_path / "queue.db")
        try:
            info = queue.job(ran.stdout.strip())
            assert info is not None and info.schedule == "nightly" and info.tick is None
        finally:
            queue.close()
        unknown = factory.cli("schedule", "run", "daily", config=config)
        assert unknown.returncode == 2 and "unknown schedule 'daily'" in unknown.stderr


BAD_INPUT: list[tuple[dict, str]] = [
    ({"cron": "61 * * * *", "task": "noop"}, r":\d+: schedules\.bad\.cron: .*not a valid cron"),
    ({"cron": "* * *", "task": "noop"}, r":\d+: schedules\.bad\.cron: .*five fields"),
    (
        {"every": "1m", "task": "noop", "timezone": "Mars/Base"},
        r":\d+: schedules\.bad\.timezone: 'Mars/Base' is not an IANA time zone",
    ),
    ({"every": "0s", "task": "noop"}, r":\d+: schedules\.bad\.every: .*at most once a second"),
    ({"every": "500ms", "task": "noop"}, r":\d+: schedules\.bad\.every: .*once a second"),
    ({"every": "1m", "task": "nope"}, r":\d+: schedules\.bad\.task: 'nope' is not a configured"),
    ({"every": "1m", "task": "noop", "payload": 3}, r":\d+: schedules\.bad\.payload: must be"),
    (
        {"every": "1m", "cron": "@daily", "task": "noop"},
        r":\d+: schedules\.bad: both cron and every",
    ),
]


@pytest.mark.parametrize(("schedule", "message"), BAD_INPUT)
def test_bad_schedule_exits_78_at_start_with_one_line(
    tmp_path: Path, schedule: dict, message: str
) -> None:
    with daemons(tmp_path) as factory:
        config = write_config(factory, {"bad": schedule})
        check = factory.cli("check-config", config=config)
        assert check.returncode == 78
        [line] = check.stderr.strip().splitlines()
        assert str(config) in line and re.search(message, line), line
        daemon = factory.start(config, ready=False)
        assert daemon.wait_exit() == 78


def test_bad_schedule_at_reload_is_rejected_and_the_old_ones_keep_running(
    tmp_path: Path,
) -> None:
    with daemons(tmp_path) as factory:
        config = write_config(factory, {"tick": TICK})
        daemon = factory.start(config)
        queue = SqliteQueue(tmp_path / "queue.db")
        try:
            more_ticks(queue, 1)

            def rejections() -> float:
                return daemon.metric("drainpool_config_reloads_total", result="rejected")

            for n, (schedule, message) in enumerate(BAD_INPUT, start=1):
                write_config(factory, {"tick": TICK, "bad": schedule})
                wait_until(lambda n=n: rejections() >= n, 30, f"rejection {n}")
                assert re.search(message, daemon.log())
            more_ticks(queue, 2)  # the old schedule still runs
            assert daemon.metric("drainpool_pool_generation") == 1
            daemon.terminate()
        finally:
            queue.close()
