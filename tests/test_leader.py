"""Issue 21, pickup: the thread that reads a wake-up runs the job (leader/follower, pool.py).

Real pools in-process on a real Redis server and a real SQLite file. The
waiters are wrapped only to note which thread read a push or a doorbell, so a
test can tell that the job ran on that thread (the path under test) and not on
a worker woken for it (the path before). Pools run with a 30 s safety net: a
job that starts within PROMPT was pushed or woken, never polled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from drainpool.context import TaskContext
from drainpool.metrics import Metrics
from drainpool.pool import LEAD_GAP_SECONDS, Pool, PoolConfig
from drainpool.queue.base import Job, Queue
from drainpool.queue.redis import RedisQueue
from drainpool.queue.sqlite import SqliteQueue
from drainpool.tasks import TaskSpec, _resolve

from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

PROMPT = 10.0
PREFIX = "leader"
SPACING = LEAD_GAP_SECONDS + 0.03  # between spaced jobs: each comes to an idle pool


class Runs:
    """What the task saw: per job the threads that ran it, whether that thread had just
    read the wake-up, and the most jobs running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: dict[str, list[str]] = {}
        self.read_it: dict[str, bool] = {}
        self.woken: dict[str, bool] = {}  # thread name: it returned woken from its last wait
        self.pushed: dict[str, str] = {}  # job id: the thread that took its push
        self.now = 0
        self.most = 0

    def task(self, ctx: TaskContext, payload: Any) -> str:
        name = threading.current_thread().name
        with self.lock:
            self.threads.setdefault(ctx.job_id, []).append(name)
            self.read_it[ctx.job_id] = self.woken.pop(name, False)
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            ctx.sleep(float(payload.get("seconds", 0)))
        finally:
            with self.lock:
                self.now -= 1
        return "ok"

    def watch(self, queue: Queue) -> None:
        """Wrap the waiters `queue` makes: note the thread that reads each wake-up or push."""
        make = queue.waiter  # type: ignore[attr-defined]

        def waiter(tasks: Any) -> Any:
            made = make(tasks)
            wait, hear = made.wait, made.hear_pushes

            def noted_wait(timeout: float) -> bool:
                woken = bool(wait(timeout))
                with self.lock:
                    self.woken[threading.current_thread().name] = woken
                return woken

            def noted_hear(take: Callable[[list[Job]], bool]) -> None:
                def noted(jobs: list[Job]) -> bool:
                    with self.lock:
                        self.pushed[jobs[0].id] = threading.current_thread().name
                    return take(jobs)

                hear(noted)

            made.wait, made.hear_pushes = noted_wait, noted_hear
            return made

        queue.waiter = waiter  # type: ignore[attr-defined]

    @contextmanager
    def started(self, queue: Queue, **kwargs: Any) -> Iterator[Pool]:
        """A pool of `task` on `queue`, started; drained and joined after, whatever happens."""
        pool = self.pool(queue, **kwargs)
        pool.start()
        try:
            yield pool
        finally:
            stop(pool)

    def pool(self, queue: Queue, name: str = "default", workers: int = 2) -> Pool:
        self.watch(queue)
        tasks = {"run": TaskSpec("run", "tests.test_leader:unused", "function", self.task)}
        config = PoolConfig(name, workers, 5.0, 30.0, 30.0, prefetch=0)
        return Pool(config, 1, tasks, queue, Metrics())


@pytest.fixture
def rqueue(redis_server: RedisServer) -> Iterator[RedisQueue]:
    opened = RedisQueue.from_url(redis_server.url, prefix=PREFIX)
    yield opened
    opened.close()


def registered(redis_client: redis.Redis) -> Callable[[], bool]:
    """The pool's idle registration is there with a free slot: the next enqueue pushes."""
    return lambda: any(
        int(redis_client.hget(key, "free") or 0) > 0
        for key in redis_client.scan_iter(f"{PREFIX}:idle:*")
    )


def stop(pool: Pool) -> None:
    pool.begin_drain()
    wait_until(lambda: pool.drained, PROMPT, "the pool drained")
    pool.join()


def test_a_pushed_job_runs_on_the_thread_that_read_the_push_and_is_settled_once(
    rqueue: RedisQueue, redis_client: redis.Redis
) -> None:
    runs = Runs()
    with runs.started(rqueue) as pool:
        ids = []
        wait_until(registered(redis_client), PROMPT, "an idle registration")
        for n in range(6):
            ids.append(rqueue.enqueue("run", {"n": n}))
            wait_until(lambda: pool.counts["completed"] == len(ids), PROMPT, "the job done")
            time.sleep(SPACING)  # spacing the jobs, not a check
        wait_until(lambda: rqueue.stats().leased == 0, PROMPT, "every ack settled")
        waiter: Any = pool._waiter
        heard = waiter._push[1]
        (key,) = redis_client.scan_iter(f"{PREFIX}:idle:*")
        sent = int(redis_client.hget(key, "sent") or 0)
    assert sorted(runs.threads) == sorted(ids)
    assert all(len(threads) == 1 for threads in runs.threads.values()), runs.threads
    pushed = {job_id: thread for job_id, thread in runs.pushed.items() if job_id in ids}
    assert pushed, "no job was pushed"
    for job_id, thread in pushed.items():
        assert runs.threads[job_id] == [thread], (job_id, thread, runs.threads[job_id])
    assert +pool.counts == {"completed": 6}
    assert [rqueue.job(job_id).state for job_id in ids] == ["completed"] * 6  # type: ignore[union-attr]
    # The push protocol's accounting: every push sent to the registration was heard.
    assert sent == heard
    assert runs.most <= 2


def kept_long_job(runs: Runs, rqueue: RedisQueue, redis_client: redis.Redis) -> str:
    """Push a long job to the idle pool; its id, once it runs on the thread that read the push."""
    wait_until(registered(redis_client), PROMPT, "an idle registration")
    job_id = rqueue.enqueue("run", {"seconds": 60})
    wait_until(lambda: job_id in runs.threads, PROMPT, "the pushed job running")
    assert runs.threads[job_id] == [runs.pushed[job_id]]  # kept by the listener
    return job_id


def test_a_drain_while_the_listening_thread_runs_a_pushed_job_interrupts_and_releases_it(
    rqueue: RedisQueue, redis_client: redis.Redis
) -> None:
    runs = Runs()
    with runs.started(rqueue) as pool:
        job_id = kept_long_job(runs, rqueue, redis_client)
        assert pool.begin_drain() == 0  # running: not cancelled, asked to stop
        wait_until(lambda: pool.drained, PROMPT, "the pool drained")
        pool.join()
    assert +pool.counts == {"interrupted": 1}
    record = rqueue.job(job_id)
    assert record is not None and record.state == "waiting"  # released, not lost
    assert rqueue.stats().leased == 0
    assert list(redis_client.scan_iter(f"{PREFIX}:idle:*")) == []  # a drained pool is not pushed to
    assert pool.stray_threads() == 0


def test_a_cancel_reaches_a_pushed_job_that_the_listening_thread_runs(
    rqueue: RedisQueue, redis_client: redis.Redis
) -> None:
    """The role passed on: the new listener hears the cancel (the job watch reads it too)."""
    runs = Runs()
    with runs.started(rqueue) as pool:
        job_id = kept_long_job(runs, rqueue, redis_client)
        rqueue.cancel(job_id)
        wait_until(lambda: pool.counts["aborted"] == 1, PROMPT, "the job aborted")
        wait_until(lambda: rqueue.stats().leased == 0, PROMPT, "its release settled")
        # And the pool still picks up: the next job runs once.
        wait_until(registered(redis_client), PROMPT, "an idle registration again")
        after = rqueue.enqueue("run", {})
        wait_until(lambda: pool.counts["completed"] == 1, PROMPT, "the next job done")
    record = rqueue.job(job_id)
    assert record is not None and record.state == "cancelled"
    assert len(runs.threads[after]) == 1


def test_a_process_pool_picks_up_pushed_jobs_through_its_listener_thread(
    rqueue: RedisQueue, redis_client: redis.Redis
) -> None:
    """kind = "process": the worker threads own children, so the listener stays apart."""
    tasks = {"sleep": _resolve("sleep", "drainpool.tasks.examples:sleep")}
    config = PoolConfig("default", 2, 5.0, 30.0, 30.0, "process", prefetch=0)
    pool = Pool(config, 1, tasks, rqueue, Metrics())
    pool.start()
    try:
        wait_until(registered(redis_client), PROMPT, "an idle registration")
        for n in range(1, 4):
            rqueue.enqueue("sleep", {"seconds": 0})
            wait_until(lambda n=n: pool.counts["completed"] == n, PROMPT, "the job done")
            time.sleep(SPACING)  # spacing the jobs, not a check
        assert len(pool.snapshot()["processes"]) == 2  # one child per worker, no more
    finally:
        stop(pool)
    assert +pool.counts == {"completed": 3}
    assert rqueue.stats().leased == 0
    assert pool.stray_threads() == 0


def settled(pool: Pool) -> bool:
    """Armed, its threads idle but the listener, no wake-up or fetch on its way."""
    armed = pool.snapshot()["waits"] == "doorbell"
    return armed and pool._idle == 2 and not pool._fetching and not pool._wake_pending


def test_two_sqlite_daemons_on_one_file_claim_each_spaced_job_once_on_the_woken_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    runs = Runs()
    queues = [SqliteQueue(path) for _ in range(3)]  # two pools and a producer
    pools = [runs.pool(queues[0], "a"), runs.pool(queues[1], "b")]
    producer = queues[2]
    for pool in pools:
        pool.start()
    try:
        # Armed and settled: every thread but the listener idle, and the fetch that the
        # arming asks of the dispatcher done. A job enqueued before either would go to the
        # dispatcher (rightly), and the check below is that the woken thread ran each one.
        wait_until(lambda: all(settled(p) for p in pools), PROMPT, "armed and settled")
        ids = []
        for n in range(10):
            ids.append(producer.enqueue("run", {"n": n}))
            wait_until(
                lambda: sum(p.counts["completed"] for p in pools) == len(ids),
                PROMPT,
                "the job done",
            )
            time.sleep(SPACING)  # spacing the jobs, not a check
        wait_until(lambda: producer.stats().leased == 0, PROMPT, "every ack settled")
    finally:
        for pool in pools:
            stop(pool)
    assert sorted(runs.threads) == sorted(ids)
    assert all(len(threads) == 1 for threads in runs.threads.values()), runs.threads
    # Each job ran on the thread that the doorbell woke, which claimed it itself.
    assert all(runs.read_it[job_id] for job_id in ids), runs.read_it
    stats = producer.stats()
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)
    for queue in queues:
        queue.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_no_more_than_workers_jobs_run_at_once_while_the_listener_takes_jobs(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Jobs arrive while others run: the listening thread keeps one only while a thread
    is idle to take its role; all run once, never more than `workers` at a time."""
    queue: Queue
    if backend == "redis":
        queue = request.getfixturevalue("rqueue")
    else:
        queue = SqliteQueue(tmp_path / "q.db")
    runs = Runs()
    with runs.started(queue, workers=2) as pool:
        wait_until(lambda: pool.snapshot()["waits"] != "poll", PROMPT, "armed")
        ids = []
        for n in range(8):
            ids.append(queue.enqueue("run", {"n": n, "seconds": 0.15}))
            time.sleep(SPACING)  # spacing the jobs, not a check
        wait_until(lambda: pool.counts["completed"] == 8, PROMPT * 2, "all done")
        wait_until(lambda: queue.stats().leased == 0, PROMPT, "every ack settled")
    assert sorted(runs.threads) == sorted(ids)
    assert all(len(threads) == 1 for threads in runs.threads.values()), runs.threads
    assert runs.most == 2  # busy: both slots used, never a third
    assert any(runs.read_it.values()) or runs.pushed, "the listener never kept a job"
    if backend == "sqlite":
        queue.close()


class GatedQueue(SqliteQueue):
    """A real SQLite queue whose fetches on a listening (worker) thread wait for a gate:
    the moment between a listener's claim and its hand-over, held open."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.held = threading.Event()

    def fetch(self, n: int, tasks: Any, lease_seconds: float, **kw: Any) -> list[Job]:
        if "-w" in threading.current_thread().name:
            self.held.set()
            self.gate.wait(PROMPT)
        return super().fetch(n, tasks, lease_seconds, **kw)


def test_a_drain_waits_for_a_listeners_claim_in_flight_and_releases_what_it_got(
    tmp_path: Path,
) -> None:
    """The dispatcher must not settle for the last time while a listener's claim is on its
    way: the job it brings is released (cancelled, never started), not left leased."""
    queue = GatedQueue(tmp_path / "q.db")
    runs = Runs()
    pool = runs.pool(queue)
    pool.start()
    try:
        wait_until(lambda: pool.snapshot()["waits"] == "doorbell", PROMPT, "armed")

        def idle() -> bool:  # the listener's first claim is held, or nothing is on its way
            return queue.held.is_set() or settled(pool)

        wait_until(idle, PROMPT, "the pool idle")
        job_id = queue.enqueue("run", {})
        assert queue.held.wait(PROMPT), "the listener's claim never began"
        pool.begin_drain()
        queue.gate.set()
        wait_until(lambda: pool.drained, PROMPT, "the pool drained")
        pool.join()
    finally:
        queue.gate.set()
        stop(pool)
    assert job_id not in runs.threads  # never started
    assert +pool.counts == {"cancelled": 1}
    stats = queue.stats()
    assert (stats.ready, stats.leased) == (1, 0)
    queue.close()
