"""The scheduler's logic on injected clocks (issue 20): DST, clock jumps, catch-up, reloads.

Times are plain numbers: no test sleeps. The Scheduler tests run on a real
SQLite queue file (the compare-and-set is the queue's), with the wall and
monotonic clocks given as lists the test moves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from drainpool.metrics import Metrics
from drainpool.queue.sqlite import SqliteQueue
from drainpool.schedule_settings import ScheduleSettings, parse_duration
from drainpool.scheduler import Scheduler
from drainpool.schedules import ON_TIME_SECONDS, Timetable, decide, jitter_offset

BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int, fold: int = 0, zone: ZoneInfo = BERLIN) -> float:
    return datetime(*parts, tzinfo=zone, fold=fold).timestamp()  # type: ignore[misc]


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, BERLIN).strftime("%m-%d %H:%M%z")


def ticks(table: Timetable, after: float, n: int) -> list[str]:
    out = []
    for _ in range(n):
        after = table.next_after(after)
        out.append(local(after))
    return out


def berlin(cron: str) -> Timetable:
    return Timetable.of(ScheduleSettings(cron=cron, task="t", timezone="Europe/Berlin"))


# -- DST ------------------------------------------------------------------------------------


def test_spring_forward_a_tick_in_the_gap_runs_once_right_after_it() -> None:
    table = berlin("30 2 * * *")  # 02:30 does not exist on 2026-03-29 in Berlin
    assert ticks(table, at(2026, 3, 28, 12), 3) == [
        "03-29 03:00+0200",
        "03-30 02:30+0200",
        "03-31 02:30+0200",
    ]
    assert local(table.latest_at(at(2026, 3, 29, 12))) == "03-29 03:00+0200"


def test_spring_forward_an_hourly_rhythm_keeps_elapsed_hours() -> None:
    assert ticks(berlin("15 * * * *"), at(2026, 3, 29, 0, 50), 3) == [
        "03-29 01:15+0100",
        "03-29 03:15+0200",  # one real hour after 01:15: 02:15 does not exist that day
        "03-29 04:15+0200",
    ]


def test_autumn_repeat_each_wall_clock_tick_once() -> None:
    daily = berlin("30 2 * * *")  # 02:30 happens twice on 2026-10-25
    assert ticks(daily, at(2026, 10, 24, 12), 2) == ["10-25 02:30+0200", "10-26 02:30+0100"]
    half_hourly = berlin("*/30 * * * *")
    assert ticks(half_hourly, at(2026, 10, 25, 1, 50), 4) == [
        "10-25 02:00+0200",
        "10-25 02:30+0200",
        "10-25 03:00+0100",  # 02:00 and 02:30 of the second pass are not ticks again
        "10-25 03:30+0100",
    ]
    # Asked from inside the second pass, the next tick is still 03:00, never a repeat.
    assert local(half_hourly.next_after(at(2026, 10, 25, 2, 10, fold=1))) == "10-25 03:00+0100"
    assert local(half_hourly.latest_at(at(2026, 10, 25, 2, 40, fold=1))) == "10-25 02:30+0200"


def test_every_is_aligned_to_the_epoch_and_aliases_read() -> None:
    table = Timetable.of(ScheduleSettings(every="5m", task="t"))
    assert table.next_after(1000.0) == 1200.0 and table.latest_at(1200.0) == 1200.0
    hourly = Timetable.of(ScheduleSettings(cron="@hourly", task="t"))
    assert hourly.next_after(at(2026, 1, 1, 10, 5, zone=ZoneInfo("UTC"))) == at(
        2026, 1, 1, 11, 0, zone=ZoneInfo("UTC")
    )
    assert parse_duration("1h30m") == 5400.0


# -- catch-up and jumps (decide) -------------------------------------------------------------

MINUTELY = Timetable(None, 60.0)


def test_on_time_tick_is_enqueued_and_next_due_is_the_following_tick() -> None:
    d = decide("s", MINUTELY, 0.0, "none", since=600.0, now=660.2)
    assert d.enqueue == (660.0,) and d.skipped == 0 and d.next_due == 720.0


def test_catch_up_none_skips_what_was_missed_while_no_daemon_ran() -> None:
    # Down from 600 to 1000.5: 960 is still on time (the next tick, 1020, has not come);
    # 660 ... 900 were missed.
    d = decide("s", MINUTELY, 0.0, "none", since=600.0, now=1000.5)
    assert d.enqueue == (960.0,) and d.skipped == 5 and d.next_due == 1020.0


def test_catch_up_last_enqueues_the_newest_missed_tick_once() -> None:
    d = decide("s", MINUTELY, 0.0, "last", since=600.0, now=1000.5)
    assert d.enqueue == (900.0, 960.0) and d.skipped == 4
    # Once they are enqueued (since = 960) nothing more is due until 1020.
    assert decide("s", MINUTELY, 0.0, "last", since=960.0, now=1000.5).enqueue == ()


def test_a_clock_jump_forward_enqueues_no_flood() -> None:
    jump = 30 * 86_400.0
    for catch_up, most in (("none", 1), ("last", 2)):
        d = decide("s", MINUTELY, 0.0, catch_up, since=600.0, now=600.0 + jump + 1)
        assert len(d.enqueue) <= most
        assert d.next_due == 600.0 + jump + 60.0


def test_a_tick_late_by_more_than_the_on_time_window_is_missed() -> None:
    daily = Timetable(None, 86_400.0)
    now = 86_400.0 + ON_TIME_SECONDS + 1
    assert decide("s", daily, 0.0, "none", since=0.0, now=now).enqueue == ()
    assert decide("s", daily, 0.0, "last", since=0.0, now=now).enqueue == (86_400.0,)


def test_jitter_is_the_same_on_every_daemon_and_delays_the_due_time() -> None:
    offset = jitter_offset("s", 660.0, 30.0)
    assert 0 <= offset < 30.0 and offset == jitter_offset("s", 660.0, 30.0)
    early = decide("s", MINUTELY, 30.0, "none", since=600.0, now=660.0 + offset / 2)
    assert early.enqueue == () and early.next_due == 660.0 + offset


# -- the Scheduler on a real queue file and injected clocks ---------------------------------


class Clocks:
    def __init__(self, wall: float) -> None:
        self.now = wall
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def set_wall(self, wall: float) -> None:  # a step of the wall clock (date -s, NTP step)
        self.now = wall


@pytest.fixture
def queue(tmp_path: Path) -> SqliteQueue:
    q = SqliteQueue(tmp_path / "queue.db")
    yield q
    q.close()


def scheduler(
    queue: SqliteQueue, clocks: Clocks, schedules: dict[str, ScheduleSettings]
) -> Scheduler:
    """A scheduler that took up `schedules` and made its first pass, as at a daemon's start."""
    s = Scheduler(lambda: queue, Metrics(), wall=lambda: clocks.now, monotonic=lambda: clocks.mono)
    s.update(schedules)
    s.run_once()
    return s


def scheduled_ticks(queue: SqliteQueue) -> list[float]:
    return sorted(info.tick for info in queue.jobs(limit=1000) if info.tick is not None)


EVERY_MINUTE = {"m": ScheduleSettings(every="1m", task="noop")}


def test_two_schedulers_on_one_file_enqueue_each_tick_once(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    first, second = scheduler(queue, clocks, EVERY_MINUTE), scheduler(queue, clocks, EVERY_MINUTE)
    for _ in range(5):
        clocks.advance(60)
        first.run_once()
        second.run_once()
    assert scheduled_ticks(queue) == [6060.0, 6120.0, 6180.0, 6240.0, 6300.0]


def test_a_daemon_back_from_a_pause_adds_no_second_job(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    paused, running = scheduler(queue, clocks, EVERY_MINUTE), scheduler(queue, clocks, EVERY_MINUTE)
    clocks.advance(60)
    paused.run_once()  # it saw tick 6060 ... then SIGSTOP
    for _ in range(3):
        clocks.advance(60)
        running.run_once()
    clocks.advance(10)
    paused.run_once()  # SIGCONT: everything up to 6240 is enqueued already
    assert scheduled_ticks(queue) == [6060.0, 6120.0, 6180.0, 6240.0]


def test_a_clock_set_back_does_not_stall_the_schedule(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    s = scheduler(queue, clocks, EVERY_MINUTE)
    clocks.advance(60)
    s.run_once()
    clocks.set_wall(6060.5 - 3600)  # set back an hour
    clocks.advance(60)
    wait = s.run_once()  # notices the step: goes on from now, not from 6060 in an hour
    assert wait <= 60
    clocks.advance(60)  # 2580.5
    s.run_once()
    assert scheduled_ticks(queue) == [2580.0, 6060.0]


def test_a_stored_tick_slightly_ahead_without_a_step_is_waited_for(queue: SqliteQueue) -> None:
    ahead, behind = Clocks(6000.5), Clocks(6000.5 - 30)  # two daemons, clocks 30 s apart
    a, b = scheduler(queue, ahead, EVERY_MINUTE), scheduler(queue, behind, EVERY_MINUTE)
    ahead.advance(60)
    behind.advance(60)
    a.run_once()  # enqueues 6060
    b.run_once()  # its clock says 6030.5: tick 6000 is before the stored one; nothing
    assert scheduled_ticks(queue) == [6060.0]


def test_a_changed_schedule_counts_from_the_reload_not_from_old_ticks(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    s = scheduler(queue, clocks, {"m": ScheduleSettings(every="1h", task="noop", catch_up="last")})
    clocks.advance(1200)
    s.run_once()  # 7200.5: tick 7200
    clocks.advance(1200)  # 8400.5
    changed = s.update({"m": ScheduleSettings(every="5m", task="noop", catch_up="last")})
    assert changed == ["m"]
    s.run_once()  # 7500 ... 8400 are before the reload's moment: not caught up
    clocks.advance(300)
    s.run_once()
    assert scheduled_ticks(queue) == [7200.0, 8700.0]
    assert s.update({}) == ["m"]


def test_a_daemon_started_after_downtime_catches_up_once(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    last = {"m": ScheduleSettings(every="1m", task="noop", catch_up="last")}
    s = scheduler(queue, clocks, last)
    clocks.advance(60)
    s.run_once()  # 6060
    clocks.advance(3600 + 30)  # down an hour and a half minute; a new daemon starts
    scheduler(queue, clocks, last)
    # 9660 is the on-time tick; 9600, the newest missed, once; 6120 ... 9540 skipped.
    assert scheduled_ticks(queue) == [6060.0, 9600.0, 9660.0]
    none = {"m": ScheduleSettings(every="1m", task="noop", catch_up="none")}
    clocks.advance(600)
    scheduler(queue, clocks, none)
    assert scheduled_ticks(queue)[-2:] == [9660.0, 10260.0]  # 9720 ... 10200 skipped


def test_a_scheduler_made_at_a_reload_takes_its_schedules_up_from_then(
    queue: SqliteQueue,
) -> None:
    """A daemon started without schedules makes its scheduler at the reload that adds one
    (issue 17); that schedule counts from the reload, as one added to a running scheduler
    does, and catches up no tick stored before it."""
    clocks = Clocks(6000.5)
    last = {"m": ScheduleSettings(every="1m", task="noop", catch_up="last")}
    s = scheduler(queue, clocks, last)
    clocks.advance(60)
    s.run_once()  # 6060
    clocks.advance(3600 + 30)  # 9690.5: ticks 6120 ... 9660 went by with no daemon
    late = Scheduler(
        lambda: queue,
        Metrics(),
        wall=lambda: clocks.now,
        monotonic=lambda: clocks.mono,
        taken_up=True,
    )
    assert late.update(last) == ["m"]
    late.run_once()
    assert scheduled_ticks(queue) == [6060.0]  # none of the missed ones, not even the last
    clocks.advance(60)
    late.run_once()
    assert scheduled_ticks(queue) == [6060.0, 9720.0]


def test_view_names_last_and_next_ticks(queue: SqliteQueue) -> None:
    clocks = Clocks(datetime(2026, 1, 1, tzinfo=UTC).timestamp() + 0.5)
    s = scheduler(
        queue,
        clocks,
        {"n": ScheduleSettings(cron="0 3 * * *", task="noop", timezone="Europe/Berlin")},
    )
    [row] = s.view()
    assert row["name"] == "n" and row["last_tick"] is None
    assert local(row["next_tick"]) == "01-01 03:00+0100"


def test_a_disabled_schedule_enqueues_nothing_and_shows_no_next_tick(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    s = scheduler(queue, clocks, EVERY_MINUTE)
    off = {"m": ScheduleSettings(every="1m", task="noop", enabled=False)}
    assert s.update(off) == ["m"]
    clocks.advance(120)
    s.run_once()
    assert scheduled_ticks(queue) == []
    [row] = s.view()
    assert row["enabled"] is False and row["next_tick"] is None
    assert s.update(EVERY_MINUTE) == ["m"]  # enabled again: counts from now
    clocks.advance(60)
    s.run_once()
    assert scheduled_ticks(queue) == [6180.0]


def test_gauges_follow_the_queue_and_a_removed_schedule_loses_them(queue: SqliteQueue) -> None:
    clocks = Clocks(6000.5)
    metrics = Metrics()
    s = Scheduler(lambda: queue, metrics, wall=lambda: clocks.now, monotonic=lambda: clocks.mono)
    s.update(EVERY_MINUTE)
    s.run_once()

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"schedule": "m"})

    last = "drainpool_schedule_last_tick_timestamp_seconds"
    assert sample(last) != sample(last)  # NaN before the first tick
    for _ in range(2):
        clocks.advance(60)
        s.run_once()
    assert sample(last) == 6120.0
    assert sample("drainpool_schedule_period_seconds") == 60.0
    assert sample("drainpool_schedule_enqueued_total") == 2.0
    s.update({})
    assert sample(last) is None
    s.update(EVERY_MINUTE)
    s.run_once()
    assert sample(last) == 6120.0
