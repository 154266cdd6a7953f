"""The supervisor's decisions, driven one `step()` at a time with an injected clock.

Real parts: a SQLite queue in tmp_path, real thread pools running real tasks,
the supervisor's own HTTP endpoint on a free loopback port. The test starts no
thread and never sleeps: it puts what a signal handler or the watcher would
put in the inbox, moves the fake clock, and waits (with a deadline) only for
what the pools' own threads report. Grace deadlines run on the fake clock, so
a drain ends by its deadline exactly when the test moves the clock past it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from drainpool import runtime
from drainpool.drain import SETTLE_SECONDS, Drain
from drainpool.exitcodes import ExitCode
from drainpool.inbox import ConfigChanged
from drainpool.metrics import Metrics
from drainpool.queue import Queue
from drainpool.reloads import MAX_DEBOUNCE_SECONDS, ReloadSchedule
from drainpool.supervisor import Phase, Supervisor
from drainpool.systemd import Notifier

from tests.support.waiting import wait_until

GRACE = 30.0

CONFIG = """\
[pool]
workers = {workers}
[shutdown]
grace_seconds = {grace}
[reload]
watch = false
debounce_ms = 100
[queue]
url = "sqlite:///queue.db"
[metrics]
host = "127.0.0.1"
port = 0
[tasks]
record = "tests.support.tasks:record"
gate = "tests.support.tasks:gate"
"""


class Clock:
    """The supervisor's monotonic clock, moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    sup: Supervisor
    clock: Clock
    config: Path
    producer: Queue
    release: Path  # the `gate` task returns once this file exists

    def turn_until(self, predicate: Any, what: str) -> None:
        """Step the loop (each step waits for the inbox) until `predicate` holds."""
        wait_until(lambda: self.sup.step(0.05) or predicate(), what=what, every=0.01)

    def running(self) -> int:
        return sum(len(p["running"]) for p in self.sup.status()["pools"])

    def start_job(self, task: str, payload: dict[str, Any]) -> None:
        self.producer.enqueue(task, payload)
        self.turn_until(lambda: self.running() == 1, f"{task} running")

    def signal(self, signum: int) -> None:
        self.sup.inbox.put(signum)  # what drainpool.signals' handler does
        self.sup.step()

    def write_config(self, workers: int = 1, extra: str = "") -> None:
        self.config.write_text(CONFIG.format(workers=workers, grace=GRACE) + extra)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    config = tmp_path / "drainpool.toml"
    config.write_text(CONFIG.format(workers=1, grace=GRACE))
    loaded, registry = runtime.load(config)
    clock = Clock()
    sup = Supervisor(loaded, registry, metrics=Metrics(), notifier=Notifier(None), clock=clock)
    producer = runtime.open_queue(loaded)
    release = tmp_path / "release"
    try:
        sup.start()
        yield Rig(sup, clock, config, producer, release)
    finally:
        release.touch()  # lets a stubborn task left behind return
        sup.close()
        producer.close()


def test_start_runs_the_pools_and_serves_readiness(rig: Rig) -> None:
    status = rig.sup.status()
    assert rig.sup.phase is Phase.RUNNING
    assert rig.sup.ready() and rig.sup.healthy()
    assert [(p["name"], p["generation"], p["workers"]) for p in status["pools"]] == [
        ("default", 1, 1)
    ]
    assert rig.sup.endpoint.address[1] > 0  # bound to a free port


def test_sigterm_drains_interrupts_the_running_job_and_stops_clean(rig: Rig) -> None:
    rig.start_job("record", {"log": str(rig.release.with_name("log")), "seconds": 3600})
    rig.signal(signal.SIGTERM)
    assert rig.sup.phase is Phase.DRAINING
    assert not rig.sup.ready()
    rig.turn_until(lambda: rig.sup.phase is Phase.STOPPED, "stopped")
    assert rig.sup.exit_code is ExitCode.OK
    assert rig.producer.stats().ready == 1  # interrupted: released, not lost


def test_a_second_signal_ends_the_grace_at_once(rig: Rig) -> None:
    rig.start_job("gate", {"release": str(rig.release)})
    rig.signal(signal.SIGTERM)
    rig.sup.step()
    assert rig.sup.phase is Phase.DRAINING  # the stubborn job holds the drain; no time passed
    rig.signal(signal.SIGINT)
    rig.turn_until(lambda: rig.sup.phase is Phase.STOPPED, "stopped by the second signal")
    assert rig.clock.now == 1000.0  # ended by the signal, not by the deadline
    assert rig.sup.exit_code is ExitCode.ABANDONED
    assert rig.producer.stats().ready == 1  # abandoned: released


def test_the_drain_deadline_abandons_what_still_runs(rig: Rig) -> None:
    rig.start_job("gate", {"release": str(rig.release)})
    rig.signal(signal.SIGTERM)
    rig.clock.now += GRACE - 0.5  # binary fractions: the sum lands on the deadline exactly
    rig.sup.step()
    assert rig.sup.phase is Phase.DRAINING
    assert rig.running() == 1
    rig.clock.now += 0.5
    rig.turn_until(lambda: rig.sup.phase is Phase.STOPPED, "stopped at the deadline")
    assert rig.sup.exit_code is ExitCode.ABANDONED
    assert rig.producer.stats().ready == 1


def test_a_rejected_reload_keeps_the_running_generation(rig: Rig) -> None:
    rig.write_config(extra="[nonsense]\nkey = 1\n")
    rig.signal(signal.SIGHUP)
    record = rig.sup.reload_record
    assert (record.seq, record.result, record.source) == (1, "rejected", "sighup")
    assert "nonsense" in record.message
    assert rig.sup.phase is Phase.RUNNING
    assert [p["generation"] for p in rig.sup.status()["pools"]] == [1]


def test_an_unchanged_reload_does_nothing(rig: Rig) -> None:
    rig.write_config(extra="# only a comment\n")
    rig.signal(signal.SIGHUP)
    assert (rig.sup.reload_record.seq, rig.sup.reload_record.result) == (1, "unchanged")
    assert rig.sup.phase is Phase.RUNNING
    assert [p["generation"] for p in rig.sup.status()["pools"]] == [1]


def test_an_applied_reload_drains_and_starts_the_next_generation(rig: Rig) -> None:
    rig.start_job("record", {"log": str(rig.release.with_name("log")), "seconds": 3600})
    rig.write_config(workers=2)
    rig.signal(signal.SIGHUP)
    assert rig.sup.phase is Phase.DRAINING
    rig.turn_until(lambda: rig.sup.phase is Phase.RUNNING, "running again")
    record = rig.sup.reload_record
    assert (record.seq, record.result, record.source) == (1, "applied", "sighup")
    pools = rig.sup.status()["pools"]
    assert [(p["generation"], p["workers"]) for p in pools] == [(2, 2)]
    rig.turn_until(lambda: rig.running() == 1, "the interrupted job running again")


def test_a_config_file_change_reloads_after_the_debounce(rig: Rig) -> None:
    rig.sup.inbox.put(ConfigChanged())
    rig.sup.step()
    rig.clock.now += 0.099
    rig.sup.step()
    assert rig.sup.reload_record.seq == 0  # still within the debounce
    rig.clock.now += 0.001
    rig.sup.step()
    assert (rig.sup.reload_record.result, rig.sup.reload_record.source) == (
        "unchanged",
        "config_file",
    )


def test_no_reload_once_a_stop_began(rig: Rig) -> None:
    rig.start_job("gate", {"release": str(rig.release)})
    rig.signal(signal.SIGTERM)
    rig.signal(signal.SIGHUP)
    rig.clock.now += 1.0
    rig.sup.step()
    assert rig.sup.reload_record.seq == 0
    rig.release.touch()
    rig.turn_until(lambda: rig.sup.phase is Phase.STOPPED, "stopped")
    assert rig.sup.exit_code is ExitCode.OK  # the task returned within the grace


# -- the schedule and the drain on their own: plain objects on a fake clock -------------


def test_file_changes_debounce_trailing_but_not_forever() -> None:
    clock = Clock()
    schedule = ReloadSchedule(clock)
    schedule.request("config_file", clock.now + 0.1)
    assert schedule.due == clock.now + 0.1
    while clock.now + 0.05 < 1000.0 + MAX_DEBOUNCE_SECONDS:  # a stream of edits every 50 ms
        clock.now += 0.05
        assert schedule.take() is None
        schedule.request("config_file", clock.now + 0.1)
    assert schedule.due == 1000.0 + MAX_DEBOUNCE_SECONDS
    clock.now = 1000.0 + MAX_DEBOUNCE_SECONDS
    assert schedule.take() == "config_file"
    assert schedule.take() is None


def test_sighup_is_not_delayed_by_a_pending_debounce() -> None:
    clock = Clock()
    schedule = ReloadSchedule(clock)
    schedule.request("config_file", clock.now + 0.1)
    schedule.request("sighup", clock.now)
    assert schedule.take() == "sighup"


@dataclass
class _Config:
    grace_seconds: float


class StubbornPool:
    """A pool generation whose one job never finishes by itself."""

    def __init__(self, grace: float, settles: bool = True) -> None:
        self.config = _Config(grace)
        self.generation = 1
        self.drained = False
        self.running = ["job"]
        self.settles = settles  # False: its queue never answers the release (a hung call)

    def begin_drain(self) -> int:
        return 0

    def abandon(self) -> list[str]:
        abandoned, self.running = self.running, []
        self.drained = self.settles  # as a real pool does once it released the job
        return abandoned

    def snapshot(self) -> dict[str, Any]:
        return {"running": self.running}


def test_each_pool_of_a_drain_has_its_own_deadline() -> None:
    clock = Clock()
    short, long = StubbornPool(1.0), StubbornPool(5.0)
    drain: Drain[StubbornPool] = Drain("reload", clock)
    drain.add({"short": short, "long": long})
    assert drain.next_deadline() == 1001.0
    clock.now += 1.0
    assert drain.expire() == 1
    assert (short.drained, long.drained, drain.finished) == (True, False, False)
    assert drain.next_deadline() == 1005.0
    assert drain.force() == 1
    assert drain.finished and drain.next_deadline() is None
    assert drain.elapsed() == 1.0


def test_a_pool_whose_queue_never_settles_is_given_up_after_the_grace() -> None:
    clock = Clock()
    hung, fine = StubbornPool(1.0, settles=False), StubbornPool(1.0)
    drain: Drain[StubbornPool] = Drain("shutdown", clock)
    drain.add({"hung": hung, "fine": fine})
    clock.now += 1.0
    assert drain.expire() == 2
    assert not drain.finished  # the hung pool still holds its release
    assert drain.next_deadline() == 1001.0 + SETTLE_SECONDS  # the loop wakes for it
    clock.now += SETTLE_SECONDS - 0.5
    assert not drain.give_up()
    clock.now += 0.5
    assert drain.give_up()
    assert drain.finished and drain.next_deadline() is None
    assert not drain.give_up()  # once
