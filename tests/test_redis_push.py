"""Issue 21 on Redis, the push: an enqueue leases its job to an idle pool and publishes it.

Queue-level tests drive a waiter and the queue's own fetch; the daemon tests run
real daemons with queue.poll_interval_seconds = 30, so a job that starts within
PROMPT seconds was pushed or woken, never found by the safety net. Every Redis
command count comes from the server's INFO commandstats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from drainpool.context import TaskContext
from drainpool.metrics import Metrics
from drainpool.pool import Pool, PoolConfig
from drainpool.queue.base import Job
from drainpool.queue.redis import RedisQueue
from drainpool.queue.redis_push import FULL_ROUND_EVERY
from drainpool.queue.redis_wakeups import PubSubWaiter
from drainpool.tasks import TaskSpec

from tests.support.daemon import DaemonFactory
from tests.support.joblog import count
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.test_wakeups import commands, done_promptly, idle_config, waits

PROMPT = 10.0  # a generous deadline for something announced at once
PREFIX = "push"
GATE = threading.Event()  # the gated task runs until a test sets it


def gated(ctx: TaskContext, payload: Any) -> str:
    """Ignores the drain: holds its pool in the drain until the test opens the gate."""
    GATE.wait(PROMPT)
    return "ok"


@pytest.fixture
def queue(redis_server: RedisServer) -> Iterator[RedisQueue]:
    opened = RedisQueue.from_url(redis_server.url, prefix=PREFIX)
    yield opened
    opened.close()


class Listening:
    """A waiter of `tasks`, armed, whose pushes land in `jobs` (or are refused)."""

    def __init__(self, queue: RedisQueue, tasks: list[str], *, safety_net: float = 5.0) -> None:
        self.jobs: list[Job] = []
        self.taking = True
        self.woken = 0  # wake-ups heard since armed
        self.waiter: PubSubWaiter = queue.waiter(tasks)
        self.waiter.hear_pushes(self._take)
        self.safety_net = safety_net  # each wait's timeout
        assert self.waiter.wait(safety_net)  # armed: the first wait reports a wake-up

    def _take(self, jobs: list[Job]) -> bool:
        if self.taking:
            self.jobs.extend(jobs)
        return self.taking

    def until(self, condition: Callable[[], bool], what: str) -> None:
        """Listen (each wait returns once something was read) until `condition` holds."""

        def listened() -> bool:
            self.woken += self.waiter.wait(self.safety_net)
            return condition()

        wait_until(listened, PROMPT, what)

    def heard(self, n: int) -> list[Job]:
        """Listen until `n` jobs were pushed; a push is no wake-up (nothing to fetch)."""
        self.until(lambda: len(self.jobs) >= n, f"{n} pushed jobs")
        assert self.woken == 0
        return self.jobs

    def push_id(self) -> str:
        return self.waiter.push_id


Listen = Callable[..., Listening]


@pytest.fixture
def listen(queue: RedisQueue) -> Iterator[Listen]:
    """Listening waiters of the task "t", closed at the end of the test."""
    made: list[Listening] = []

    def start(safety_net: float = 5.0) -> Listening:
        made.append(Listening(queue, ["t"], safety_net=safety_net))
        return made[-1]

    yield start
    for listening in made:
        listening.waiter.close()


def scripts(redis_client: redis.Redis) -> int:
    return commands(redis_client).get("cmdstat_evalsha", 0)


REGISTERING = ("cmdstat_hmget", "cmdstat_hset", "cmdstat_pexpire", "cmdstat_sadd")


def registering(redis_client: redis.Redis) -> dict[str, int]:
    """The commands an idle fetch's registration can send (none of its other parts does)."""
    counted = commands(redis_client)
    return {name: counted.get(name, 0) for name in REGISTERING}


def test_an_idle_registered_pool_gets_the_job_pushed_leased_without_a_fetch(
    queue: RedisQueue, redis_client: redis.Redis, listen: Listen
) -> None:
    listening = listen()
    assert queue.fetch(2, ["t"], 60) == []  # nothing: registers the pool, 2 free
    idle = redis_client.hgetall(f"{PREFIX}:idle:{listening.push_id()}")
    assert (idle["free"], idle["me"]) == ("2", queue.consumer)
    queue.enqueue("other", 0)  # the enqueue script loaded: one EVALSHA from now on
    before = scripts(redis_client)
    job_id = queue.enqueue("t", {"n": 1})
    (job,) = listening.heard(1)
    assert scripts(redis_client) == before + 1  # the enqueue's own: no fetch
    assert (job.id, job.task, job.payload, job.attempt) == (job_id, "t", {"n": 1}, 1)
    record = redis_client.hgetall(f"{PREFIX}:job:{job_id}")
    assert (record["state"], record["token"], record["attempts"]) == ("leased", job.token, "1")
    assert job.token == idle["token"]
    (pending,) = redis_client.xpending_range(f"{PREFIX}:stream:t", PREFIX, "-", "+", 1)
    assert pending["consumer"] == queue.consumer
    assert redis_client.hget(f"{PREFIX}:idle:{listening.push_id()}", "free") == "1"
    queue.settle(acks=[job])  # the lease is the pushed token's: the ack takes effect
    assert queue.stats().leased == 0


def test_no_push_past_the_registered_free_slots(
    queue: RedisQueue, redis_client: redis.Redis, listen: Listen
) -> None:
    listening = listen()
    assert queue.fetch(1, ["t"], 60) == []  # one free slot
    first = queue.enqueue("t", 1)
    assert [j.id for j in listening.heard(1)] == [first]
    second = queue.enqueue("t", 2)  # announced, and fetched
    listening.until(lambda: listening.woken > 0, "the wake-up")
    assert redis_client.hget(f"{PREFIX}:job:{second}", "state") == "ready"
    assert [j.id for j in queue.fetch(1, ["t"], 60)] == [second]
    assert [j.id for j in listening.jobs] == [first]


def test_an_idle_round_that_changed_nothing_sends_no_registration_command(
    queue: RedisQueue, redis_client: redis.Redis, listen: Listen
) -> None:
    """Only every FULL_ROUND_EVERY-th such round asks Redis (HMGET, and the backstop)."""
    listening = listen()
    assert queue.fetch(2, ["t"], 60) == []  # registers: 2 free
    before = registering(redis_client)
    for _ in range(FULL_ROUND_EVERY - 1):
        assert queue.fetch(2, ["t"], 60) == []
    assert registering(redis_client) == before
    assert queue.fetch(2, ["t"], 60) == []  # the full round: the registration is there
    after = registering(redis_client)
    assert after["cmdstat_hmget"] == before["cmdstat_hmget"] + 1
    assert (after["cmdstat_hset"], after["cmdstat_sadd"]) == (
        before["cmdstat_hset"],
        before["cmdstat_sadd"],
    )
    assert redis_client.hget(f"{PREFIX}:idle:{listening.push_id()}", "free") == "2"
    assert queue.fetch(1, ["t"], 60) == []  # one slot fewer: changed, registered at once
    assert redis_client.hget(f"{PREFIX}:idle:{listening.push_id()}", "free") == "1"


def test_a_registration_deleted_under_an_idle_pool_is_written_again_within_the_full_round(
    queue: RedisQueue, redis_client: redis.Redis, listen: Listen
) -> None:
    """No push to it meanwhile: the enqueue announces the job, and the pool fetches it."""
    listening = listen()
    assert queue.fetch(1, ["t"], 60) == []
    idle_key = f"{PREFIX}:idle:{listening.push_id()}"
    redis_client.delete(idle_key)  # as FLUSHALL, or the backstop expiry, would
    rounds = 0
    while not redis_client.exists(idle_key):
        assert rounds < FULL_ROUND_EVERY, "not registered again within the full round"
        assert queue.fetch(1, ["t"], 60) == []
        rounds += 1
    assert redis_client.hget(idle_key, "free") == "1"
    assert redis_client.smembers(f"{PREFIX}:idlers:t") == {listening.push_id()}
    redis_client.delete(idle_key)
    job_id = queue.enqueue("t", 1)  # found no registration: announced
    listening.until(lambda: listening.woken > 0, "the wake-up")
    assert redis_client.hget(f"{PREFIX}:job:{job_id}", "state") == "ready"
    assert [j.id for j in queue.fetch(1, ["t"], 60)] == [job_id]  # found jobs: asks again
    assert listening.jobs == []
    assert queue.fetch(1, ["t"], 60) == []  # idle again: the registration is written again
    assert redis_client.hget(idle_key, "free") == "1"
    listening.woken = 0
    pushed = queue.enqueue("t", 2)
    assert [j.id for j in listening.heard(1)] == [pushed]


def test_a_dead_registration_gets_no_push_and_the_enqueue_drops_it_from_every_task(
    queue: RedisQueue, redis_client: redis.Redis
) -> None:
    """Its listener is gone (a new subscription has a new push id): it can never be pushed."""
    listening = Listening(queue, ["t", "u"])
    try:
        assert queue.fetch(1, ["t", "u"], 60) == []
        push_id = listening.push_id()
        assert redis_client.smembers(f"{PREFIX}:idlers:u") == {push_id}
        assert redis_client.client_kill_filter(_type="pubsub") == 1  # not noticed yet: no wait runs
        job_id = queue.enqueue("t", 1)
        assert redis_client.hget(f"{PREFIX}:job:{job_id}", "state") == "ready"
        assert not redis_client.exists(f"{PREFIX}:idle:{push_id}")
        assert redis_client.smembers(f"{PREFIX}:idlers:t") == set()
        assert redis_client.smembers(f"{PREFIX}:idlers:u") == set()
        assert [j.id for j in queue.fetch(1, ["t", "u"], 60)] == [job_id]
    finally:
        listening.waiter.close()


def test_pushes_on_the_wire_count_against_the_next_registration(
    queue: RedisQueue, redis_client: redis.Redis, listen: Listen
) -> None:
    """Over-delivery: a fetch while pushes are unread registers only the slots left."""
    listening = listen()
    assert queue.fetch(3, ["t"], 60) == []  # 3 free
    queue.enqueue_many([("t", n) for n in range(2)])  # 2 pushed, not read yet
    assert queue.fetch(3, ["t"], 60) == []  # the pool still counts 3 free slots
    idle = redis_client.hgetall(f"{PREFIX}:idle:{listening.push_id()}")
    assert (idle["free"], idle["sent"]) == ("1", "2")
    assert len(listening.heard(2)) == 2
    queue.enqueue_many([("t", n) for n in range(3)])  # one pushed, two announced
    listening.until(lambda: listening.woken > 0, "the wake-up for the rest")
    assert len(listening.jobs) == 3
    assert queue.stats().ready == 2


def test_a_pool_that_refuses_a_push_gets_it_released_and_no_more_pushes(
    queue: RedisQueue, redis_client: redis.Redis, listen: Listen
) -> None:
    listening = listen()
    assert queue.fetch(2, ["t"], 60) == []
    listening.taking = False  # what a draining pool answers
    job_id = queue.enqueue("t", 1)
    listening.until(lambda: queue.stats().ready == 1, "the refused job released")
    record = redis_client.hgetall(f"{PREFIX}:job:{job_id}")
    assert (record["state"], record["attempts"]) == ("ready", "0")
    assert not redis_client.exists(f"{PREFIX}:idle:{listening.push_id()}")
    assert [j.id for j in queue.fetch(1, ["t"], 60)] == [job_id]


def test_a_closed_waiter_releases_what_was_pushed_and_leaves_no_registration(
    queue: RedisQueue, redis_client: redis.Redis
) -> None:
    listening = Listening(queue, ["t"])
    assert queue.fetch(2, ["t"], 60) == []
    push_id = listening.push_id()
    job_id = queue.enqueue("t", 1)  # pushed, still on the wire when the pool closes
    assert redis_client.hget(f"{PREFIX}:job:{job_id}", "state") == "leased"
    listening.waiter.close()
    assert listening.jobs == []
    assert redis_client.hget(f"{PREFIX}:job:{job_id}", "state") == "ready"
    assert not redis_client.exists(f"{PREFIX}:idle:{push_id}")
    assert redis_client.smembers(f"{PREFIX}:idlers:t") == set()


def gated_pool(queue: RedisQueue) -> Pool:
    tasks = {
        "gated": TaskSpec("gated", "tests.test_redis_push:gated", "function", gated),
        "later": TaskSpec("later", "tests.test_redis_push:gated", "function", gated),
    }
    config = PoolConfig("default", 2, 5.0, 30.0, 30.0, prefetch=0)
    return Pool(config, 1, tasks, queue, Metrics())


def test_a_job_pushed_as_the_drain_begins_is_released_not_lost_nor_run(
    queue: RedisQueue, redis_client: redis.Redis
) -> None:
    """A real pool: one job holds it in its drain, and a push reaches it meanwhile."""
    GATE.clear()
    pool = gated_pool(queue)
    pool.start()
    try:
        held = queue.enqueue("gated", 1)
        wait_until(lambda: len(pool.snapshot()["running"]) == 1, PROMPT, "the gated job running")

        def registered() -> bool:
            return any(
                redis_client.hget(key, "free") == "1"
                for key in redis_client.scan_iter(f"{PREFIX}:idle:*")
            )

        wait_until(registered, PROMPT, "the pool registered with one free slot")
        pool.begin_drain()
        pushed = queue.enqueue("later", 2)
        wait_until(
            lambda: redis_client.hget(f"{PREFIX}:job:{pushed}", "state") == "ready",
            PROMPT,
            "the pushed job released",
        )
        assert redis_client.hget(f"{PREFIX}:job:{pushed}", "attempts") == "0"
        assert list(redis_client.scan_iter(f"{PREFIX}:idle:*")) == []
    finally:
        GATE.set()
        wait_until(lambda: pool.drained, PROMPT, "the pool drained")
        pool.join()
    assert [j.id for j in queue.fetch(2, ["later"], 60)] == [pushed]
    assert redis_client.hget(f"{PREFIX}:job:{held}", "state") in (None, "completed")


# -- daemons ---------------------------------------------------------------------


def test_two_idle_daemons_run_each_of_many_spaced_jobs_once_and_pushes_reach_both(
    factory: DaemonFactory, tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = idle_config(factory, redis_server.url)
    daemons = [factory.start(config), factory.start(config)]
    producer = RedisQueue.from_url(redis_server.url)
    log = tmp_path / "jobs.log"
    ids = []
    try:
        for n in range(12):
            ids.append(producer.enqueue("record", {"log": str(log), "seconds": 0, "n": n}))
            done_promptly(log, ids[-1], f"job {n} into two idle daemons")
    finally:
        producer.close()
    assert count(log, "start") == dict.fromkeys(ids, 1)
    assert all(waits(d) == ["blocking read"] for d in daemons)
    ran_on = {redis_client.hget(f"drainpool:job:{job_id}", "pid") for job_id in ids}
    assert ran_on == {str(d.pid) for d in daemons}  # the most free slots get the push


def test_client_kill_of_the_push_connection_loses_nothing_and_the_pushes_come_back(
    factory: DaemonFactory, tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = idle_config(factory, redis_server.url)
    daemon = factory.start(config)
    producer = RedisQueue.from_url(redis_server.url)
    log = tmp_path / "jobs.log"

    def job(n: int) -> str:
        return producer.enqueue("record", {"log": str(log), "seconds": 0, "n": n})

    try:
        first = job(0)
        done_promptly(log, first, "a job before the kill")
        wait_until(
            lambda: redis_client.keys("drainpool:idle:*"), PROMPT, "the pool registered idle"
        )
        assert redis_client.client_kill_filter(_type="pubsub") == 1
        during = [job(n) for n in range(1, 4)]  # at once: before the waiter notices
        for job_id in during:
            done_promptly(log, job_id, "a job enqueued across the kill")
        daemon.wait_log(r"wake-up connection to .*: wake-ups are back", PROMPT)

        def listened_again() -> bool:
            push_ids = [str(key).rsplit(":", 1)[1] for key in redis_client.keys("drainpool:idle:*")]
            channels = [f"drainpool:push:{push_id}" for push_id in push_ids]
            return any(n for _, n in redis_client.pubsub_numsub(*channels)) if channels else False

        wait_until(listened_again, PROMPT, "registered again under the new subscription")
        announced = redis_client.pubsub()
        announced.subscribe("drainpool:wake:record")
        announced.get_message(timeout=PROMPT)  # the subscription's confirmation
        after = job(4)
        done_promptly(log, after, "a job pushed after the kill")
        assert announced.get_message(timeout=0.5) is None  # pushed: not announced
        announced.close()
    finally:
        producer.close()
    assert count(log, "start") == dict.fromkeys([first, *during, after], 1)
    assert waits(daemon) == ["blocking read"]
