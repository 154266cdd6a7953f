"""When a schedule's ticks fall, and which of them to enqueue now: pure logic, no I/O.

Every time here is a Unix timestamp (wall clock, seconds); the caller passes
`now`, so tests drive DST changes and clock jumps with plain numbers. A tick is
named by its instant, the same on every daemon: cron ticks come from cronsim
in the schedule's zone, `every` ticks are whole multiples of the period since
the Unix epoch (so daemons agree without talking to each other).

Rules (README, "Schedules"):
- DST: a wall-clock time runs once. A tick in the spring-forward gap runs once,
  at the first minute after the gap (cronsim's Debian-cron rule); a wall-clock
  time that the autumn change repeats runs at its first occurrence only.
- A tick is on time until the next tick or for ON_TIME_SECONDS after it is due,
  whichever comes first. A tick no daemon enqueued in that window was missed:
  catch_up "none" skips it, "last" enqueues the newest missed tick once. So a
  clock that jumps forward, or daemons that come back, never flood the queue.
- `since` is the tick after which ticks count: the queue's last enqueued tick,
  or the moment this daemon took the schedule up (added or changed by a reload,
  or a clock stepped back), whichever is later; see drainpool.scheduler.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim

from drainpool.schedule_settings import ScheduleSettings, cron_fields, parse_duration

ON_TIME_SECONDS = 60.0  # the longest a tick may wait for a daemon and still count as on time
MAX_COUNTED_SKIPS = 10_000  # skipped ticks counted one by one, at most (a year of minutes ...)


@dataclass(frozen=True, slots=True)
class Timetable:
    """The ticks of one schedule: a cron expression in a zone, or a fixed period."""

    cron: str | None
    period: float | None
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    @classmethod
    def of(cls, schedule: ScheduleSettings) -> Timetable:
        if schedule.cron is not None:
            return cls(cron_fields(schedule.cron), None, ZoneInfo(schedule.timezone))
        assert schedule.every is not None
        return cls(None, parse_duration(schedule.every), ZoneInfo(schedule.timezone))

    @property
    def expression(self) -> str:
        return self.cron if self.cron is not None else f"every {self.period:g}s"

    def next_after(self, ts: float) -> float:
        """The first tick strictly after `ts`."""
        if self.period is not None:
            return (ts // self.period + 1) * self.period
        assert self.cron is not None
        start = datetime.fromtimestamp(ts, self.zone)
        for local in CronSim(self.cron, start):
            tick = local.timestamp()
            # From the second pass of a repeated hour cronsim may give a first-pass time
            # (earlier than `ts`) or the repeat of a time: neither is a new tick.
            if tick > ts and not _repeated(local):
                return tick
        raise ValueError(f"cron {self.cron!r} has no tick after {ts}")  # cronsim's 50 years

    def latest_at(self, ts: float) -> float | None:
        """The last tick at or before `ts` (None if there is none in 50 years)."""
        if self.period is not None:
            return (ts // self.period) * self.period
        assert self.cron is not None
        # Forward steps only (cronsim's reverse walk treats DST changes its own way): from
        # windows that double until one holds a tick, then to the last tick in it.
        window = 60.0
        while window < 60 * 366 * 86_400:
            tick = self.next_after(ts - window)
            if tick <= ts:
                while (later := self.next_after(tick)) <= ts:
                    tick = later
                return tick
            window *= 2
        return None

    def count_between(self, after: float, until: float) -> int:
        """Ticks in (after, until], counted up to MAX_COUNTED_SKIPS."""
        if until <= after:
            return 0
        if self.period is not None:
            return int(until // self.period - after // self.period)
        count, tick = 0, self.next_after(after)
        while tick <= until and count < MAX_COUNTED_SKIPS:
            count, tick = count + 1, self.next_after(tick)
        return count


def _repeated(local: datetime) -> bool:
    """Whether `local` is the second occurrence of a wall-clock time (autumn repeat)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def jitter_offset(name: str, tick: float, jitter_seconds: float) -> float:
    """The same delay on every daemon for one tick (a hash, not a random draw)."""
    if jitter_seconds <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{name}@{tick!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 * jitter_seconds


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one schedule now: ticks to enqueue (oldest first), ticks skipped,
    and when to look again."""

    enqueue: tuple[float, ...]
    skipped: int
    next_due: float  # wall clock: the next tick's due time (jitter included)
    upto: float | None = None  # the newest tick this decision covers (enqueued or skipped)


def decide(
    name: str, table: Timetable, jitter_seconds: float, catch_up: str, since: float, now: float
) -> Decision:
    """The ticks after `since` due by `now`: the on-time one, and the newest missed one
    if catch_up is "last"; every other tick in between is skipped."""

    def due(tick: float) -> float:
        return tick + jitter_offset(name, tick, jitter_seconds)

    latest = table.latest_at(now)
    if latest is not None and due(latest) > now:  # its jitter has not run out yet
        latest = table.latest_at(latest - 1e-6)
    upcoming = table.next_after(max(since, now) if latest is None else max(since, latest))
    if latest is None or latest <= since:
        return Decision((), 0, due(upcoming))
    window = min(table.next_after(latest) - latest, ON_TIME_SECONDS)
    on_time = now - due(latest) < window
    enqueue: list[float] = []
    newest_missed = latest if not on_time else table.latest_at(latest - 1e-6)
    missed = 0
    if newest_missed is not None and newest_missed > since:
        missed = table.count_between(since, newest_missed)
        if catch_up == "last":
            enqueue.append(newest_missed)
            missed -= 1
    if on_time:
        enqueue.append(latest)
    return Decision(tuple(enqueue), missed, due(upcoming), latest)


def describe(
    name: str, schedule: ScheduleSettings, last_tick: float | None, now: float
) -> dict[str, object]:
    """One schedule as `schedule list`, /api/schedules and the console show it."""
    table = Timetable.of(schedule)
    upcoming = table.next_after(max(now, last_tick or now))
    return {
        "name": name,
        "task": schedule.task,
        "expression": schedule.cron if schedule.cron is not None else f"every {schedule.every}",
        "timezone": schedule.timezone,
        "catch_up": schedule.catch_up,
        "enabled": schedule.enabled,
        "last_tick": last_tick,
        "next_tick": upcoming if schedule.enabled else None,
        "next_due": upcoming + jitter_offset(name, upcoming, schedule.jitter_seconds)
        if schedule.enabled
        else None,
    }
