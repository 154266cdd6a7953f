"""One contract for every queue backend: the same tests run on SQLite and on a real Redis.

A `make_queue()` call opens one more handle on the same queue (the same file,
or the same Redis keys): two handles are two consumers, as two daemons are.
Waits poll with a deadline; a lease of 0 seconds is expired the moment it is
given, which tests expiry without waiting for a clock.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from drainpool.queue.base import (
    Failure,
    Job,
    Queue,
    QueueError,
    QueueStats,
    QueueUnavailable,
    RetryPolicy,
)
from drainpool.queue.redis import RedisQueue, redact_url
from drainpool.queue.sqlite import SqliteQueue

from tests.support.net import free_port
from tests.support.redis_server import RedisServer, redis_servers
from tests.support.waiting import wait_until

T = TypeVar("T")
MakeQueue = Callable[..., Queue]
StartRedis = Callable[..., RedisServer]
DEADLINE = 15.0  # seconds for any awaited condition; generous on a shared machine
FAST_RETRY = RetryPolicy(
    max_attempts=3, backoff_seconds=0.01, backoff_max_seconds=0.01, rng=random.Random(7)
)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the contract tests; each test gets its own key prefix."""
    with redis_servers(tmp_path_factory.mktemp("redis")) as start:
        yield start()


@pytest.fixture(params=["sqlite", "redis"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeQueue]:
    opened: list[Queue] = []
    if request.param == "sqlite":
        path = tmp_path / "queue.db"

        def open_queue(retry: RetryPolicy | None = None) -> Queue:
            return SqliteQueue(path, retry=retry or FAST_RETRY)
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")
        prefix = f"test-{uuid.uuid4().hex[:12]}"

        def open_queue(retry: RetryPolicy | None = None) -> Queue:
            return RedisQueue.from_url(
                server.url, retry=retry or FAST_RETRY, prefix=prefix, consumer=f"c{len(opened)}"
            )

    def make(retry: RetryPolicy | None = None) -> Queue:
        queue = open_queue(retry)
        opened.append(queue)
        return queue

    try:
        yield make
    finally:
        for queue in opened:
            queue.close()


@pytest.fixture
def queue(make_queue: MakeQueue) -> Queue:
    return make_queue()


def counts(queue: Queue) -> tuple[int, int, int, int]:
    s = queue.stats()
    return (s.ready, s.delayed, s.leased, s.dead)


def fail(queue: Queue, job: Job, error: str = "boom", *, retry: bool = True) -> None:
    queue.settle(failures=[Failure(job, error, f"Traceback: {error}", retry=retry)])


# -- enqueue and fetch ---------------------------------------------------


def test_fetch_returns_jobs_oldest_first_across_tasks(queue: Queue) -> None:
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


def test_fetch_takes_at_most_n_and_only_the_given_tasks(queue: Queue) -> None:
    a = [queue.enqueue("a", i) for i in range(3)]
    b = [queue.enqueue("b", i) for i in range(3)]
    c = queue.enqueue("c", 0)

    assert [j.id for j in queue.fetch(2, ["a"], 60)] == a[:2]
    assert [j.id for j in queue.fetch(10, {"b", "c"}, 60)] == [*b, c]
    assert [j.id for j in queue.fetch(10, ["a", "missing"], 60)] == a[2:]
    assert queue.fetch(10, ["a", "b", "c"], 60) == []
    assert queue.fetch(0, ["a"], 60) == []
    assert queue.fetch(5, [], 60) == []


def test_ack_removes_the_job(queue: Queue) -> None:
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(acks=[job])
    queue.settle(acks=[job])  # twice: the second is a no-op, not an error
    assert counts(queue) == (0, 0, 0, 0)
    assert queue.fetch(1, ["t"], 0) == []


def test_enqueue_many_adds_all_in_order(queue: Queue) -> None:
    assert queue.enqueue_many([]) == 0
    assert queue.enqueue_many(("t", i) for i in range(1200)) == 1200
    jobs = queue.fetch(2000, ["t"], 60)
    assert [j.payload for j in jobs] == list(range(1200))


@pytest.mark.parametrize("bad", [object(), float("nan"), {"k": {1, 2}}, b"bytes"])
def test_payload_that_is_not_json_is_refused_at_enqueue(queue: Queue, bad: Any) -> None:
    with pytest.raises(QueueError):
        queue.enqueue("t", bad)
    with pytest.raises(QueueError):
        queue.enqueue_many([("t", 1), ("t", bad)])
    assert counts(queue) == (0, 0, 0, 0)  # nothing of the batch was added


# -- idempotency keys ----------------------------------------------------


def test_idempotency_key_returns_the_live_job(queue: Queue) -> None:
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


def test_idempotency_key_is_held_by_a_dead_job_until_purged(queue: Queue) -> None:
    first = queue.enqueue("t", 1, key="k")
    [job] = queue.fetch(1, ["t"], 60)
    fail(queue, job, retry=False)
    assert queue.enqueue("t", 2, key="k") == first
    assert queue.dead_purge([first]) == 1
    assert queue.enqueue("t", 3, key="k") != first


# -- delays, leases and tokens -------------------------------------------


def test_delayed_job_is_fetched_only_once_due(queue: Queue) -> None:
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
def test_delay_must_be_a_finite_number(queue: Queue, delay: float) -> None:
    with pytest.raises(QueueError):
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
    queue = make_queue(RetryPolicy(max_attempts=2, backoff_seconds=0.01))
    job_id = queue.enqueue("t", "crashy")
    assert [j.attempt for j in queue.fetch(1, ["t"], 0)] == [1]
    assert [j.attempt for j in queue.fetch(1, ["t"], 0)] == [2]
    assert queue.fetch(1, ["t"], 0) == []  # a third delivery would exceed max_attempts

    [dead] = queue.dead_list()
    assert (dead.id, dead.attempts, dead.payload) == (job_id, 3, "crashy")
    assert dead.error == "lease expired 2 times: its worker died each time"
    assert counts(queue) == (0, 0, 0, 1)


def test_release_keeps_the_place_and_does_not_count_the_attempt(queue: Queue) -> None:
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


def test_failure_is_retried_with_backoff_then_dead(queue: Queue) -> None:
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
    queue = make_queue(RetryPolicy(max_attempts=5, backoff_seconds=3600))
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    fail(queue, job)
    assert counts(queue) == (0, 1, 0, 0)
    assert queue.fetch(1, ["t"], 60) == []


def test_failure_without_retry_is_dead_at_once(queue: Queue) -> None:
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    fail(queue, job, "bad input", retry=False)
    [dead] = queue.dead_list()
    assert (dead.attempts, dead.error) == (1, "bad input")
    assert counts(queue) == (0, 0, 0, 1)


def test_dead_letters_list_retry_and_purge(queue: Queue) -> None:
    ids = [queue.enqueue("t", i) for i in range(4)]
    for job in queue.fetch(4, ["t"], 60):
        fail(queue, job, f"e{job.payload}", retry=False)

    assert [d.id for d in queue.dead_list()] == ids[::-1]  # newest first
    assert [d.id for d in queue.dead_list(limit=2)] == ids[:1:-1]

    assert queue.dead_retry([ids[0]]) == 1
    assert queue.dead_retry([ids[0], "987654"]) == 0  # not dead (any more): ignored
    with pytest.raises(QueueError):
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


def test_stats_count_jobs_by_state(queue: Queue) -> None:
    assert queue.stats() == QueueStats(0, 0, 0, 0, None)
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

    def work(queue: Queue, seed: int) -> None:
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


def assert_one_clean_line(exc: QueueError, *secrets: str) -> None:
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
            with pytest.raises(QueueUnavailable) as info:
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
        with pytest.raises(QueueUnavailable) as info:
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
        with pytest.raises(QueueUnavailable) as info:
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
        with pytest.raises(QueueUnavailable):  # the server speaks only TLS
            plain.ping()
    finally:
        plain.close()


def test_redis_leaves_nothing_behind_finished_jobs(shared_redis: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    queue = RedisQueue.from_url(shared_redis.url, retry=FAST_RETRY, prefix=prefix)
    try:
        queue.enqueue("t", 1, key="a")
        queue.enqueue("t", 2, key="b")
        queue.enqueue("u", 3, delay=0.01)
        acked, dead = queue.fetch(2, ["t"], 60)
        queue.settle(acks=[acked], failures=[Failure(dead, "x", retry=False)])
        queue.dead_purge()
        [late] = wait_until(
            lambda: queue.fetch(1, ["u"], 60), DEADLINE, "the delayed job is fetched"
        )
        queue.settle(acks=[late])
        queue.close()  # also leaves the consumer groups

        raw = redis.Redis.from_url(shared_redis.url, decode_responses=True, protocol=2)
        with raw:
            left = set(raw.scan_iter(f"{prefix}:*"))
            # What may stay: the id counter, the task list and the (empty) streams.
            assert left == {
                f"{prefix}:seq",
                f"{prefix}:tasks",
                *(f"{prefix}:stream:{t}" for t in "tu"),
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
    ],
)
def test_redact_url_never_shows_the_password(url: str, shown: str | None) -> None:
    redacted = redact_url(url)
    assert SECRET not in redacted
    if shown is not None:
        assert redacted == shown
