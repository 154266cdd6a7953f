"""The queue's half of schedules (issue 20): one enqueue per tick, by compare-and-set.

Runs on SQLite, a real Redis and a real PostgreSQL with the contract's fixtures:
several handles on one queue are several daemons; threads race for the same ticks.
"""

from __future__ import annotations

import threading

from drainpool.queue.base import JobState, Queue

# shared_postgres, which make_queue asks for, is conftest's.
from tests.test_queue_contract import MakeQueue, make_queue, queue, shared_redis

__all__ = ["make_queue", "queue", "shared_redis"]  # fixtures used by name


def test_a_tick_is_enqueued_once_and_its_record_names_schedule_and_tick(queue: Queue) -> None:
    first = queue.enqueue_tick("nightly", "echo", {"n": 1}, tick=100.0, expected=None)
    assert first is not None
    assert queue.enqueue_tick("nightly", "echo", {"n": 1}, tick=100.0, expected=None) is None
    assert queue.enqueue_tick("nightly", "echo", {}, tick=100.0, expected=50.0) is None
    assert queue.schedule_ticks() == {"nightly": 100.0}
    info = queue.job(first)
    assert info is not None and info.schedule == "nightly" and info.tick == 100.0
    assert info.state is JobState.WAITING and info.payload == {"n": 1}
    assert info.as_dict()["schedule"] == "nightly"
    second = queue.enqueue_tick("nightly", "echo", {}, tick=160.5, expected=100.0)
    assert second is not None and queue.schedule_ticks() == {"nightly": 160.5}


def test_a_manual_run_is_always_enqueued_and_leaves_the_tick(queue: Queue) -> None:
    queue.enqueue_tick("hourly", "echo", {}, tick=3600.0, expected=None)
    one = queue.enqueue_tick("hourly", "echo", {}, tick=None, expected=None)
    two = queue.enqueue_tick("hourly", "echo", {}, tick=None, expected=None)
    assert one and two and one != two
    assert queue.schedule_ticks() == {"hourly": 3600.0}
    info = queue.job(one)
    assert info is not None and info.schedule == "hourly" and info.tick is None


def test_racing_handles_enqueue_each_tick_once(make_queue: MakeQueue) -> None:
    handles = [make_queue() for _ in range(4)]
    won: list[tuple[float, str]] = []
    lock = threading.Lock()

    def race(handle: Queue) -> None:
        for n in range(1, 31):
            last = handle.schedule_ticks().get("fast")
            tick = float(n)
            if last is not None and last >= tick:
                continue
            job = handle.enqueue_tick("fast", "echo", {}, tick=tick, expected=last)
            if job is not None:
                with lock:
                    won.append((tick, job))

    threads = [threading.Thread(target=race, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ticks = sorted(tick for tick, _ in won)
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert ticks[-1] == 30.0
    assert handles[0].stats().ready == len(won)
