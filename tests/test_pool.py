"""The pool in-process, on a real SQLite queue: the start/cancel gate and outcomes."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from drainpool.metrics import Metrics
from drainpool.pool import Pool, PoolConfig, RecentOutcomes, auto_reserve
from drainpool.queue import from_url
from drainpool.queue.sqlite import SqliteQueue
from drainpool.tasks import TaskSpec
from drainpool.tasks.examples import noop, sleep

from tests.support.waiting import wait_until

TASKS = {
    "sleep": TaskSpec("sleep", "drainpool.tasks.examples:sleep", "function", sleep),
    "noop": TaskSpec("noop", "drainpool.tasks.examples:noop", "function", noop),
}


def make_pool(
    tmp_path: Path,
    workers: int = 2,
    prefetch: int | Literal["auto"] = 1,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Pool, SqliteQueue, Metrics]:
    queue = SqliteQueue(tmp_path / "q.db")
    metrics = Metrics()
    config = PoolConfig("default", workers, 5.0, 30.0, 0.05, prefetch=prefetch)
    return Pool(config, 1, TASKS, queue, metrics, clock=clock), queue, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"pool": "default", **labels}) or 0.0


def test_jobs_handed_over_but_not_started_are_cancelled_and_released(tmp_path: Path) -> None:
    pool, queue, metrics = make_pool(tmp_path, workers=3)
    for _ in range(3):
        queue.enqueue("noop", {})
    # Hand jobs over without starting the workers: the state a drain can meet between
    # the dispatcher's fetch and a worker's pick-up.
    assert pool._fetch(3) == 3
    assert pool.begin_drain() == 3
    assert pool.snapshot()["handed"] == 0
    assert sample(metrics, "drainpool_tasks_cancelled_total", task="noop") == 3
    pool.start()  # workers find nothing to start; the dispatcher releases and finishes
    wait_until(lambda: pool.drained, what="pool drained")
    pool.join()
    stats = queue.stats()
    assert (stats.ready, stats.leased) == (3, 0)
    assert sample(metrics, "drainpool_tasks_started_total", task="noop") == 0
    queue.close()


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_a_pool_leases_its_free_workers_and_its_reserve_and_a_drain_cancels_the_reserve(
    tmp_path: Path, prefetch: int
) -> None:
    pool, queue, metrics = make_pool(tmp_path, workers=2, prefetch=prefetch)
    for _ in range(8):
        queue.enqueue("sleep", {"seconds": 3600})
    pool.start()
    wait_until(
        lambda: len(pool.snapshot()["running"]) == 2 and queue.stats().leased == 2 + prefetch,
        what=f"2 running and {prefetch} reserved",
    )
    # Settled: nothing more is leased while both workers stay busy.
    assert pool._free_slots() == 0
    assert (pool.snapshot()["handed"], queue.stats().ready) == (prefetch, 6 - prefetch)
    assert pool.begin_drain() == prefetch  # the reserve never started: cancelled at once
    wait_until(lambda: pool.drained, what="drained")
    pool.join()
    assert (pool.counts["interrupted"], pool.counts["cancelled"]) == (2, prefetch)
    assert sample(metrics, "drainpool_tasks_cancelled_total", task="sleep") == prefetch
    stats = queue.stats()
    assert (stats.ready, stats.leased) == (8, 0)
    queue.close()


def test_auto_reserve_holds_about_50_ms_of_work_between_one_and_32_jobs_per_worker() -> None:
    assert auto_reserve(8, None) == 1  # nothing finished yet: as for long jobs
    assert auto_reserve(8, 0.010) == 40  # 8 workers get through 40 jobs of 10 ms in 50 ms
    assert auto_reserve(2, 0.050) == 2
    assert auto_reserve(8, 1.0) == 1  # long jobs: never less than one
    assert auto_reserve(8, 0.001) == 256  # 400 jobs of 1 ms in 50 ms, but at most 32 per worker
    assert auto_reserve(8, 0.0001) == 256
    assert auto_reserve(3, 0.0) == 96


def test_auto_prefetch_deepens_the_reserve_once_jobs_prove_short(tmp_path: Path) -> None:
    # A clock that stands still: every run measures 0 s, whatever the machine's load, so the
    # mean run time is known exactly and the reserve reaches its cap of 2 x 32.
    pool, queue, metrics = make_pool(tmp_path, workers=2, prefetch="auto", clock=lambda: 1000.0)
    for _ in range(40):
        queue.enqueue("noop", {})
    for _ in range(80):
        queue.enqueue("sleep", {"seconds": 3600})
    assert pool.snapshot()["reserve"] == 1  # no run time known yet

    def settled() -> bool:
        # All three: a leased count alone can also hold no-ops done but not yet acked.
        snapshot = pool.snapshot()
        running, handed = len(snapshot["running"]), snapshot["handed"]
        return (running, handed) == (2, 64) and queue.stats().leased == 2 + 64

    pool.start()
    wait_until(settled, what="2 sleeps running, 64 reserved, the no-ops acked")
    assert (pool.snapshot()["reserve"], pool.snapshot()["handed"]) == (64, 64)
    assert pool.counts["completed"] == 40
    assert pool.begin_drain() == 64  # the whole reserve: cancelled, never started
    wait_until(lambda: pool.drained, what="drained")
    pool.join()
    assert sample(metrics, "drainpool_tasks_cancelled_total", task="sleep") == 64
    stats = queue.stats()
    assert (stats.ready, stats.leased) == (80, 0)
    queue.close()


def test_outcomes_completed_then_interrupted(tmp_path: Path) -> None:
    pool, queue, metrics = make_pool(tmp_path, workers=2)
    queue.enqueue("noop", {})
    queue.enqueue("sleep", {"seconds": 3600})
    pool.start()
    wait_until(lambda: sample(metrics, "drainpool_tasks_completed_total", task="noop") == 1)
    wait_until(lambda: pool.snapshot()["running"], what="sleep running")
    pool.begin_drain()
    wait_until(lambda: pool.drained, what="drained")
    pool.join()
    assert +pool.counts == {"completed": 1, "interrupted": 1}
    # The hour's sleep woke on the event: its run ended as interrupted, with a duration.
    duration = "drainpool_task_duration_seconds_count"
    assert sample(metrics, duration, task="sleep", outcome="interrupted") == 1
    assert sample(metrics, duration, task="sleep", outcome="completed") == 0
    assert sample(metrics, "drainpool_tasks_in_flight", task="sleep") == 0
    stats = queue.stats()
    assert (stats.ready, stats.leased) == (1, 0)
    (job,) = queue.fetch(1, ["sleep"], 30)
    assert job.attempt == 1  # the interrupted attempt was not counted
    queue.close()


def test_recent_outcomes_keep_the_newest_as_the_console_reads_them(tmp_path: Path) -> None:
    # Workers keep tuples and the console's documents are built at the snapshot (issue 17).
    queue = SqliteQueue(tmp_path / "q.db")
    recent = RecentOutcomes(2)
    config = PoolConfig("default", 1, 5.0, 30.0, 0.05, prefetch=0)
    pool = Pool(config, 4, TASKS, queue, Metrics(), recent=recent)
    ids = [queue.enqueue("noop", {}) for _ in range(3)]
    pool.start()
    wait_until(lambda: pool.counts["completed"] == 3, what="three completed")
    pool.begin_drain()
    wait_until(lambda: pool.drained, what="drained")
    pool.join()
    newest = recent.snapshot()
    assert [entry["job_id"] for entry in newest] == ids[1:]  # one worker: in order
    for entry in newest:
        assert entry["at"] > 0 and 0 <= entry["seconds"] < 60
        assert entry["seconds"] == round(entry["seconds"], 3)
        del entry["job_id"], entry["at"], entry["seconds"]
        assert entry == {
            "task": "noop",
            "attempt": 1,
            "outcome": "completed",
            "pool": "default",
            "generation": 4,
        }
    assert +pool.counts == {"completed": 3}
    assert queue.stats().leased == 0
    queue.close()


def test_the_dispatcher_renews_leases_by_its_injected_clock(tmp_path: Path) -> None:
    """A lease of 300 s is renewed every 100 s: only the injected clock's jump renews it now."""
    queue = SqliteQueue(tmp_path / "q.db")
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    tasks = {"sleep": TaskSpec("sleep", "drainpool.tasks.examples:sleep", "function", sleep)}
    config = PoolConfig("default", 2, 5.0, 300.0, 0.05, prefetch=0)
    pool = Pool(config, 1, tasks, queue, Metrics(), clock=clock)
    queue.enqueue("sleep", {"seconds": 3600})

    def lease_until() -> float:
        with contextlib.closing(sqlite3.connect(tmp_path / "q.db")) as db:
            (due,) = db.execute("SELECT due_at FROM jobs WHERE id = 1").fetchone()
        return float(due)

    pool.start()
    try:
        wait_until(lambda: pool.snapshot()["running"], what="sleep running")
        first = lease_until()
        offset[0] = 101.0  # past the dispatcher's next renewal, a third of the lease
        wait_until(lambda: lease_until() > first, what="lease renewed")
    finally:
        pool.begin_drain()
        wait_until(lambda: pool.drained, what="drained")
        pool.join()
        queue.close()
    assert +pool.counts == {"interrupted": 1}


@pytest.mark.queue_backends("sqlite", "redis", "postgres")
def test_a_reserve_that_shrinks_below_what_the_pool_holds_does_not_stall_the_dispatcher(
    queue_url: str, tmp_path: Path
) -> None:
    """No-ops deepen the auto reserve; then 10 ms jobs shrink it below what is held.

    The dispatcher once read the negative "free" count as work to fetch: Redis
    fetched none and the pool slept the safety net with thousands of jobs ready
    (found by the bench: 5,198 of 20,000 jobs in 320 s). The safety net here is
    an hour, so a stall cannot hide behind it.
    """
    queue = from_url(queue_url, base_dir=tmp_path)
    config = PoolConfig("default", 2, 5.0, 30.0, 3600.0, prefetch="auto")
    pool = Pool(config, 1, TASKS, queue, Metrics())
    for _ in range(200):
        queue.enqueue("noop", {})
    for _ in range(200):
        queue.enqueue("sleep", {"seconds": 0.01})
    held_most = 0

    def all_done() -> bool:
        nonlocal held_most
        held_most = max(held_most, queue.stats().leased)
        return pool.counts["completed"] == 400

    pool.start()
    try:
        wait_until(all_done, 60.0, "all 400 jobs done, the safety net an hour away")
    finally:
        pool.begin_drain()
        wait_until(lambda: pool.drained, what="drained")
        pool.join()
        queue.close()
    # Never more than the workers and the deepest reserve (2 + 2 x 32), though the
    # reserve shrank to a few jobs while dozens were held.
    assert 0 < held_most <= 2 + 64


def test_a_run_its_worker_finished_before_the_abandon_is_settled_as_completed(
    tmp_path: Path,
) -> None:
    """Workers hand finished runs over without the pool's lock; an abandon must not win them."""
    pool, queue, metrics = make_pool(tmp_path, workers=1, prefetch=0)
    queue.enqueue("noop", {})
    assert pool._fetch(1) == 1
    # One worker, no dispatcher yet: the run ends and waits in the hand-over to the dispatcher.
    worker = threading.Thread(target=pool._worker_loop, daemon=True)
    worker.start()
    wait_until(lambda: pool._finished, what="the run handed to the dispatcher")
    pool.begin_drain()
    assert pool.abandon() == []  # finished already: nothing left to abandon
    pool.start()
    wait_until(lambda: pool.drained, what="pool drained")
    pool.join()
    worker.join(5)
    assert +pool.counts == {"completed": 1}
    assert sample(metrics, "drainpool_tasks_completed_total", task="noop") == 1
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)  # acked, not released
    queue.close()
