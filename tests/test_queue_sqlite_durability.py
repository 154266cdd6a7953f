"""The SQLite queue in-process on real files: query plans, leases, retries, faults.

What needs a real daemon (kill -9, two daemons, many producers, a read-only or
full file system) is in test_e2e_durable.py; the contract shared with the
Redis backend is in test_queue_contract.py. These tests drive the clock by
hand (the queue takes one), so no test waits for a lease to run out.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from drainpool.metrics import Metrics
from drainpool.pool import Pool, PoolConfig
from drainpool.queue import Queue
from drainpool.queue.base import Failure, QueueError, QueueUnavailable, RetryPolicy
from drainpool.queue.sqlite import (
    ACK_SQL,
    DUE_TASKS_MAX,
    SCHEMA_VERSION,
    SqliteQueue,
    _due_ids,
    _live_tasks,
    due_sql,
)
from drainpool.queue.sqlite_db import Database
from drainpool.queue.sqlite_records import CANCEL_SETTLED_SQL, COMPLETE_IDS_SQL
from drainpool.queue_monitor import QueueMonitor
from drainpool.tasks import TaskSpec
from drainpool.tasks.examples import noop

from tests.support.waiting import wait_until


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_queue(tmp_path: Path, clock: Clock) -> Iterator[Queue]:
    """Open handles on one file (two handles act as two daemons); all closed at the end."""
    opened: list[SqliteQueue] = []

    def make(**kwargs: object) -> SqliteQueue:
        retry = RetryPolicy(max_attempts=3, backoff_seconds=10, backoff_max_seconds=25)
        queue = SqliteQueue(tmp_path / "queue.db", retry=retry, clock=clock, **kwargs)  # type: ignore[arg-type]
        opened.append(queue)
        return queue

    yield make  # type: ignore[misc]
    for queue in opened:
        queue.close()


def plan(conn: sqlite3.Connection, sql: str, *args: object) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


# -- flat fetch cost --------------------------------------------------------


def test_fetch_reads_one_range_of_the_partial_index_and_claims_by_primary_key(
    tmp_path: Path,
) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    # Enough rows in every state that a full scan would show if the planner chose one.
    queue.enqueue_many([("a", i) for i in range(3000)] + [("b", i) for i in range(3000)])
    jobs = queue.fetch(1000, ["a"], 60)
    queue.settle(failures=[Failure(j, "x", retry=False) for j in jobs[:500]])
    queue.close()
    conn = sqlite3.connect(tmp_path / "queue.db")
    conn.execute("ANALYZE")  # statistics must not tempt the planner away either

    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    assert len(_due_ids(conn, 8, ["a", "b"], 4e9)) == 8
    conn.set_trace_callback(None)
    selects = [sql for sql in traced if sql.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1  # one for all the tasks
    due = plan(conn, due_sql(2), 4e9, 8, "a", "b").split(" | ")
    searches = [step for step in due if "jobs" in step]
    each_task = [
        "SEARCH jobs USING INDEX jobs_ready (task=? AND due_at<?)",  # waiting
        "SEARCH jobs USING INDEX jobs_leased (task=? AND due_at<?)",  # lapsed leases
    ]
    assert searches == each_task * 2  # a, then b
    # Claims, renewals, acks and failures all reach their rows by the primary key.
    for sql in (
        "UPDATE jobs SET state = 1, due_at = 1, token = 't' WHERE id IN (1, 2, 3)",
        "UPDATE jobs SET due_at = 1 WHERE id = 1 AND token = 't' AND state = 1",
    ):
        assert plan(conn, sql) == "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)", sql
    for sql, args in (
        (ACK_SQL, ("t", "[1, 2]")),
        (COMPLETE_IDS_SQL, (1, 2, None, "", "t", "[1, 2]")),
        (CANCEL_SETTLED_SQL, (1, 2, "t", "[1, 2]")),
    ):
        ack_plan = plan(conn, sql, *args)
        assert ack_plan.startswith("SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"), ack_plan
        assert "SCAN jobs" not in ack_plan
    conn.close()


def test_a_fetch_for_more_tasks_than_one_statement_holds_takes_the_oldest_of_all(
    tmp_path: Path,
) -> None:
    queue = SqliteQueue(tmp_path / "queue.db", clock=lambda: 1000.0)
    tasks = [f"t{i}" for i in range(DUE_TASKS_MAX + 50)]  # two statements
    queue.enqueue(tasks[-1], "late", delay=5)
    queue.enqueue(tasks[-1], "first")
    queue.enqueue(tasks[0], "second")
    queue.enqueue(tasks[DUE_TASKS_MAX], "third")
    assert [job.payload for job in queue.fetch(3, tasks, 60)] == ["first", "second", "third"]
    queue.close()


def test_unknown_tasks_are_found_by_index_seeks_without_the_write_lock(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.enqueue_many([(task, i) for task in ("a", "b", "c") for i in range(2000)])
    conn = sqlite3.connect(tmp_path / "queue.db")
    conn.execute("ANALYZE")
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    assert _live_tasks(conn) == ["a", "b", "c"]
    conn.set_trace_callback(None)
    assert len(traced) == 5  # waiting: one seek per name and one that finds no more; leased: one
    plans = {plan(conn, sql) for sql in traced}
    assert all(p.startswith("SEARCH jobs USING") for p in plans), plans  # never a SCAN

    # Another writer holds the lock: with nothing to bury, start and reload do not wait.
    conn.execute("BEGIN IMMEDIATE")
    outcome: list[int] = []
    looker = threading.Thread(target=lambda: outcome.append(queue.bury_unknown(["a", "b", "c"])))
    looker.start()
    looker.join(30)
    assert outcome == [0] and conn.in_transaction
    conn.rollback()
    # An unknown task is still buried, under the lock (write=True), once it is free.
    assert queue.bury_unknown(["a", "c"]) == 2000
    stats = queue.stats()
    assert (stats.ready, stats.dead) == (4000, 2000)
    queue.close()
    conn.close()


def test_claims_and_acks_write_only_the_indexes_the_queue_needs(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.enqueue("t", 1)
    queue.close()
    conn = sqlite3.connect(tmp_path / "queue.db")
    indexes = dict(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"
        )
    )
    conn.close()
    # Each index that holds a row is a B-tree write when the row changes. All are partial:
    # a claim moves a job's entry from jobs_ready (the long one) to jobs_leased (a few
    # hundred at most), an ack removes it from there, and dead letters sit apart. A record
    # kept after its ack enters jobs_expiry once, at the ack (never with retention 0).
    assert set(indexes) == {"jobs_ready", "jobs_leased", "jobs_dead", "jobs_key", "jobs_expiry"}
    assert "WHERE state = 0" in indexes["jobs_ready"]
    assert "WHERE state = 1" in indexes["jobs_leased"]
    assert "WHERE state = 2" in indexes["jobs_dead"]
    assert "WHERE idem_key IS NOT NULL" in indexes["jobs_key"]
    assert "WHERE expires_at IS NOT NULL" in indexes["jobs_expiry"]


def test_stats_count_from_indexes_and_match_a_full_scan(tmp_path: Path, clock: Clock) -> None:
    queue = SqliteQueue(tmp_path / "queue.db", clock=clock)
    queue.enqueue_many([("a", i) for i in range(30)] + [("b", i) for i in range(20)])
    for _ in range(5):
        queue.enqueue("a", "later", delay=600)
    clock.now += 1
    lapsing = queue.fetch(4, ["b"], 30)
    held = queue.fetch(6, ["a"], 3600)
    queue.settle(failures=[Failure(j, "x", retry=False) for j in held[:2]])
    clock.now += 60  # the 4 leases of b have lapsed: due again, but not waiting
    conn = sqlite3.connect(tmp_path / "queue.db")
    conn.execute("ANALYZE")  # statistics must not change what is counted

    stats = queue.stats()

    rows = conn.execute("SELECT state, due_at FROM jobs NOT INDEXED").fetchall()
    waiting = [due for state, due in rows if state == 0]
    expected = (
        sum(due <= clock.now for due in waiting),
        sum(due > clock.now for due in waiting),
        sum(state == 1 for state, _ in rows),
        sum(state == 2 for state, _ in rows),
    )
    assert expected == (24 + 16, 5, 4 + 4, 2)
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == expected
    assert stats.oldest_ready_age_seconds == pytest.approx(clock.now - min(waiting))
    # The counts of the small partial indexes never read the table.
    for sql in (
        "SELECT COUNT(*) FROM jobs WHERE state = 1",
        "SELECT COUNT(*) FROM jobs WHERE state = 2",
    ):
        assert plan(conn, sql).startswith("SCAN jobs USING INDEX jobs_"), sql
    assert len(lapsing) == 4
    queue.close()
    conn.close()


def test_stats_and_dead_letters_never_wait_for_the_dispatchers_transaction(
    tmp_path: Path,
) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.enqueue("t", 1)
    [job] = queue.fetch(1, ["t"], 60)
    queue.settle(failures=[Failure(job, "boom", retry=False)])
    answers: list[object] = []
    with queue._db._lock:  # the dispatcher's connection, mid-transaction
        reader = threading.Thread(
            target=lambda: answers.extend([queue.stats().dead, queue.dead_list()[0].error])
        )
        reader.start()
        reader.join(30)
        assert answers == [1, "boom"]
    queue.close()


OLD_INDEXES = {
    2: """
        CREATE INDEX jobs_due ON jobs(task, due_at) WHERE state < 2;
        CREATE INDEX jobs_state ON jobs(state, due_at);
        CREATE UNIQUE INDEX jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
    """,
    3: """
        CREATE INDEX jobs_due ON jobs(task, due_at) WHERE state < 2;
        CREATE INDEX jobs_leased ON jobs(due_at) WHERE state = 1;
        CREATE INDEX jobs_dead ON jobs(failed_at) WHERE state = 2;
        CREATE UNIQUE INDEX jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
    """,
    4: """
        CREATE INDEX jobs_ready ON jobs(task, due_at) WHERE state = 0;
        CREATE INDEX jobs_leased ON jobs(task, due_at) WHERE state = 1;
        CREATE INDEX jobs_dead ON jobs(failed_at) WHERE state = 2;
        CREATE UNIQUE INDEX jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
    """,
}


@pytest.mark.parametrize("version", sorted(OLD_INDEXES))
def test_an_older_file_is_upgraded_in_place_with_every_job_kept(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "queue.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, payload TEXT NOT NULL,
            state INTEGER NOT NULL DEFAULT 0, due_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, token TEXT, idem_key TEXT,
            enqueued_at REAL NOT NULL, error TEXT, traceback TEXT, failed_at REAL);
        """
        + OLD_INDEXES[version]
        + f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('file_id', 'f00d');
        INSERT INTO jobs (task, payload, state, due_at, enqueued_at) VALUES ('t', '1', 0, 1, 1);
        INSERT INTO jobs (task, payload, state, due_at, token, enqueued_at, attempts)
            VALUES ('t', '2', 1, 9e9, 'x', 1, 1);
        INSERT INTO jobs (task, payload, state, due_at, enqueued_at, error, failed_at)
            VALUES ('t', '3', 2, 1, 1, 'old', 5);
        INSERT INTO jobs (task, payload, state, due_at, token, enqueued_at, attempts)
            VALUES ('t', '4', 1, 1, 'y', 1, 1);
        PRAGMA user_version = {version};
        """
    )
    conn.close()

    queue = SqliteQueue(path)
    stats = queue.stats()

    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (1, 0, 2, 1)
    assert [(d.payload, d.error) for d in queue.dead_list()] == [(3, "old")]
    # Every old row reads as a record (newest first), its new fields empty.
    records = queue.jobs()
    assert [(r.id, r.state.value, r.payload) for r in records] == [
        ("4", "running", 4),
        ("3", "dead", 3),
        ("2", "running", 2),
        ("1", "waiting", 1),
    ]
    assert records[1].error == "old" and records[1].finished_at == 5
    assert all(r.started_at is None and r.worker is None for r in records)
    # The waiting job, and the one whose lease lapsed long ago; not the live lease.
    assert [(j.payload, j.attempt) for j in queue.fetch(5, ["t"], 60)] == [(1, 1), (4, 2)]
    queue.close()
    conn = sqlite3.connect(path)
    names = {
        n
        for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"
        )
    }
    assert names == {"jobs_ready", "jobs_leased", "jobs_dead", "jobs_key", "jobs_expiry"}
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT value FROM meta").fetchone() == ("f00d",)  # the same file
    conn.close()


# -- leases -----------------------------------------------------------------


def test_a_stale_holder_can_neither_ack_fail_renew_nor_release(open_queue, clock: Clock) -> None:
    first, second = open_queue(), open_queue()
    job_id = first.enqueue("t", {"n": 1})
    [stale] = first.fetch(1, ["t"], 30)
    clock.now += 31  # the first holder's lease ran out: the job is due again
    [live] = second.fetch(1, ["t"], 30)
    assert (live.id, live.attempt) == (job_id, 2) and live.token != stale.token

    first.settle(acks=[stale])
    first.settle(failures=[Failure(stale, "late", retry=False)])
    first.settle(failures=[Failure(stale, "late")])
    first.settle(releases=[stale])
    first.renew([stale], 3600)
    assert first.stats().leased == 1 and first.dead_list() == []
    clock.now += 29  # the stale renewal did not move the live lease: it still ends at +30
    assert second.fetch(1, ["t"], 30) == []
    second.renew([live], 30)
    clock.now += 29
    assert first.fetch(1, ["t"], 30) == []  # renewed by its holder, not due
    second.settle(acks=[live])
    assert first.stats().as_dict() == {
        "ready": 0,
        "delayed": 0,
        "leased": 0,
        "dead": 0,
        "oldest_ready_age_seconds": None,
    }


def test_two_handles_fetching_at_once_never_share_a_job(tmp_path: Path) -> None:
    seed = SqliteQueue(tmp_path / "queue.db")
    seed.enqueue_many([("t", i) for i in range(600)])
    seed.close()
    got: list[list[str]] = [[], []]

    def consume(slot: int) -> None:
        queue = SqliteQueue(tmp_path / "queue.db", durable_commits=False)
        try:
            while jobs := queue.fetch(7, ["t"], 60):
                got[slot] += [j.id for j in jobs]
                queue.settle(acks=jobs)
        finally:
            queue.close()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(got[0] + got[1], key=int) == [str(i) for i in range(1, 601)]
    assert not set(got[0]) & set(got[1])


# -- retries ----------------------------------------------------------------


def test_backoff_doubles_from_the_configured_delay_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(backoff_seconds=1.0, backoff_max_seconds=20.0, rng=random.Random(3))
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 20), (12, 20)]:
        delays = {policy.delay_after(attempt) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays), (attempt, delays)
        assert len(delays) > 40  # jittered: retries of many jobs do not line up


def test_a_failed_job_waits_out_its_backoff_then_dies_with_its_last_error(
    open_queue, clock: Clock
) -> None:
    queue = open_queue()
    job_id = queue.enqueue("t", "p")
    for attempt, backoff in [(1, 10), (2, 20)]:
        [job] = queue.fetch(1, ["t"], 30)
        assert job.attempt == attempt
        queue.settle(failures=[Failure(job, f"boom {attempt}", f"Traceback {attempt}")])
        assert queue.stats().delayed == 1
        clock.now += backoff / 2 - 0.01  # jitter keeps at least half the backoff
        assert queue.fetch(1, ["t"], 30) == []
        clock.now += backoff / 2 + 0.02
    [job] = queue.fetch(1, ["t"], 30)
    queue.settle(failures=[Failure(job, "boom 3", "Traceback 3")])
    [dead] = queue.dead_list()
    assert (dead.id, dead.attempts, dead.error, dead.traceback) == (
        job_id,
        3,
        "boom 3",
        "Traceback 3",
    )


# -- enqueue options ----------------------------------------------------------


def test_idempotency_key_is_taken_until_the_job_is_acked_or_purged(open_queue) -> None:
    queue = open_queue()
    first = queue.enqueue("t", 1, key="k")
    assert queue.enqueue("t", 2, key="k") == first
    assert queue.enqueue("t", 3, key="k", delay=60) == first
    assert queue.stats().ready == 1
    [job] = queue.fetch(5, ["t"], 30)
    assert job.payload == 1
    assert queue.enqueue("t", 4, key="k") == first  # leased still counts as live
    queue.settle(failures=[Failure(job, "no", retry=False)])
    assert queue.enqueue("t", 5, key="k") == first  # so does dead: retry or purge it
    assert queue.dead_purge([first]) == 1
    second = queue.enqueue("t", 6, key="k")
    assert second != first
    [job] = queue.fetch(5, ["t"], 30)
    queue.settle(acks=[job])
    assert queue.enqueue("t", 7, key="k") not in (first, second)


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), float("-inf")])
def test_a_delay_must_be_finite(open_queue, delay: float) -> None:
    queue = open_queue()
    with pytest.raises(QueueError, match="finite"):
        queue.enqueue("t", 1, delay=delay)
    assert queue.stats().ready + queue.stats().delayed == 0


def test_queue_from_url_is_the_producers_entry_point(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    queue = Queue.from_url("sqlite:///rel/queue.db")
    try:
        assert isinstance(queue, SqliteQueue) and isinstance(queue, Queue)
        assert queue.path == tmp_path / "rel" / "queue.db"
        job_id = queue.enqueue("t", {"x": 1}, delay=5, key="once")
        assert queue.enqueue("t", {"x": 2}, key="once") == job_id
    finally:
        queue.close()
    with pytest.raises(QueueError, match="unsupported queue URL"):
        Queue.from_url("mysql://nope")


# -- busy and faults -------------------------------------------------------------


def test_a_writer_waits_out_a_long_lock_instead_of_failing(tmp_path: Path) -> None:
    # The connections have no SQLite busy handler: the queue's own retry loop is what
    # must carry the enqueue through a lock held for a fifth of a second.
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.enqueue("t", 0)
    holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO jobs (task, payload, due_at, enqueued_at) VALUES ('t', '1', 0, 0)")
    released = threading.Timer(0.2, lambda: holder.execute("COMMIT"))
    released.start()
    try:
        queue.enqueue("t", 2)
    finally:
        released.join()
        holder.close()
    assert queue.stats().ready == 3
    queue.close()


def test_connections_leave_busy_waits_to_the_retry_loop(tmp_path: Path) -> None:
    # SQLite's handler sleeps 1, 2, 5 ... 100 ms (sqlite_db's docstring says what it cost).
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.enqueue("t", 0)
    assert queue._db.run(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0], write=True) == 0
    queue.close()


def test_a_claim_gets_the_lock_while_a_producer_streams_short_commits(tmp_path: Path) -> None:
    """A burst of enqueues, one commit each, does not keep the daemon's claim out until it ends.

    The producer commits back to back until the claim is back (or a minute passed);
    the claim must come back while the stream still runs, and find the jobs.
    """
    path = tmp_path / "queue.db"
    daemon = SqliteQueue(path, durable_commits=False)
    producer = SqliteQueue(path)
    producer.enqueue("t", 0)
    claimed = threading.Event()
    streamed: list[int] = []

    def stream() -> None:
        deadline = time.monotonic() + 60
        n = 0
        while not claimed.is_set() and time.monotonic() < deadline:
            producer.enqueue("t", n)
            n += 1
        streamed.append(n)

    thread = threading.Thread(target=stream)
    thread.start()
    wait_until(lambda: producer.stats().ready > 50, what="the stream under way")
    jobs = daemon.fetch(10, ["t"], 60.0)
    still_streaming = thread.is_alive()
    claimed.set()
    thread.join(70)
    assert still_streaming and len(jobs) == 10
    assert producer.stats().ready == streamed[0] + 1 - 10  # every enqueue of the stream kept
    daemon.close()
    producer.close()


def test_a_file_that_is_not_a_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    queue = SqliteQueue(path)
    with pytest.raises(QueueUnavailable, match="file is not a database"):
        queue.enqueue("t", 1)
    queue.close()


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def test_deleted_file_is_not_recreated_and_held_jobs_move_to_the_new_file(
    tmp_path: Path, open_queue, clock: Clock
) -> None:
    path = tmp_path / "queue.db"
    daemon = open_queue(durable_commits=False)
    for n in range(4):
        daemon.enqueue("t", n)
    daemon.enqueue("t", "waiting")
    done, retried, released, dying = daemon.fetch(4, ["t"], 30)

    remove_database(path)
    with pytest.raises(QueueUnavailable, match="deleted or replaced"):
        daemon.settle(acks=[done])
    with pytest.raises(QueueUnavailable, match="waiting for it to be restored or created"):
        daemon.ping()
    assert not path.exists()  # the daemon's handle never makes an empty queue by itself

    producer = open_queue()
    new_job = producer.enqueue("t", "new")  # a producer may create it
    daemon.settle(
        acks=[done],
        releases=[released],
        failures=[Failure(retried, "again"), Failure(dying, "last", retry=False)],
    )
    stats = daemon.stats()
    # Ready: the new job and the released one; delayed: the retry, for its backoff.
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (2, 1, 0, 1)
    clock.now += 100
    jobs = daemon.fetch(10, ["t"], 30)
    by_payload = {j.payload: j for j in jobs}
    assert by_payload["new"].id == new_job
    assert by_payload[2].attempt == 1  # a release does not count an attempt
    assert by_payload[1].attempt == 2  # a retry does
    assert [(d.payload, d.error) for d in daemon.dead_list()] == [(3, "last")]
    # "waiting" was in the deleted file and nobody held it: it went with the file.
    assert {j.payload for j in jobs} == {1, 2, "new"}


def test_a_commit_that_raced_the_file_away_is_reported_failed(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    db = Database(
        path, lambda c, _: c.execute("CREATE TABLE IF NOT EXISTS t (x)"), 1, synchronous="FULL"
    )
    db.run(lambda c: c.execute("INSERT INTO t VALUES (1)"), write=True)

    def insert_while_the_file_goes(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2)")
        remove_database(path)  # the commit that follows lands in the deleted file

    with pytest.raises(QueueUnavailable, match="deleted or replaced"):
        db.run(insert_while_the_file_goes, write=True)
    db.close()


def test_a_restored_copy_of_a_held_job_is_not_doubled(tmp_path: Path, open_queue) -> None:
    path = tmp_path / "queue.db"
    daemon = open_queue(durable_commits=False)
    daemon.enqueue("t", "a")
    daemon.enqueue("t", "b")
    acked, released = daemon.fetch(2, ["t"], 30)
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(path), sqlite3.connect(backup)
    src.backup(dst)  # a copy with both jobs, under the same leases
    src.close()
    dst.close()
    remove_database(path)
    shutil.move(backup, path)  # the operator restores it: the same rows in another file

    with pytest.raises(QueueUnavailable, match="deleted or replaced"):
        daemon.settle(acks=[acked], releases=[released])
    daemon.settle(acks=[acked], releases=[released])  # the pool tries again after a backoff
    [again] = daemon.fetch(5, ["t"], 30)
    assert (again.payload, again.attempt) == ("b", 1)
    assert daemon.stats().ready + daemon.stats().leased == 1


# -- readiness: who tells the supervisor that the queue fails or works again -----------


def test_readiness_follows_the_dispatcher_and_stats_without_flapping(tmp_path: Path) -> None:
    opened: list[SqliteQueue] = []
    changes: list[bool] = []
    monitor = QueueMonitor(
        lambda: opened[0] if opened else None,
        lambda: [],
        lambda: 0.0,
        on_change=lambda: changes.append(monitor.ok),  # what the supervisor's inbox hears
    )
    assert monitor.ok
    monitor.report("pool default", False, "disk I/O error")
    assert not monitor.ok and monitor.problem == "disk I/O error"
    monitor.report("stats", True, "")  # reads work on a read-only disk: not enough
    assert not monitor.ok
    monitor.report("pool default", True, "")
    assert monitor.ok
    assert changes == [False, True]  # once when it went, once when it came back

    (tmp_path / "queue.db").write_bytes(b"not a database" * 100)
    opened.append(SqliteQueue(tmp_path / "queue.db"))
    with pytest.raises(QueueUnavailable):
        monitor.stats()  # what a scrape calls
    assert not monitor.ok and "file is not a database" in monitor.problem
    monitor.report("pool default", True, "")  # the queue was just used successfully
    assert monitor.ok
    opened[0].close()


def test_the_dispatcher_reports_the_queue_failing_and_working_again(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"not a database" * 100)
    reports: list[tuple[bool, str]] = []
    queue = SqliteQueue(path)
    spec = TaskSpec("noop", "drainpool.tasks.examples:noop", "function", noop)
    pool = Pool(
        PoolConfig("default", 1, 5.0, 30.0, 0.05),
        1,
        {"noop": spec},
        queue,
        Metrics(),
        on_queue_health=lambda ok, why: reports.append((ok, why)),
    )
    pool.start()
    try:
        wait_until(lambda: reports and not reports[-1][0], what="the failure reported")
        assert "file is not a database" in reports[-1][1]
        path.unlink()  # the operator's repair: an empty queue in place of the broken file
        wait_until(lambda: reports[-1][0], timeout=15, what="the recovery reported")
        seen = len(reports)
        wait_until(lambda: len(reports) > seen + 2, what="every later success reported too")
        assert all(ok for ok, _ in reports[seen:])
    finally:
        pool.begin_drain()
        wait_until(lambda: pool.drained, what="pool drained")
        pool.join()
        queue.close()
