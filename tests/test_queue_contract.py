"""One contract for every queue backend: the same tests run on SQLite, a real Redis
and a real PostgreSQL.

A `make_queue()` call opens one more handle on the same queue (the same file,
the same Redis keys, or the same PostgreSQL schema): two handles are two
consumers, as two daemons are.
Waits poll with a deadline; a lease of 0 seconds is expired the moment it is
given, which tests expiry without waiting for a clock.

Longer than a module should be, on purpose: one contract, one set of fixtures.
The job records part (issue 18) is the second half, after the Redis-only tests.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import drainpool.queue as queue_api
import psycopg
import pytest
import redis
from drainpool.queue.outcome_minutes import KEEP_SECONDS, MINUTE, OUTCOMES
from drainpool.queue.postgres import PostgresQueue
from drainpool.queue.records import encode_result, result_of
from drainpool.queue.redis import RedisQueue, redact_url
from drainpool.queue.sqlite import SCHEMA_VERSION, SqliteQueue

from tests.support.net import free_port
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer, redis_servers
from tests.support.waiting import wait_until

T = TypeVar("T")
MakeQueue = Callable[..., queue_api.Queue]
StartRedis = Callable[..., RedisServer]
DEADLINE = 15.0  # seconds for any awaited condition; generous on a shared machine
FAST_RETRY = queue_api.RetryPolicy(
    max_attempts=3, backoff_seconds=0.01, backoff_max_seconds=0.01, rng=random.Random(7)
)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the contract tests; each test gets its own key prefix."""
    with redis_servers(tmp_path_factory.mktemp("redis")) as start:
        yield start()


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeQueue]:
    opened: list[queue_api.Queue] = []
    if request.param == "sqlite":
        path = tmp_path / "queue.db"

        def open_queue(
            retry: queue_api.RetryPolicy | None = None, **options: Any
        ) -> queue_api.Queue:
            return SqliteQueue(path, retry=retry or FAST_RETRY, **options)
    elif request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("shared_postgres")
        schema = f"test_{uuid.uuid4().hex[:12]}"

        def open_queue(
            retry: queue_api.RetryPolicy | None = None, **options: Any
        ) -> queue_api.Queue:
            return PostgresQueue.from_url(
                pg.url(), retry=retry or FAST_RETRY, schema=schema, **options
            )
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")
        prefix = f"test-{uuid.uuid4().hex[:12]}"

        def open_queue(
            retry: queue_api.RetryPolicy | None = None, **options: Any
        ) -> queue_api.Queue:
            return RedisQueue.from_url(
                server.url,
                retry=retry or FAST_RETRY,
                prefix=prefix,
                consumer=f"c{len(opened)}",
                **options,
            )

    def make(retry: queue_api.RetryPolicy | None = None, **options: Any) -> queue_api.Queue:
        """One more handle; `options`: retention_seconds, result_max_bytes."""
        queue = open_queue(retry, **options)
        opened.append(queue)
        return queue

    try:
        yield make
    finally:
        for queue in opened:
            queue.close()


@pytest.fixture
def queue(make_queue: MakeQueue) -> queue_api.Queue:
    return make_queue()


def pg_url(queue: PostgresQueue) -> str:
    return queue._db.url  # the unredacted URL (`where` hides the user name too)


def pg_rows(queue: PostgresQueue, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the queue's own schema ({s}) behind its back."""
    with psycopg.connect(pg_url(queue), autocommit=True) as conn:
        cur = conn.execute(statement.replace("{s}", f'"{queue.schema}"'), params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def counts(queue: queue_api.Queue) -> tuple[int, int, int, int]:
    s = queue.stats()
    return (s.ready, s.delayed, s.leased, s.dead)


def fail(
    queue: queue_api.Queue, job: queue_api.Job, error: str = "boom", *, retry: bool = True
) -> None:
    queue.settle(failures=[queue_api.Failure(job, error, f"Traceback: {error}", retry=retry)])


# -- enqueue and fetch ---------------------------------------------------


def test_fetch_returns_jobs_oldest_first_across_tasks(queue: queue_api.Queue) -> None:
    before = time.time()
    sent = [("a", {"n": 0, "text": "héllo"}), ("b", [1, 2]), ("a", None), ("b", "x"), ("a", 3.5)]
    ids = [queue.enqueue(task, payload) for task, payload in sent]
    assert len(set(ids)) == len(ids)

    jobs = queue.fetch(10, ["a", "b"], 60)

    assert [j.id for j in jobs] == ids
    assert [(j.task, j.payload) for j in jobs] == sent
    assert all(j.attempt == 1 for j in jobs)
    assert all(before <= j.enqueued_at <= time.time() for j in jobs)
    assert counts(queue) == (0, 0, 5, 0)


def test_fetch_takes_at_most_n_and_only_the_given_tasks(queue: queue_api.Queue) -> None:
    a = [queue.enqueue("a", i) for i in range(3)]
    b = [queue.enqueue("b", i) for i in range(3)]
    c = queue.enqueue("c", 0)

    assert [j.id for j in queue.fetch(2, ["a"], 60)] == a[:2]
    assert [j.id for j in queue.fetch(10, {"b", "c"}, 60)] == [*b, c]
    assert [j.id for j in queue.fetch(10, ["a", "missing"], 60)] == a[2:]
    assert queue.fetch(10, ["a", "b", "c"], 60) == []
    assert queue.fetch(0, ["a"], 60) == []
    assert queue.fetch(5, [], 60) == []


def test_ack_removes_the_job(queue: queue_api.Queue) -> None:
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(acks=[job])
    queue.settle(acks=[job])  # twice: the second is a no-op, not an error
    assert counts(queue) == (0, 0, 0, 0)
    assert queue.fetch(1, ["t"], 0) == []


def test_enqueue_many_adds_all_in_order(queue: queue_api.Queue) -> None:
    assert queue.enqueue_many([]) == 0
    assert queue.enqueue_many(("t", i) for i in range(1200)) == 1200
    jobs = queue.fetch(2000, ["t"], 60)
    assert [j.payload for j in jobs] == list(range(1200))


@pytest.mark.parametrize("bad", [object(), float("nan"), {"k": {1, 2}}, b"bytes"])
def test_payload_that_is_not_json_is_refused_at_enqueue(queue: queue_api.Queue, bad: Any) -> None:
    with pytest.raises(queue_api.QueueError):
        queue.enqueue("t", bad)
    with pytest.raises(queue_api.QueueError):
        queue.enqueue_many([("t", 1), ("t", bad)])
    assert counts(queue) == (0, 0, 0, 0)  # nothing of the batch was added


# -- idempotency keys ----------------------------------------------------


def test_idempotency_key_returns_the_live_job(queue: queue_api.Queue) -> None:
    first = queue.enqueue("t", "first", key="order-7")
    assert queue.enqueue("t", "second", key="order-7") == first
    assert counts(queue) == (1, 0, 0, 0)

    [job] = queue.fetch(5, ["t"], 60)
    assert (job.id, job.payload) == (first, "first")
    assert queue.enqueue("t", "third", key="order-7") == first  # still live while leased

    queue.settle(acks=[job])
    again = queue.enqueue("t", "fourth", key="order-7")  # acked: the key is free again
    assert again != first
    assert [j.payload for j in queue.fetch(5, ["t"], 60)] == ["fourth"]


def test_idempotency_key_is_held_by_a_dead_job_until_purged(queue: queue_api.Queue) -> None:
    first = queue.enqueue("t", 1, key="k")
    [job] = queue.fetch(1, ["t"], 60)
    fail(queue, job, retry=False)
    assert queue.enqueue("t", 2, key="k") == first
    assert queue.dead_purge([first]) == 1
    assert queue.enqueue("t", 3, key="k") != first


# -- delays, leases and tokens -------------------------------------------


def test_delayed_job_is_fetched_only_once_due(queue: queue_api.Queue) -> None:
    queue.enqueue("t", "later", delay=3600)
    assert queue.fetch(5, ["t"], 60) == []
    assert counts(queue) == (0, 1, 0, 0)

    before = time.time()
    soon = queue.enqueue("t", "soon", delay=0.2)
    [job] = wait_until(lambda: queue.fetch(5, ["t"], 60), DEADLINE, "the delayed job is fetched")

    assert (job.id, job.payload) == (soon, "soon")
    assert time.time() >= before + 0.2  # never before it was due
    assert counts(queue) == (0, 1, 1, 0)


@pytest.mark.parametrize("delay", [float("nan"), float("inf")])
def test_delay_must_be_a_finite_number(queue: queue_api.Queue, delay: float) -> None:
    with pytest.raises(queue_api.QueueError):
        queue.enqueue("t", 1, delay=delay)
    assert counts(queue) == (0, 0, 0, 0)


def test_expired_lease_is_delivered_again_counting_an_attempt(make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()
    first.enqueue("t", "x")
    [held] = first.fetch(1, ["t"], 0.2)

    [again] = wait_until(
        lambda: second.fetch(1, ["t"], 60), DEADLINE, "the expired job is delivered again"
    )

    assert (again.id, again.payload, again.attempt) == (held.id, "x", 2)
    assert again.token != held.token
    assert first.fetch(1, ["t"], 60) == []  # the new lease is live


def test_renew_keeps_a_job_past_its_first_lease(make_queue: MakeQueue) -> None:
    holder, other = make_queue(), make_queue()
    kept_id = holder.enqueue("t", "kept")
    control_id = holder.enqueue("t", "control")
    kept, control = holder.fetch(2, ["t"], 0.3)
    assert (kept.id, control.id) == (kept_id, control_id)

    holder.renew([kept], 3600)

    # The control job had the same lease and no renewal: once it is delivered again,
    # the first lease has passed for both, and only the renewal protects `kept`.
    reclaimed = wait_until(
        lambda: other.fetch(5, ["t"], 60), DEADLINE, "the control job's lease expires"
    )
    assert [j.id for j in reclaimed] == [control_id]
    holder.settle(acks=[kept])  # the renewed lease is still the holder's
    assert counts(holder) == (0, 0, 1, 0)


def test_stale_token_cannot_touch_the_job(make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()
    first.enqueue("t", "x")
    [stale] = first.fetch(1, ["t"], 0)  # expired at once
    [live] = second.fetch(1, ["t"], 60)
    assert (live.id, live.attempt) == (stale.id, 2)

    first.settle(acks=[stale])
    first.settle(releases=[stale])
    fail(first, stale)
    fail(first, stale, retry=False)
    first.renew([stale], 3600)
    assert counts(first) == (0, 0, 1, 0)

    second.settle(releases=[live])
    [last] = second.fetch(1, ["t"], 60)
    assert last.attempt == 2  # the stale release did not uncount an attempt
    second.settle(acks=[last])
    assert counts(second) == (0, 0, 0, 0)


def test_lease_that_keeps_expiring_goes_dead(make_queue: MakeQueue) -> None:
    queue = make_queue(queue_api.RetryPolicy(max_attempts=2, backoff_seconds=0.01))
    job_id = queue.enqueue("t", "crashy")
    assert [j.attempt for j in queue.fetch(1, ["t"], 0)] == [1]
    assert [j.attempt for j in queue.fetch(1, ["t"], 0)] == [2]
    assert queue.fetch(1, ["t"], 0) == []  # a third delivery would exceed max_attempts

    [dead] = queue.dead_list()
    assert (dead.id, dead.attempts, dead.payload) == (job_id, 3, "crashy")
    assert dead.error == "lease expired 2 times: its worker died each time"
    assert counts(queue) == (0, 0, 0, 1)


def test_release_keeps_the_place_and_does_not_count_the_attempt(queue: queue_api.Queue) -> None:
    a = queue.enqueue("t", "a")
    b = queue.enqueue("t", "b")
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(releases=[job])
    assert counts(queue) == (2, 0, 0, 0)

    jobs = queue.fetch(5, ["t"], 60)
    assert [(j.id, j.attempt) for j in jobs] == [(a, 1), (b, 1)]
    queue.settle(releases=jobs)
    assert [(j.id, j.attempt) for j in queue.fetch(5, ["t"], 60)] == [(a, 1), (b, 1)]


# -- failures and dead letters -------------------------------------------


def test_failure_is_retried_with_backoff_then_dead(queue: queue_api.Queue) -> None:
    job_id = queue.enqueue("t", {"file": "a.bin"})
    before = time.time()
    for attempt in (1, 2, 3):
        [job] = wait_until(
            lambda: queue.fetch(1, ["t"], 60), DEADLINE, f"attempt {attempt} is delivered"
        )
        assert (job.id, job.attempt) == (job_id, attempt)
        fail(queue, job, f"boom {attempt}")

    assert counts(queue) == (0, 0, 0, 1)
    [dead] = queue.dead_list()
    assert (dead.id, dead.task, dead.payload, dead.attempts) == (job_id, "t", {"file": "a.bin"}, 3)
    assert (dead.error, dead.traceback) == ("boom 3", "Traceback: boom 3")
    assert before <= dead.failed_at <= time.time()


def test_failure_waits_for_its_backoff(make_queue: MakeQueue) -> None:
    queue = make_queue(queue_api.RetryPolicy(max_attempts=5, backoff_seconds=3600))
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    fail(queue, job)
    assert counts(queue) == (0, 1, 0, 0)
    assert queue.fetch(1, ["t"], 60) == []


def test_failure_without_retry_is_dead_at_once(queue: queue_api.Queue) -> None:
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    fail(queue, job, "bad input", retry=False)
    [dead] = queue.dead_list()
    assert (dead.attempts, dead.error) == (1, "bad input")
    assert counts(queue) == (0, 0, 0, 1)


def test_dead_letters_list_retry_and_purge(queue: queue_api.Queue) -> None:
    ids = [queue.enqueue("t", i) for i in range(4)]
    for job in queue.fetch(4, ["t"], 60):
        fail(queue, job, f"e{job.payload}", retry=False)

    assert [d.id for d in queue.dead_list()] == ids[::-1]  # newest first
    assert [d.id for d in queue.dead_list(limit=2)] == ids[:1:-1]

    assert queue.dead_retry([ids[0]]) == 1
    assert queue.dead_retry([ids[0], "987654"]) == 0  # not dead (any more): ignored
    with pytest.raises(queue_api.QueueError):
        queue.dead_retry(["not-an-id"])
    [job] = queue.fetch(5, ["t"], 60)
    assert (job.id, job.attempt) == (ids[0], 1)  # a fresh attempt count

    assert queue.dead_retry() == 3
    assert counts(queue) == (3, 0, 1, 0)
    for job in queue.fetch(5, ["t"], 60):
        fail(queue, job, retry=False)
    assert queue.dead_purge([ids[1]]) == 1
    assert queue.dead_purge() == 2
    assert queue.dead_list() == []
    assert counts(queue) == (0, 0, 1, 0)


def test_bury_unknown_dead_letters_waiting_jobs_of_unconfigured_tasks(
    make_queue: MakeQueue,
) -> None:
    queue, other = make_queue(), make_queue()
    keep = queue.enqueue("known", 0)
    live = queue.enqueue("gone", "live lease")
    expired = queue.enqueue("gone", "expired lease")
    ready = queue.enqueue("gone", "ready")
    delayed = queue.enqueue("gone", "delayed", delay=3600)
    [held] = other.fetch(1, ["gone"], 3600)
    assert queue.fetch(1, ["gone"], 0)[0].id == expired

    assert queue.bury_unknown({"known"}) == 3

    dead = {d.id: d for d in queue.dead_list()}
    assert set(dead) == {expired, ready, delayed}
    assert {d.error for d in dead.values()} == {"task 'gone' is not configured"}
    assert held.id == live
    other.settle(acks=[held])  # a live lease stays with its holder
    assert [j.id for j in queue.fetch(5, ["known"], 60)] == [keep]
    assert counts(queue) == (0, 0, 1, 3)


# -- inspection ----------------------------------------------------------


def test_stats_count_jobs_by_state(queue: queue_api.Queue) -> None:
    assert queue.stats() == queue_api.QueueStats(0, 0, 0, 0, None)
    before = time.time()
    for i in range(3):
        queue.enqueue("t", i)
    queue.enqueue("t", "later", delay=3600)
    first, second = queue.fetch(2, ["t"], 60)
    fail(queue, second, retry=False)

    stats = queue.stats()

    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (1, 1, 1, 1)
    assert stats.oldest_ready_age_seconds is not None
    # Redis stamps entries to the millisecond: allow that much rounding, no more.
    assert 0 <= stats.oldest_ready_age_seconds <= time.time() - before + 0.002
    queue.settle(acks=[first])
    assert counts(queue) == (1, 1, 0, 1)


def test_two_consumers_never_hold_the_same_job(make_queue: MakeQueue) -> None:
    total = 120
    producer = make_queue()
    producer.enqueue_many(("t", i) for i in range(total))
    consumers = [make_queue(), make_queue()]
    got: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    end = time.monotonic() + DEADLINE

    def work(queue: queue_api.Queue, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < end:
                with lock:
                    if len(got) >= total:
                        return
                jobs = queue.fetch(rng.randint(1, 4), ["t"], 60)
                with lock:
                    got.extend(j.id for j in jobs)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(consumers[i % 2], i), name=f"consumer-{i}")
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE + 5)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(got) == len(set(got)) == total  # each job delivered once, none lost
    assert counts(producer) == (0, 0, total, 0)


# -- Redis only: outages, secrets, URLs -----------------------------------

SECRET = "s3cret-Pa55"


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """A redis-server of the test's own, for tests that stop it or configure it."""
    with redis_servers(tmp_path) as start:
        yield start


def assert_one_clean_line(exc: queue_api.QueueError, *secrets: str) -> None:
    message = str(exc)
    assert message and "\n" not in message
    assert "Traceback" not in message
    for secret in secrets:
        assert secret not in message


def test_redis_queue_survives_a_restart_without_losing_jobs(
    start_redis: StartRedis,
) -> None:
    server = start_redis(appendonly=True)
    queue = RedisQueue.from_url(server.url, retry=FAST_RETRY, consumer="survivor")
    try:
        ids = [queue.enqueue("t", i) for i in range(5)]
        queue.enqueue("t", "later", delay=3600)
        held = queue.fetch(2, ["t"], 3600)

        server.stop()
        for operation in (
            lambda: queue.enqueue("t", "lost?"),
            lambda: queue.fetch(1, ["t"], 60),
            queue.stats,
            queue.ping,
            lambda: queue.settle(acks=held),
        ):
            with pytest.raises(queue_api.QueueUnavailable) as info:
                operation()
            assert_one_clean_line(info.value)
            assert f"127.0.0.1:{server.port}" in str(info.value)

        server.start()  # same port, same directory: the append-only file is replayed
        assert counts(queue) == (3, 1, 2, 0)
        queue.settle(acks=held)  # the leases taken before the outage still hold
        rest = queue.fetch(10, ["t"], 60)
        assert [j.id for j in held + rest] == ids
    finally:
        queue.close()


def test_redis_queue_works_again_after_redis_lost_its_data(start_redis: StartRedis) -> None:
    server = start_redis(appendonly=False)
    queue = RedisQueue.from_url(server.url, retry=FAST_RETRY, consumer="amnesiac")
    try:
        queue.enqueue("t", "before")
        [old] = queue.fetch(1, ["t"], 3600)
        server.restart()  # no persistence: keys, streams and the group are gone

        assert counts(queue) == (0, 0, 0, 0)
        new_id = queue.enqueue("t", "after")
        assert new_id == old.id  # the id counter started over too...
        [new] = queue.fetch(1, ["t"], 3600)
        queue.settle(acks=[old])  # ...but the old lease token does not match the new job
        assert counts(queue) == (0, 0, 1, 0)
        queue.settle(acks=[new])
        assert counts(queue) == (0, 0, 0, 0)
    finally:
        queue.close()


def test_redis_queue_unreachable_is_unavailable_not_a_crash() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    queue = RedisQueue.from_url(url, connect_timeout=1.0)
    try:
        with pytest.raises(queue_api.QueueUnavailable) as info:
            queue.ping()
        assert_one_clean_line(info.value, SECRET)
        assert SECRET not in repr(queue)
    finally:
        queue.close()


def test_redis_password_from_url_or_environment(
    start_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_redis(password=SECRET)
    with_password = server.url.replace("redis://", f"redis://:{SECRET}@")
    monkeypatch.delenv("DRAINPOOL_REDIS_PASSWORD", raising=False)

    def round_trip(url: str) -> None:
        queue = RedisQueue.from_url(url, prefix=uuid.uuid4().hex)
        try:
            job_id = queue.enqueue("t", "x")
            assert [j.id for j in queue.fetch(1, ["t"], 60)] == [job_id]
        finally:
            queue.close()

    round_trip(with_password)

    for url in (server.url, with_password.replace(SECRET, "wrong-guess")):
        queue = RedisQueue.from_url(url)
        with pytest.raises(queue_api.QueueUnavailable) as info:
            queue.ping()
        assert_one_clean_line(info.value, SECRET, "wrong-guess")
        queue.close()

    monkeypatch.setenv("DRAINPOOL_REDIS_PASSWORD", SECRET)
    round_trip(server.url)
    monkeypatch.setenv("DRAINPOOL_REDIS_PASSWORD", "wrong-guess")
    round_trip(with_password)  # a password in the URL wins over the environment


def test_redis_over_a_unix_socket(start_redis: StartRedis) -> None:
    server = start_redis(unixsocket=True)
    queue = RedisQueue.from_url(f"unix://{server.socket_path}?db=0")
    try:
        job_id = queue.enqueue("t", {"via": "socket"})
        assert [j.payload for j in queue.fetch(1, ["t"], 60)] == [{"via": "socket"}]
        assert queue.stats().leased == 1
        assert job_id
    finally:
        queue.close()


def test_redis_over_tls(start_redis: StartRedis) -> None:
    server = start_redis(tls=True, password=SECRET)
    assert server.url.startswith("rediss://")
    queue = RedisQueue.from_url(server.url, password=SECRET)
    try:
        job_id = queue.enqueue("t", "sealed")
        assert [j.id for j in queue.fetch(1, ["t"], 60)] == [job_id]
    finally:
        queue.close()
    plain = RedisQueue.from_url(f"redis://127.0.0.1:{server.port}/0", password=SECRET)
    try:
        with pytest.raises(queue_api.QueueUnavailable):  # the server speaks only TLS
            plain.ping()
    finally:
        plain.close()


def test_redis_leaves_nothing_behind_finished_jobs(shared_redis: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    queue = RedisQueue.from_url(
        shared_redis.url, retry=FAST_RETRY, prefix=prefix, retention_seconds=0
    )
    try:
        queue.enqueue("t", 1, key="a")
        queue.enqueue("t", 2, key="b")
        queue.enqueue("u", 3, delay=0.01)
        acked, dead = queue.fetch(2, ["t"], 60)
        queue.settle(acks=[acked], failures=[queue_api.Failure(dead, "x", retry=False)])
        queue.dead_purge()
        [late] = wait_until(
            lambda: queue.fetch(1, ["u"], 60), DEADLINE, "the delayed job is fetched"
        )
        queue.settle(acks=[late])
        queue.close()  # also leaves the consumer groups

        raw = redis.Redis.from_url(shared_redis.url, decode_responses=True, protocol=2)
        with raw:
            left = set(raw.scan_iter(f"{prefix}:*"))
            # The outcome counts of this minute (the dead job) expire by themselves.
            buckets = {key for key in left if key.startswith(f"{prefix}:outcomes:")}
            assert len(buckets) in (1, 2) and all(raw.ttl(key) > 0 for key in buckets)
            # What may stay: the id counter, the task list, the (empty) streams and their
            # last delivered entries (issue 21: no XINFO per fetch), the version.
            assert left - buckets == {
                f"{prefix}:seq",
                f"{prefix}:tasks",
                f"{prefix}:version",
                *(f"{prefix}:stream:{t}" for t in "tu"),
                *(f"{prefix}:delivered:{t}" for t in "tu"),
            }
            for task in "tu":
                stream = f"{prefix}:stream:{task}"
                assert raw.xlen(stream) == 0
                assert [g["consumers"] for g in raw.xinfo_groups(stream)] == [0]
    finally:
        queue.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@db.internal:6379/2", "redis://:***@db.internal:6379/2"),
        (f"rediss://worker:{SECRET}@db:6380/0", "rediss://worker:***@db:6380/0"),
        (f"redis://{SECRET}@db:6379", "redis://***@db:6379"),
        (f"unix://:{SECRET}@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        (f"redis://db:6379/0?password={SECRET}&db=3", "redis://db:6379/0?password=***&db=3"),
        ("redis://db:6379/0", "redis://db:6379/0"),
        (f"redis://:{SECRET}@[::1:6379/0", None),
        (
            f"postgresql://app:{SECRET}@db:5432/app?sslmode=require",
            "postgresql://app:***@db:5432/app?sslmode=require",
        ),
        (f"postgres://db/app?password={SECRET}&sslmode=disable", None),
    ],
)
def test_redact_url_never_shows_the_password(url: str, shown: str | None) -> None:
    redacted = redact_url(url)
    assert SECRET not in redacted
    if shown is not None:
        assert redacted == shown


# == job records ==================================================================


SLOW_RETRY = queue_api.RetryPolicy(
    max_attempts=3, backoff_seconds=600, backoff_max_seconds=600, rng=random.Random(7)
)
WORKER = queue_api.WorkerIdentity("box-1", 4242, "fast")


def state_of(queue: queue_api.Queue, job_id: str) -> queue_api.JobState | None:
    info = queue.job(job_id)
    return None if info is None else info.state


# -- states ---------------------------------------------------------------


def test_every_state_is_reached_through_the_api(make_queue: MakeQueue) -> None:
    queue = make_queue(SLOW_RETRY)
    before = time.time()
    later = queue.enqueue("t", {"n": 0}, delay=600)
    now_id = queue.enqueue("t", {"n": 1}, key="k1")
    assert state_of(queue, later) is queue_api.JobState.DELAYED
    waiting = queue.job(now_id)
    assert waiting is not None and waiting.state is queue_api.JobState.WAITING
    assert (waiting.payload, waiting.key, waiting.attempts) == ({"n": 1}, "k1", 0)
    assert waiting.started_at is None and waiting.worker is None
    assert before <= waiting.enqueued_at <= time.time()

    [job] = queue.fetch(1, ["t"], 60, worker=WORKER)
    running = queue.job(job.id)
    assert running is not None and running.state is queue_api.JobState.RUNNING
    assert running.worker == WORKER and running.attempts == 1
    assert running.started_at is not None and running.started_at >= waiting.enqueued_at

    queue.settle(failures=[queue_api.Failure(job, "boom", "Traceback: boom")])
    backing_off = queue.job(job.id)
    assert backing_off is not None and backing_off.state is queue_api.JobState.DELAYED
    assert (backing_off.error, backing_off.traceback) == ("boom", "Traceback: boom")

    dead_id = queue.enqueue("d", 2)
    [doomed] = queue.fetch(1, ["d"], 60)
    queue.settle(failures=[queue_api.Failure(doomed, "fatal", "tb", retry=False)])
    dead = queue.job(dead_id)
    assert dead is not None and dead.state is queue_api.JobState.DEAD
    assert dead.error == "fatal" and dead.finished_at is not None

    done_id = queue.enqueue("c", 3)
    [first] = queue.fetch(1, ["c"], 60, worker=WORKER)
    queue.settle(releases=[first])
    assert state_of(queue, done_id) is queue_api.JobState.WAITING
    [second] = queue.fetch(1, ["c"], 60, worker=queue_api.WorkerIdentity("box-2", 7, "slow"))
    queue.settle(acks=[queue_api.Done(second, '{"ok":true}')])
    completed = queue.job(done_id)
    assert completed is not None and completed.state is queue_api.JobState.COMPLETED
    assert completed.result == {"ok": True} and completed.result_kept
    assert completed.worker == queue_api.WorkerIdentity("box-2", 7, "slow")  # the last attempt's
    assert completed.finished_at is not None and completed.started_at is not None
    assert completed.started_at <= completed.finished_at
    assert json.loads(json.dumps(completed.as_dict()))["state"] == "completed"


def test_first_start_is_kept_across_a_release(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1)
    [first] = queue.fetch(1, ["t"], 60)
    started = queue.job(job_id)
    assert started is not None and started.started_at is not None
    queue.settle(releases=[first])
    time.sleep(0.01)  # so that a second claim's time would differ; not a check
    queue.fetch(1, ["t"], 60)
    again = queue.job(job_id)
    assert again is not None and again.started_at == started.started_at


def test_cancelled_is_a_state_with_its_own_exception() -> None:
    info = queue_api.JobInfo("9", "t", None, None, queue_api.JobState.CANCELLED, 1, 0.0)
    assert queue_api.JobState.CANCELLED.terminal and "cancelled" in [
        s.value for s in queue_api.JobState
    ]
    with pytest.raises(queue_api.JobCancelled, match="job 9 was cancelled"):
        result_of(info)


# -- results -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "limit", "kept", "note"),
    [
        ({"sha": "ab", "n": [1, 2.5, None]}, 65536, True, ""),
        ("x" * 2000, 1024, False, "result not kept: 2 KiB > 1 KiB"),
        ("y" * 1_300_000, 65536, False, "result not kept: 1.2 MiB > 64 KiB"),
        (object(), 65536, False, "result not kept: not JSON: Object of type object"),
        (float("nan"), 65536, False, "result not kept: not JSON: Out of range float"),
    ],
)
def test_results_are_kept_under_the_cap_or_say_why_not(
    make_queue: MakeQueue, value: Any, limit: int, kept: bool, note: str
) -> None:
    queue = make_queue(result_max_bytes=limit)
    job_id = queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    result_json, why = encode_result(value, limit)
    assert why.startswith(note)
    queue.settle(acks=[queue_api.Done(job, result_json, why)])

    info = queue.job(job_id)

    assert info is not None and info.state is queue_api.JobState.COMPLETED
    assert info.result_kept is kept and info.result_note.startswith(note)
    assert queue.result(job_id, timeout=0) == (value if kept else None)


def test_encode_result_never_raises() -> None:
    class Loud:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    assert encode_result(nested)[0] is None
    assert encode_result({Loud(): 1})[0] is None
    assert encode_result({"a": 1}) == ('{"a":1}', "")


def test_a_plain_job_ack_completes_without_a_result(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1)
    queue.settle_and_fetch(queue.fetch(1, ["t"], 60), [], [], 1, ["t"], 60)
    info = queue.job(job_id)
    assert info is not None and info.state is queue_api.JobState.COMPLETED
    assert (info.result, info.result_kept, info.result_note) == (None, False, "")


def test_result_of_a_dead_job_raises_with_its_error(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(failures=[queue_api.Failure(job, "ValueError: bad", "Traceback ...", retry=False)])
    with pytest.raises(queue_api.JobFailed) as failed:
        queue.result(job_id, timeout=1)
    assert failed.value.error == "ValueError: bad"
    assert failed.value.traceback == "Traceback ..."


# -- retention -----------------------------------------------------------------


def test_retention_zero_removes_the_record_at_the_ack(make_queue: MakeQueue) -> None:
    queue = make_queue(retention_seconds=0)
    job_id = queue.enqueue("t", 1, key="once")
    [job] = queue.fetch(1, ["t"], 60)
    assert state_of(queue, job_id) is queue_api.JobState.RUNNING
    queue.settle(acks=[queue_api.Done(job, "1")])
    assert queue.job(job_id) is None
    with pytest.raises(queue_api.JobNotFound):
        queue.wait(job_id, timeout=1)
    assert queue.enqueue("t", 2, key="once") != job_id


def test_a_completed_job_frees_its_key_but_shows_it(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1, key="k")
    assert queue.enqueue("t", 1, key="k") == job_id  # held while it waits
    [job] = queue.fetch(1, ["t"], 60)
    assert queue.enqueue("t", 1, key="k") == job_id  # and while it runs
    queue.settle(acks=[job])
    info = queue.job(job_id)
    assert info is not None and info.key == "k"
    assert queue.enqueue("t", 1, key="k") != job_id  # released at completion


def test_a_record_expires_after_its_retention(make_queue: MakeQueue) -> None:
    queue = make_queue(retention_seconds=0.3)
    job_id = queue.enqueue("t", 1)
    keep_id = queue.enqueue("t", 2)
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(acks=[job])
    assert state_of(queue, job_id) is queue_api.JobState.COMPLETED

    wait_until(lambda: queue.job(job_id) is None, DEADLINE, "the record expires")

    assert [i.id for i in queue.jobs()] == [keep_id]
    assert queue.prune() == 1 and queue.prune() == 0
    assert state_of(queue, keep_id) is queue_api.JobState.WAITING
    if isinstance(queue, SqliteQueue):
        with sqlite3.connect(queue.path) as conn:
            assert conn.execute("SELECT id FROM jobs").fetchall() == [(int(keep_id),)]
    elif isinstance(queue, PostgresQueue):
        assert pg_rows(queue, "SELECT id FROM {s}.jobs") == [(int(keep_id),)]
    else:
        assert isinstance(queue, RedisQueue)
        raw = redis.Redis.from_url(queue.where, decode_responses=True)
        with raw:
            assert not raw.exists(f"{queue.prefix}:job:{job_id}")
            assert raw.zrange(f"{queue.prefix}:jobs", 0, -1) == [keep_id]
            assert raw.zcard(f"{queue.prefix}:expiry") == 0


def test_records_survive_reopening_the_queue(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", {"a": 1})
    [job] = queue.fetch(1, ["t"], 60, worker=WORKER)
    queue.settle(acks=[queue_api.Done(job, "[1,2]")])
    before = queue.job(job_id)
    queue.close()

    after = make_queue().job(job_id)

    assert after == before and after is not None and after.result == [1, 2]


# -- listing and lookup ---------------------------------------------------------


def test_jobs_lists_newest_first_with_filters(make_queue: MakeQueue) -> None:
    queue = make_queue()
    ids = [queue.enqueue(task, n) for n, task in enumerate("abab")]
    [job] = queue.fetch(1, ["a"], 60)
    queue.settle(acks=[job])

    assert [i.id for i in queue.jobs()] == ids[::-1]
    assert [i.id for i in queue.jobs(task="b")] == [ids[3], ids[1]]
    assert [i.id for i in queue.jobs(state="completed")] == [ids[0]]
    assert [i.id for i in queue.jobs(state=queue_api.JobState.WAITING, task="a")] == [ids[2]]
    assert [i.id for i in queue.jobs(limit=2)] == [ids[3], ids[2]]
    assert queue.jobs(state="dead") == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"state": "finished"}, "unknown job state 'finished'"),
        ({"limit": 0}, "limit must be between 1 and 10000"),
        ({"limit": 10_001}, "limit must be between 1 and 10000"),
    ],
)
def test_jobs_refuses_bad_filters(
    make_queue: MakeQueue, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(queue_api.QueueError, match=message):
        make_queue().jobs(**options)


def test_an_unknown_id_has_no_record(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.enqueue("t", 1)
    assert queue.job("999999") is None and queue.job("not-an-id") is None
    with pytest.raises(queue_api.JobNotFound) as missing:
        queue.result("999999")
    assert str(missing.value) == (
        "no job 999999 (never enqueued, or its record expired after retention_seconds)"
    )
    with pytest.raises(queue_api.QueueError, match="timeout must be"):
        queue.wait("1", timeout=-1)


def test_undecodable_stored_json_is_shown_with_the_reason(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(acks=[queue_api.Done(job, '{"ok":1}')])
    if isinstance(queue, SqliteQueue):
        with sqlite3.connect(queue.path) as conn:
            conn.execute(
                "UPDATE jobs SET payload = ?, result = '{bad' WHERE id = ?", (b"\xff", job_id)
            )
    elif isinstance(queue, PostgresQueue):  # text columns hold only UTF-8: bad JSON instead
        pg_rows(queue, "UPDATE {s}.jobs SET payload = '[', result = '{bad' WHERE id = %s", job_id)
    else:
        assert isinstance(queue, RedisQueue)
        with redis.Redis.from_url(queue.where) as raw:
            raw.hset(f"{queue.prefix}:job:{job_id}", mapping={"payload": "[", "result": "{bad"})

    info = queue.job(job_id)

    assert info is not None and info.state is queue_api.JobState.COMPLETED
    assert info.payload_error.startswith("payload is not")
    assert info.result == "{bad" and not info.result_kept
    assert info.result_note.startswith("result not readable: is not valid JSON")
    assert queue.jobs()[0].result_note == info.result_note
    assert queue.result(job_id) is None


# -- waiting ---------------------------------------------------------------------


def waiter_thread(
    queue: queue_api.Queue, job_id: str, timeout: float
) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(queue.wait(job_id, timeout))
        except Exception as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("end", ["completed", "dead"])
def test_wait_in_another_thread_returns_when_the_job_ends(make_queue: MakeQueue, end: str) -> None:
    producer, worker = make_queue(), make_queue()
    job_id = producer.enqueue("t", 1)
    thread, outcome = waiter_thread(producer, job_id, DEADLINE)
    [job] = worker.fetch(1, ["t"], 60)
    time.sleep(0.05)  # let the waiter block first (either order must work; not a check)
    assert outcome == []
    if end == "completed":
        worker.settle(acks=[queue_api.Done(job, '"r"')])
    else:
        worker.settle(failures=[queue_api.Failure(job, "boom", retry=False)])
    thread.join(DEADLINE)
    [info] = outcome
    assert isinstance(info, queue_api.JobInfo) and info.state.value == end


def test_wait_times_out_while_the_job_runs(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1)
    queue.fetch(1, ["t"], 60)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job_id} is still running"):
        queue.wait(job_id, timeout=0.2)
    assert time.monotonic() - started >= 0.2


WAITER = """
import sys
from drainpool.queue.postgres import PostgresQueue
from drainpool.queue.redis import RedisQueue
from drainpool.queue.sqlite import SqliteQueue
kind, where, prefix, job_id, timeout = sys.argv[1:]
if kind == "sqlite":
    queue = SqliteQueue(where)
elif kind == "postgres":
    queue = PostgresQueue.from_url(where, schema=prefix)
else:
    queue = RedisQueue.from_url(where, prefix=prefix)
try:
    info = queue.wait(job_id, float(timeout))
    print("ended", info.state.value, info.result, flush=True)
except TimeoutError as exc:
    print("timeout", exc, flush=True)
finally:
    queue.close()
"""


def start_waiter(queue: queue_api.Queue, job_id: str, timeout: float) -> subprocess.Popen[str]:
    if isinstance(queue, SqliteQueue):
        spec = ["sqlite", str(queue.path), ""]
    elif isinstance(queue, PostgresQueue):
        spec = ["postgres", pg_url(queue), queue.schema]  # the test cluster has no password
    else:
        assert isinstance(queue, RedisQueue)
        spec = ["redis", queue.where, queue.prefix]
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WAITER), *spec, job_id, str(timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("end", ["completed", "dead", "timeout"])
def test_wait_in_another_process(make_queue: MakeQueue, end: str) -> None:
    queue = make_queue()
    job_id = queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    waiter = start_waiter(queue, job_id, 0.5 if end == "timeout" else DEADLINE)
    try:
        if end == "completed":
            queue.settle(acks=[queue_api.Done(job, "42")])
        elif end == "dead":
            queue.settle(failures=[queue_api.Failure(job, "boom", retry=False)])
        out, _ = waiter.communicate(timeout=DEADLINE)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    expected = {
        "completed": "ended completed 42",
        "dead": "ended dead None",
        "timeout": f"timeout job {job_id} is still running after 0.5 s",
    }[end]
    assert out.strip() == expected and waiter.returncode == 0


# -- upgrades ----------------------------------------------------------------------


def test_redis_keys_of_the_previous_release_are_upgraded_in_place(
    shared_redis: RedisServer,
) -> None:
    """Today's keys are what the previous release wrote, less the records index and version.

    So the old layout is built by this code, then those keys (and the new hash fields)
    are removed; opening the queue again must index every job and keep it.
    """
    prefix = f"old-{time.time_ns()}"
    old = RedisQueue.from_url(shared_redis.url, retry=FAST_RETRY, prefix=prefix)
    waiting = old.enqueue("t", 1, key="w")
    later = old.enqueue("t", 2, delay=600)
    running = old.enqueue("t", 3)
    dead = old.enqueue("d", 4)
    [doomed] = old.fetch(1, ["d"], 60)
    old.settle(failures=[queue_api.Failure(doomed, "old error", retry=False)])
    leased = old.fetch(2, ["t"], 60)
    old.settle(releases=[j for j in leased if j.id == waiting])
    old.close()
    with redis.Redis.from_url(shared_redis.url) as raw:
        raw.delete(f"{prefix}:jobs", f"{prefix}:version")
        for job_id in (waiting, running, dead):
            raw.hdel(f"{prefix}:job:{job_id}", "host", "pid", "pool", "started_at")

    queue = RedisQueue.from_url(shared_redis.url, retry=FAST_RETRY, prefix=prefix)
    try:
        listed = {i.id: i.state for i in queue.jobs()}
        assert listed == {
            waiting: queue_api.JobState.WAITING,
            later: queue_api.JobState.DELAYED,
            running: queue_api.JobState.RUNNING,
            dead: queue_api.JobState.DEAD,
        }
        stats = queue.stats()
        assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (1, 1, 1, 1)
        [again] = queue.fetch(1, ["t"], 60)
        assert again.id == waiting and queue.enqueue("t", 9, key="w") == waiting
        info = queue.job(dead)
        assert info is not None and info.error == "old error"
    finally:
        queue.close()


# == outcome counts per minute (issue 18, the console's chart) ===================
# settle(..., outcomes=...) adds a batch's counts to the current minute in the same
# step; the queue adds `dead` for final failures; outcome_minutes() reads them back.


def totals(minutes: list[dict[str, Any]]) -> dict[str, int]:
    """The counts summed over every minute (a test may straddle a minute's end)."""
    return {name: sum(m[name] for m in minutes) for name in OUTCOMES}


def leased(queue: queue_api.Queue, n: int) -> list[queue_api.Job]:
    for i in range(n):
        queue.enqueue("t", i)
    return wait_until(lambda: queue.fetch(n, ["t"], 60), what=f"{n} jobs leased")


def test_settle_counts_outcomes_per_minute_durably(make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()  # two daemons on one queue
    since = time.time() - MINUTE
    a, b, c, d = leased(first, 4)
    first.settle(acks=[a, b], releases=[c], outcomes={"completed": 2, "abandoned": 1})
    [e] = leased(second, 1)
    more = second.settle_and_fetch(
        [],
        [],
        [queue_api.Failure(d, "boom", retry=False), queue_api.Failure(e, "boom")],
        0,
        ["t"],
        60,
        outcomes={"failed": 2, "cancelled": 0},
    )
    assert more == []

    expected = dict.fromkeys(OUTCOMES, 0) | {"completed": 2, "abandoned": 1, "failed": 2, "dead": 1}
    assert totals(first.outcome_minutes(since)) == expected
    first.close()
    reopened = make_queue()  # as after a restart: the counts are in the queue's storage
    minutes = reopened.outcome_minutes(since)
    assert totals(minutes) == expected
    assert all(m["minute"] % MINUTE == 0 for m in minutes)
    assert [m["minute"] for m in minutes] == sorted(m["minute"] for m in minutes)


def test_outcome_minutes_gives_every_minute_zero_filled(queue: queue_api.Queue) -> None:
    minutes = queue.outcome_minutes(time.time() - 10 * MINUTE)
    assert len(minutes) in (10, 11, 12)  # from since's minute to now's, both included
    assert all(set(m) == {"minute", *OUTCOMES} for m in minutes)
    assert totals(minutes) == dict.fromkeys(OUTCOMES, 0)
    steps = {b["minute"] - a["minute"] for a, b in itertools.pairwise(minutes)}
    assert steps == {MINUTE}
    # Never further back than the buckets are kept.
    assert len(queue.outcome_minutes(0)) <= KEEP_SECONDS // MINUTE + 2


@pytest.mark.parametrize(
    ("outcomes", "named"),
    [({"exploded": 1}, "exploded"), ({"completed": -1}, "completed"), ({"failed": 1.5}, "failed")],
)
def test_bad_outcome_counts_are_refused_and_nothing_is_settled(
    queue: queue_api.Queue, outcomes: dict[str, Any], named: str
) -> None:
    [job] = leased(queue, 1)
    with pytest.raises(queue_api.QueueError, match=named):
        queue.settle(acks=[job], outcomes=outcomes)
    assert counts(queue) == (0, 0, 1, 0)
    assert totals(queue.outcome_minutes(time.time() - MINUTE))["completed"] == 0


def test_redis_outcome_buckets_expire_by_themselves(shared_redis: RedisServer) -> None:
    queue = RedisQueue.from_url(shared_redis.url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    try:
        [job] = leased(queue, 1)
        queue.settle(acks=[job], outcomes={"completed": 1})
        raw = redis.Redis.from_url(shared_redis.url, decode_responses=True)
        with raw:
            [key] = raw.keys(f"{queue.prefix}:outcomes:*")
            assert raw.hgetall(key) == {"completed": "1"}
            assert 0 < raw.ttl(key) <= KEEP_SECONDS
    finally:
        queue.close()


def test_sqlite_prune_drops_buckets_older_than_kept(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    queue = SqliteQueue(tmp_path / "q.db", clock=lambda: now[0])
    try:
        [job] = leased(queue, 1)
        queue.settle(acks=[job], outcomes={"completed": 3})
        assert totals(queue.outcome_minutes(now[0] - MINUTE))["completed"] == 3
        now[0] += KEEP_SECONDS - MINUTE
        queue.prune()
        assert totals(queue.outcome_minutes(0))["completed"] == 3  # still kept
        now[0] += 2 * MINUTE
        queue.prune()
        with sqlite3.connect(queue.path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM outcome_minutes").fetchone() == (0,)
    finally:
        queue.close()


def test_sqlite_schema_5_is_upgraded_keeping_jobs(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    old = SqliteQueue(path)
    job_id = old.enqueue("t", {"kept": True})
    old.close()
    with sqlite3.connect(path) as conn:  # the file as schema 5 left it
        conn.execute("DROP TABLE outcome_minutes")
        conn.execute("PRAGMA user_version = 5")
    conn.close()

    queue = SqliteQueue(path)
    try:
        [job] = queue.fetch(1, ["t"], 60)
        assert job.id == job_id and job.payload == {"kept": True}
        queue.settle(acks=[job], outcomes={"completed": 1})
        assert totals(queue.outcome_minutes(time.time() - MINUTE))["completed"] == 1
    finally:
        queue.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)  # 6 or later
    conn.close()


# Files an older build left: main's schema 8 (no cancel columns), and a branch build that
# numbered its cancel step 7 (no schedules, no meta). Each step is idempotent, so both end
# with every column and table.
@pytest.mark.parametrize(
    ("version", "dropped", "tables"),
    [
        (8, ("timeout_seconds", "cancel_requested_at", "cancel_reason", "cancel_by"), ()),
        (7, ("meta", "schedule", "tick"), ("schedule_ticks",)),
    ],
)
def test_sqlite_older_schemas_are_upgraded_keeping_jobs(
    tmp_path: Path, version: int, dropped: tuple[str, ...], tables: tuple[str, ...]
) -> None:
    path = tmp_path / "q.db"
    old = SqliteQueue(path)
    job_id = old.enqueue("t", {"kept": True})
    old.close()
    with sqlite3.connect(path) as conn:
        for column in dropped:
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        for table in tables:
            conn.execute(f"DROP TABLE {table}")
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()

    queue = SqliteQueue(path)
    try:
        timed = queue.enqueue("t", {}, timeout=5.0, meta={"k": "v"})
        assert queue.cancel(job_id).job.state == queue_api.JobState.CANCELLED
        [job] = queue.fetch(2, ["t"], 60)
        assert (job.id, job.timeout, job.meta) == (timed, 5.0, {"k": "v"})
        assert queue.schedule_ticks() == {}
    finally:
        queue.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()
    assert set(dropped) <= have


def test_meta_travels_with_its_job_beside_the_payload(make_queue: MakeQueue) -> None:
    queue = make_queue()
    traced = queue.enqueue(
        "t", {"n": 1}, meta={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    )
    plain = queue.enqueue("t", {"n": 2})
    queue.enqueue_many([("t", {"n": 3})])
    jobs = {job.id: job for job in queue.fetch(10, ["t"], 60)}
    assert jobs[traced].meta == {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    assert jobs[traced].payload == {"n": 1}
    assert jobs[plain].meta == {} and len(jobs) == 3
    with pytest.raises(queue_api.QueueError, match="string"):
        queue.enqueue("t", {}, meta={"n": 1})  # type: ignore[dict-item]
