"""The thread that enqueues schedules' ticks (issue 20): it waits for the next due tick.

Why a thread of its own rather than a step of the supervisor's loop: an enqueue
is queue I/O, which can wait on a busy SQLite file or a Redis timeout for
seconds, and the supervisor's loop must keep answering signals, drains and
/healthz meanwhile. The thread decides nothing about the lifecycle: the
supervisor hands it the schedules at start and at each reload (`update`) and
stops it at the end. It sleeps on one event until the next tick is due (or
MAX_WAIT_SECONDS, to notice a wall clock that jumped forward); `update` and
`stop` set the event. What to enqueue is drainpool.schedules' pure logic; the
queue's compare-and-set makes the enqueue once per tick across daemons.

Clock steps: the offset between the wall clock and the monotonic one changes
only when the wall clock is set. When it moved back by more than STEP_SECONDS,
a schedule whose stored tick is now in the future goes on from the current
time (the repeated span's ticks run again) instead of stalling until the clock
catches up; a stored tick just ahead of the clock without a step (another
daemon's clock a little ahead) is waited for.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drainpool.metrics import Metrics
from drainpool.queue import Queue, QueueError
from drainpool.schedule_settings import ScheduleSettings
from drainpool.schedules import Timetable, decide, describe

log = logging.getLogger("drainpool.scheduler")

MAX_WAIT_SECONDS = 30.0  # look at the wall clock at least this often (a jump forward)
RETRY_SECONDS = 2.0  # after the queue failed
STEP_SECONDS = 1.0  # a wall clock set back by more than this is a step, not drift


@dataclass(slots=True)
class _Entry:
    settings: ScheduleSettings
    table: Timetable
    floor: float | None  # no tick at or before this counts (taken up, changed, stepped)
    stale: float | None = None  # a stored tick from before the clock was set back
    next_due: float | None = None  # wall clock; until then a pass need not look at it


class Scheduler:
    """Runs `run_once` on its thread; tests call `run_once` with injected clocks."""

    def __init__(
        self,
        queue: Callable[[], Queue | None],
        metrics: Metrics,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        taken_up: bool = False,
    ) -> None:
        self._queue = queue
        self._metrics = metrics
        self._wall = wall
        self._monotonic = monotonic
        self._lock = threading.Lock()  # entries: replaced by update() on the loop's thread
        self._entries: dict[str, _Entry] = {}
        # The first update is the daemon's start, unless made later (a reload's first schedule).
        self._taken_up = taken_up
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._offset = wall() - monotonic()
        self._failing = False
        self.last_ticks: dict[str, float] = {}  # as last read from the queue
        self._published: dict[str, tuple[float | None, ScheduleSettings]] = {}  # in the gauges

    # -- from the supervisor --------------------------------------------------

    def update(self, schedules: dict[str, ScheduleSettings]) -> list[str]:
        """Take up a config's schedules; returns the names added, changed or removed.

        An added, changed or re-enabled schedule counts ticks only from now: a changed
        cron takes effect from its next tick, and no old tick is caught up for it.
        """
        now = self._wall()
        changed = []
        with self._lock:
            fresh = {}
            for name, schedule in schedules.items():
                old = self._entries.get(name)
                if old is not None and old.settings == schedule:
                    fresh[name] = old
                    continue
                changed.append(name)
                # At start-up the queue's last tick decides what was missed (catch_up).
                floor = now if self._taken_up else None
                fresh[name] = _Entry(schedule, Timetable.of(schedule), floor)
            changed += [name for name in self._entries if name not in schedules]
            self._entries = fresh
            self._taken_up = True
            for name in changed:  # their gauges are set again (a removed one's were dropped)
                self._published.pop(name, None)
        self._metrics.declare_schedules(n for n, s in schedules.items() if s.enabled)
        self._wake.set()
        return sorted(changed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="drainpool-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            wait = self.run_once()
            self._wake.wait(min(wait, MAX_WAIT_SECONDS))

    # -- one pass -----------------------------------------------------------------

    def run_once(self) -> float:
        """Enqueue every tick now due; return the seconds until the next one is."""
        now = self._wall()
        offset = now - self._monotonic()
        stepped_back = offset < self._offset - STEP_SECONDS
        self._offset = offset
        queue = self._queue()
        if queue is None:
            return RETRY_SECONDS
        with self._lock:
            entries = dict(self._entries)
        if not any(entry.settings.enabled for entry in entries.values()):
            return MAX_WAIT_SECONDS  # no queue I/O for a daemon without schedules
        try:
            stored = queue.schedule_ticks()
            next_due = now + MAX_WAIT_SECONDS
            decided = False
            for name, entry in entries.items():
                if not entry.settings.enabled:
                    continue
                # A thousand schedules cost one decision each only when one is due.
                if stepped_back or entry.next_due is None or entry.next_due <= now:
                    entry.next_due = self._one(
                        queue, name, entry, stored.get(name), now, stepped_back
                    )
                    decided = True
                next_due = min(next_due, entry.next_due)
            if decided:
                stored = queue.schedule_ticks()  # with this pass's enqueues (and others')
        except QueueError as exc:
            if not self._failing:
                log.warning("schedules: queue unavailable, retrying: %s", exc)
            self._failing = True
            return RETRY_SECONDS
        except Exception:  # a bug must not end the thread: every schedule would stop
            log.exception("schedules: unexpected error; retrying")
            return RETRY_SECONDS
        if self._failing:
            log.info("schedules: queue reachable again")
        self._failing = False
        self.last_ticks = stored
        self._publish(entries, stored, now)
        return max(next_due - self._wall(), 0.0)

    def _publish(self, entries: dict[str, _Entry], stored: dict[str, float], now: float) -> None:
        """The gauges of the schedules whose stored tick or settings changed since last time."""
        for name, entry in entries.items():
            seen = (stored.get(name), entry.settings)
            if not entry.settings.enabled or self._published.get(name) == seen:
                continue
            self._published[name] = seen
            # NaN until the schedule's first tick: no age, so no alert, and no fake time.
            tick = stored.get(name, math.nan)
            base = entry.table.next_after(now) if math.isnan(tick) else tick
            self._metrics.schedule_last_tick.labels(schedule=name).set(tick)
            self._metrics.schedule_period.labels(schedule=name).set(
                entry.table.next_after(base) - base
            )

    def _one(
        self,
        queue: Queue,
        name: str,
        entry: _Entry,
        last: float | None,
        now: float,
        stepped_back: bool,
    ) -> float:
        """Enqueue what is due for one schedule; return its next due time (wall clock)."""
        if last is None and entry.floor is None:
            entry.floor = now  # never ticked, anywhere: it begins now, with no catch-up
        if stepped_back and last is not None and last > now:
            log.warning(
                "schedule %s: the clock was set back before its last tick; going on from now",
                name,
            )
            entry.floor, entry.stale = now, last
        if last is not None and last == entry.stale:
            since = entry.floor or now  # until this daemon or another moves the tick on
        else:
            entry.stale = None
            since = max(t for t in (last, entry.floor) if t is not None)
        schedule = entry.settings
        decision = decide(name, entry.table, schedule.jitter_seconds, schedule.catch_up, since, now)
        expected = last
        for tick in decision.enqueue:
            job_id = queue.enqueue_tick(
                name, schedule.task, schedule.payload, tick=tick, expected=expected
            )
            if job_id is None:
                break  # another daemon moved the tick first: it enqueued this one or later
            expected = tick
            self._metrics.schedule_enqueued.labels(schedule=name).inc()
            log.info("schedule %s: tick %s enqueued as job %s", name, _iso(tick), job_id)
        if decision.skipped:
            self._metrics.schedule_skipped.labels(schedule=name).inc(decision.skipped)
            log.warning(
                "schedule %s: %d missed tick(s) skipped (catch_up = %s)",
                name,
                decision.skipped,
                schedule.catch_up,
            )
        if decision.upto is not None:
            entry.floor = max(entry.floor or decision.upto, decision.upto)
        return decision.next_due

    def view(self) -> list[dict[str, Any]]:
        """The schedules as /api/schedules shows them (last ticks as last read)."""
        now = self._wall()
        with self._lock:
            entries = dict(self._entries)
        return [
            describe(name, entry.settings, self.last_ticks.get(name), now)
            for name, entry in sorted(entries.items())
        ]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
