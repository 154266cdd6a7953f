"""PostgreSQL notifications beyond the enqueue's wake-up (issue 22): a cancel of a running
job reaches the daemon's waiter, and a job's end wakes `wait()`.

Each test makes the polling safety net too slow to pass it (a pool's waiter
calls back only on a notification; `wait()`'s safety read is pushed to an
hour), so a test passes only when the notification did the work.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import drainpool.queue.postgres as postgres_module
import pytest
from drainpool.queue.base import CancelEffect, Failure, JobInfo, JobState, QueueError
from drainpool.queue.postgres import PostgresQueue

from tests.support.postgres_server import PostgresServer
from tests.support.waiting import wait_until


@pytest.fixture
def server(shared_postgres: PostgresServer) -> PostgresServer:
    """The module's cluster (conftest); each test takes a schema of its own in it."""
    return shared_postgres


@pytest.fixture
def queues(server: PostgresServer) -> Iterator[tuple[PostgresQueue, PostgresQueue]]:
    """A daemon's queue object and a producer's, on one schema of the test's own."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    daemon = PostgresQueue.from_url(server.url(), schema=schema, durable_commits=False)
    producer = PostgresQueue.from_url(server.url(), schema=schema)
    try:
        yield daemon, producer
    finally:
        producer.close()
        daemon.close()


@pytest.fixture
def no_safety_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_module, "POLL_SECONDS", 3600.0)


class Waiting(threading.Thread):
    """`producer.wait(job_id)` on a thread of its own; its answer or its error."""

    def __init__(self, producer: PostgresQueue, job_id: str) -> None:
        super().__init__(daemon=True)
        self.producer, self.job_id = producer, job_id
        self.info: JobInfo | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.info = self.producer.wait(self.job_id)
        except BaseException as exc:  # reported by the test
            self.error = exc


def wait_started(server: PostgresServer, schema: str) -> None:
    """The waiter LISTENs on the ended channel (so the settle that follows is heard)."""
    wait_until(
        lambda: server.sql(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'drainpool-wait'"
            " AND query LIKE %s",
            (f'%LISTEN "{schema}.ended"%',),
        ),
        what="the wait listening",
    )


@pytest.mark.usefixtures("no_safety_read")
def test_wait_returns_on_the_settles_notification_for_each_way_a_job_ends(
    server: PostgresServer, queues: tuple[PostgresQueue, PostgresQueue]
) -> None:
    daemon, producer = queues
    ids = [producer.enqueue("t", n) for n in range(3)]
    completed, dead, cancelled = daemon.fetch(3, ["t"], 60)
    for job, settle in (
        (completed, lambda: daemon.settle(acks=[completed])),
        (dead, lambda: daemon.settle(failures=[Failure(dead, "boom", retry=False)])),
        (cancelled, lambda: daemon.settle(releases=[cancelled])),
    ):
        waiting = Waiting(producer, job.id)
        waiting.start()
        wait_started(server, producer.schema)
        if job is cancelled:
            assert producer.cancel(job.id).effect is CancelEffect.REQUESTED
        settle()
        waiting.join(timeout=30)
        assert not waiting.is_alive(), f"wait({job.id}) was not woken by the settle"
        assert waiting.error is None, waiting.error
        assert waiting.info is not None and waiting.info.id == job.id
    states = [producer.job(job_id) for job_id in ids]
    assert [s.state if s else None for s in states] == [
        JobState.COMPLETED,
        JobState.DEAD,
        JobState.CANCELLED,
    ]


@pytest.mark.usefixtures("no_safety_read")
def test_a_cancel_of_a_waiting_job_wakes_its_waiter_and_close_ends_a_wait(
    server: PostgresServer, queues: tuple[PostgresQueue, PostgresQueue]
) -> None:
    daemon, producer = queues
    job_id = producer.enqueue("t", 1, delay=3600)
    waiting = Waiting(producer, job_id)
    waiting.start()
    wait_started(server, producer.schema)
    assert daemon.cancel(job_id).effect is CancelEffect.CANCELLED
    waiting.join(timeout=30)
    assert waiting.info is not None and waiting.info.state is JobState.CANCELLED

    never = Waiting(producer, producer.enqueue("t", 2))
    never.start()
    wait_started(server, producer.schema)
    producer.close()
    never.join(timeout=30)
    assert isinstance(never.error, QueueError), never.error


def test_a_cancel_of_a_running_job_calls_the_pools_waiter_back_at_once(
    queues: tuple[PostgresQueue, PostgresQueue],
) -> None:
    daemon, producer = queues
    heard: list[str] = []
    waiter = daemon.waiter(["t"])
    waiter.hear_cancels(heard.append)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            waiter.wait(0.2)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        wait_until(lambda: waiter.mode == "blocking read", what="the waiter armed")
        job_id = producer.enqueue("t", 1)
        [job] = daemon.fetch(1, ["t"], 60)
        other = producer.enqueue("t", 2, delay=3600)
        assert producer.cancel(other).effect is CancelEffect.CANCELLED  # not running: not heard
        assert producer.cancel(job_id).effect is CancelEffect.REQUESTED
        wait_until(lambda: heard == [job_id], what="the cancel heard by the waiter")
        assert producer.cancel(job_id).effect is CancelEffect.ALREADY_REQUESTED  # no second call
        daemon.settle(releases=[job])
        info = producer.job(job_id)
        assert info is not None and info.state is JobState.CANCELLED
        assert heard == [job_id]
    finally:
        stop.set()
        waiter.close()
        listener.join(timeout=10)
