"""What only the PostgreSQL queue does: shared transactions, SKIP LOCKED, migrate, faults.

The shared behaviour is in tests/test_queue_contract.py (its postgres row).
One cluster serves the module, each test a schema of its own; the tests that
stop PostgreSQL start a cluster of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from drainpool.queue.base import CancelEffect, Done, Failure, JobState, QueueError, QueueUnavailable
from drainpool.queue.postgres import PostgresQueue
from drainpool.queue.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from drainpool.queue.sqlite import SqliteQueue
from drainpool.settings import QueueSettings
from pydantic import ValidationError

from tests.support.daemon import DaemonFactory
from tests.support.postgres_server import PostgresServer, postgres_servers
from tests.support.waiting import wait_until

StartPostgres = Callable[..., PostgresServer]


@pytest.fixture
def server(shared_postgres: PostgresServer) -> PostgresServer:
    """The module's cluster (conftest's)."""
    return shared_postgres


@pytest.fixture
def start_postgres(tmp_path: Path) -> Iterator[StartPostgres]:
    with postgres_servers(tmp_path) as start:
        yield start


@pytest.fixture
def schema() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def queue(server: PostgresServer, schema: str) -> Iterator[PostgresQueue]:
    opened = PostgresQueue.from_url(server.url(), schema=schema)
    try:
        yield opened
    finally:
        opened.close()


# -- enqueue in the application's transaction ----------------------------------


def test_a_job_enqueued_in_a_transaction_appears_only_when_it_commits(
    server: PostgresServer, queue: PostgresQueue
) -> None:
    with psycopg.connect(server.url()) as app:  # not autocommit: a transaction is open
        app.execute("CREATE TEMP TABLE orders (id int)")
        job_id = queue.enqueue("ship", {"order": 7}, connection=app)
        assert queue.job(job_id) is None and queue.fetch(1, ["ship"], 60) == []
        app.commit()
    [job] = queue.fetch(1, ["ship"], 60)
    assert (job.id, job.payload) == (job_id, {"order": 7})


def test_a_job_enqueued_in_a_rolled_back_transaction_never_exists(
    server: PostgresServer, queue: PostgresQueue
) -> None:
    with psycopg.connect(server.url()) as app:
        job_id = queue.enqueue("ship", 1, connection=app)
        app.rollback()
    assert queue.job(job_id) is None
    assert queue.stats().ready == 0 and queue.fetch(1, ["ship"], 60) == []


def test_enqueue_with_a_connection_is_refused_where_it_cannot_be_honoured(
    tmp_path: Path, queue: PostgresQueue
) -> None:
    sqlite_queue = SqliteQueue(tmp_path / "q.db")
    try:
        with pytest.raises(QueueError, match=r"connection=\.\.\.\) needs the PostgreSQL queue"):
            sqlite_queue.enqueue("t", 1, connection=object())
    finally:
        sqlite_queue.close()
    with pytest.raises(QueueError, match="must be a psycopg"):
        queue.enqueue("t", 1, connection=object())


# -- leases ------------------------------------------------------------------------


def test_fetch_skips_a_row_another_transaction_holds_without_waiting(
    server: PostgresServer, schema: str
) -> None:
    # lock_timeout through the URL's options: were the fetch to wait for the row, it
    # would fail after 2 s instead of hanging the test.
    url = server.url() + "?options=-c%20lock_timeout%3D2000&application_name=skip-test"
    queue = PostgresQueue.from_url(url, schema=schema)
    try:
        first, second = queue.enqueue("t", 1), queue.enqueue("t", 2)
        with psycopg.connect(server.url()) as other:
            other.execute(f'SELECT id FROM "{schema}".jobs WHERE id = %s FOR UPDATE', (int(first),))
            assert [j.id for j in queue.fetch(2, ["t"], 60)] == [second]
        assert [j.id for j in queue.fetch(2, ["t"], 60)] == [first]  # free once released
    finally:
        queue.close()


# -- schema and migrate ------------------------------------------------------------


def service_role(server: PostgresServer, name: str) -> str:
    """A login role without DDL rights; its URL."""
    server.sql(f'CREATE ROLE "{name}" LOGIN')
    return server.url(user=name)


def test_migrate_lets_a_service_without_ddl_rights_use_the_queue(
    server: PostgresServer, factory: DaemonFactory, schema: str
) -> None:
    service_url = service_role(server, f"svc_{schema}")
    service = factory.config("service.toml", queue={"url": service_url, "schema": schema})
    admin = factory.config("admin.toml", queue={"url": server.url(), "schema": schema})

    refused = factory.cli("queue", "stats", config=service)
    assert refused.returncode == 2 and "run `drainpool queue migrate`" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr

    migrated = factory.cli("queue", "migrate", config=admin)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"schema {schema}: version 0 -> {SCHEMA_VERSION}"
    again = factory.cli("queue", "migrate", config=admin)
    assert again.stdout.strip() == f"schema {schema}: at version {SCHEMA_VERSION}, nothing to do"

    # The privileges the README lists, and nothing more.
    server.sql(f'GRANT USAGE ON SCHEMA "{schema}" TO "svc_{schema}"')
    server.sql(
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "svc_{schema}"'
    )
    queue = PostgresQueue.from_url(service_url, schema=schema)
    try:
        job_id = queue.enqueue("t", {"n": 1}, key="k")
        [job] = queue.fetch(1, ["t"], 60)
        queue.renew([job], 60)
        queue.settle(acks=[Done(job, '"ok"')], outcomes={"completed": 1})
        assert queue.result(job_id, timeout=10) == "ok"
        assert queue.prune() == 0 and queue.bury_unknown(["t"]) == 0
        assert queue.dead_retry() == 0 and queue.dead_purge() == 0
        assert queue.enqueue_tick("nightly", "t", tick=100.0, expected=None) is not None
        assert queue.schedule_ticks() == {"nightly": 100.0}
    finally:
        queue.close()
    assert factory.cli("queue", "stats", config=service).returncode == 0


def test_version_1_tables_are_upgraded_in_place_every_job_kept(
    server: PostgresServer, schema: str
) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for statement in MIGRATIONS[1]:
            conn.execute(statement.replace("{s}", f'"{schema}"'))
        conn.execute(f"INSERT INTO \"{schema}\".meta VALUES ('version', '1')")
        conn.execute(
            f'INSERT INTO "{schema}".jobs (task, payload, due_at, enqueued_at)'
            " VALUES ('t', '{\"n\": 1}', 0, 0)"
        )
    queue = PostgresQueue.from_url(server.url(), schema=schema)
    try:
        assert queue.migrate() == (1, SCHEMA_VERSION)
        [job] = queue.fetch(1, ["t"], 60)
        assert (job.payload, job.meta) == ({"n": 1}, {})
        queue.enqueue("t", {"n": 2}, meta={"request": "r-1"})
        assert queue.enqueue_tick("nightly", "t", tick=5.0, expected=None) is not None
        fetched = queue.fetch(2, ["t"], 60)
        assert [(j.payload, j.meta) for j in fetched] == [
            ({"n": 2}, {"request": "r-1"}),
            (None, {}),
        ]
        assert {(info.schedule, info.tick) for info in queue.jobs(task="t")} == {
            ("", None),
            ("nightly", 5.0),
        }
    finally:
        queue.close()


# -- cancel (issue 19) ---------------------------------------------------------


def test_a_cancel_flags_a_leased_job_and_its_release_or_failure_ends_it_cancelled(
    queue: PostgresQueue,
) -> None:
    waiting = queue.enqueue("t", 0, delay=60, timeout=2.5)
    ran = [queue.enqueue("t", n) for n in (1, 2, 3)]
    assert queue.cancel(waiting, reason="typo", by="test").effect is CancelEffect.CANCELLED
    released, failed, acked = queue.fetch(3, ["t"], 60)
    assert [j.id for j in (released, failed, acked)] == ran
    for job in (released, failed, acked):
        assert queue.cancel(job.id, by="test").effect is CancelEffect.REQUESTED
    assert queue.cancel(acked.id).effect is CancelEffect.ALREADY_REQUESTED
    assert queue.cancel_requests([released, failed, acked]) == set(ran)
    queue.settle(acks=[acked], releases=[released], failures=[Failure(failed, "stopped")])
    states = {job_id: queue.job(job_id) for job_id in (waiting, *ran)}
    assert [info.state if info else None for info in states.values()] == [
        JobState.CANCELLED,
        JobState.CANCELLED,
        JobState.CANCELLED,
        JobState.COMPLETED,
    ]
    first = states[waiting]
    assert first is not None
    assert (first.timeout, first.cancel_reason, first.cancelled_by) == (2.5, "typo", "test")
    assert queue.cancel(acked.id).effect is CancelEffect.ENDED
    assert queue.stats().ready == queue.stats().delayed == 0


def test_a_flagged_job_whose_lease_lapsed_is_ended_by_the_next_fetch_not_delivered(
    queue: PostgresQueue,
) -> None:
    job_id = queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 0.2)
    assert queue.cancel(job_id).effect is CancelEffect.REQUESTED
    delivered: list[str] = []

    def ended() -> bool:
        delivered.extend(j.id for j in queue.fetch(1, ["t"], 60))
        info = queue.job(job_id)
        return info is not None and info.state is JobState.CANCELLED

    wait_until(ended, what="the lapsed, flagged job ended cancelled")
    assert delivered == []
    queue.settle(releases=[job])  # the dead holder's stale token changes nothing
    info = queue.job(job_id)
    assert info is not None and info.state is JobState.CANCELLED


def test_a_schema_newer_than_this_release_is_refused(
    server: PostgresServer, queue: PostgresQueue, schema: str
) -> None:
    queue.ping()  # creates the tables
    server.sql(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'version'")
    newer = PostgresQueue.from_url(server.url(), schema=schema)
    try:
        with pytest.raises(QueueError, match="version 99, newer than this drainpool's"):
            newer.stats()
    finally:
        newer.close()


def test_the_config_checks_the_url_and_schema_without_connecting() -> None:
    # Port 1: nothing listens; a check that connected would fail on it.
    QueueSettings(url="postgres://app:s3cret@127.0.0.1:1/db?sslmode=require&connect_timeout=3")
    with pytest.raises(ValidationError) as bad_option:
        QueueSettings(url="postgresql://app:s3cret@127.0.0.1:1/db?colour=blue")
    message = bad_option.value.errors()[0]["msg"]  # what the config loader reports
    assert "invalid PostgreSQL URL" in message and "colour" in message
    assert "s3cret" not in message
    with pytest.raises(ValidationError, match="schema"):
        QueueSettings.model_validate({"url": "postgresql://h/db", "schema": "Bad-Name"})
    assert QueueSettings().model_dump()["schema"] == "drainpool"


# -- faults ------------------------------------------------------------------------


def test_terminated_connections_are_replaced_without_a_fault(
    server: PostgresServer, queue: PostgresQueue
) -> None:
    ids = [queue.enqueue("t", i) for i in range(3)]
    [job] = queue.fetch(1, ["t"], 60)
    cut = server.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'drainpool' AND pid <> pg_backend_pid()"
    )
    assert cut and all(ok for (ok,) in cut)

    queue.settle(acks=[job])  # on a fresh connection: the dead one failed before its commit

    assert [j.id for j in queue.fetch(5, ["t"], 60)] == ids[1:]


def test_postgres_down_is_unavailable_and_nothing_is_lost_when_it_is_back(
    start_postgres: StartPostgres, schema: str
) -> None:
    server = start_postgres()
    queue = PostgresQueue.from_url(server.url(), schema=schema, connect_timeout=1.0)
    try:
        ids = [queue.enqueue("t", i) for i in range(3)]
        [job] = queue.fetch(1, ["t"], 60)
        server.stop()
        with pytest.raises(QueueUnavailable) as down:
            queue.settle(acks=[job])
        assert len(str(down.value).splitlines()) == 1
        server.start()
        queue.settle(acks=[job])  # the caller's retry, as the pool does
        assert [j.id for j in queue.fetch(5, ["t"], 60)] == ids[1:]
    finally:
        queue.close()


def test_a_read_only_server_is_unavailable_not_an_error(
    server: PostgresServer, schema: str
) -> None:
    url = server.url() + "?options=-c%20default_transaction_read_only%3Don"
    writable = PostgresQueue.from_url(server.url(), schema=schema)
    read_only = PostgresQueue.from_url(url, schema=schema)
    try:
        writable.ping()
        with pytest.raises(QueueUnavailable, match="read-only transaction"):
            read_only.enqueue("t", 1)
        assert read_only.stats().ready == 0
    finally:
        writable.close()
        read_only.close()


def test_a_statement_timeout_is_unavailable_and_the_lease_stays(
    server: PostgresServer, schema: str
) -> None:
    # statement_timeout through the URL: a renew that waits on a row another
    # transaction holds is cancelled by the server, and the queue says so in one line.
    url = server.url() + "?options=-c%20statement_timeout%3D300"
    queue = PostgresQueue.from_url(url, schema=schema)
    try:
        queue.enqueue("t", 1)
        [job] = queue.fetch(1, ["t"], 60)
        with psycopg.connect(server.url()) as other:
            other.execute(f'SELECT id FROM "{schema}".jobs FOR UPDATE')
            with pytest.raises(QueueUnavailable, match="statement timeout") as cancelled:
                queue.renew([job], 60)
            assert len(str(cancelled.value).splitlines()) == 1
        queue.settle(acks=[job])  # the lease was never lost: the ack still counts
        assert queue.stats().leased == 0 and queue.job(job.id) is not None
    finally:
        queue.close()
