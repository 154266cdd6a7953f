"""The embedded queue: one SQLite file in WAL mode.

Why this shape: every state change is one conditional UPDATE or DELETE inside
a write transaction, keyed on the job id *and* its lease token, so two daemons
sharing the file (or a stale holder whose lease expired) can never both own a
job. Fetching first looks for due jobs without the write lock (an idle daemon
never blocks producers), then selects and claims them in one write transaction,
so two daemons never race for the same rows. Each task's due jobs are one
range of a partial index, so a fetch costs the same at ten jobs or ten million.
A fetch after a doorbell ring (drainpool.queue.doorbell) skips the look, and
claims the jobs the ring named by primary key, checking each row (issue 21).

Durability: the daemon's connection uses synchronous=NORMAL, which in WAL mode
survives a killed process but may lose the last commits on power loss. What
that can lose is an ack or a lease (the job runs again: at-least-once holds),
never an enqueue: producers' connections commit with synchronous=FULL.

A deleted or replaced file (see daemon/drainpool/queue/sqlite_db.py): the jobs that were
waiting in it are gone with it, as with any database. The jobs this queue had
leased from it are still its own: when one of them ends in a release, a retry
or a death, the job is written into the file now at the path (with a new id);
an ack only removes a restored copy of the job, if the new file has one.

Longer than a module should be: every state change is here, beside the SQL and
the indexes it relies on. The file itself (busy, faults, identity) is in
sqlite_db.py, and reading job records in sqlite_records.py.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from drainpool.queue import sqlite_schedules
from drainpool.queue.base import (
    CancelEffect,
    CancelResult,
    DeadJob,
    Done,
    Failure,
    Job,
    JobInfo,
    JobNotFound,
    JobState,
    QueueError,
    QueueStats,
    QueueUnavailable,
    RetryPolicy,
    WorkerIdentity,
    check_timeout,
    decode_meta,
    encode_meta,
    encode_payload,
    fetched_job,
    fetched_payload,
    loads_or_raw,
    log_dead,
    refuse_connection,
)
from drainpool.queue.doorbell import Doorbell, DoorbellWaiter, Heard
from drainpool.queue.outcome_minutes import (
    KEEP_SECONDS,
    PRUNE_SQL,
    READ_SQL,
    TABLE_SQL,
    UPSERT_SQL,
    as_minutes,
    check_outcomes,
    first_minute,
    minute_of,
)
from drainpool.queue.records import (
    RESULT_MAX_BYTES,
    RETENTION_SECONDS,
    backoff_pause,
    check_limit,
    check_retention,
    parse_state,
    result_of,
    wait_for,
)
from drainpool.queue.sqlite_db import Database
from drainpool.queue.sqlite_records import (
    CANCEL_COLUMNS,
    CANCEL_SETTLED_SQL,
    CANCELLED,
    COMPLETE_IDS_SQL,
    COMPLETE_SQL,
    DEAD,
    EXPIRY_INDEX,
    LEASED,
    LIVE_SQL,
    RECORD_COLUMNS,
    WAITING,
    group_acks,
    ids_by_token,
    list_jobs,
    prune_expired,
    read_job,
)

log = logging.getLogger("drainpool.queue")
T = TypeVar("T")

# 2: the meta table (file id) of drainpool.queue.sqlite_db; 4: the indexes below (3 was a
# step); 5: the job records (RECORD_COLUMNS, jobs_expiry); 6: the outcome_minutes table;
# 7: schedule ticks (sqlite_schedules); 8: jobs.meta, each job's metadata (the producer's
# trace context), NULL for none; 9: time limits and cancels (CANCEL_COLUMNS).
SCHEMA_VERSION = 9
META_COLUMN = "meta TEXT"
BATCH_SIZE = 500  # parameters per IN (...) list, well under SQLite's limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    token TEXT,
    idem_key TEXT,
    enqueued_at REAL NOT NULL,
    error TEXT,
    traceback TEXT,
    failed_at REAL
);
DROP INDEX IF EXISTS jobs_state;
DROP INDEX IF EXISTS jobs_due;
DROP INDEX IF EXISTS jobs_leased;
DROP INDEX IF EXISTS jobs_ready;
CREATE INDEX jobs_ready ON jobs(task, due_at) WHERE state = 0;
CREATE INDEX jobs_leased ON jobs(task, due_at) WHERE state = 1;
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs(failed_at) WHERE state = 2;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL
"""
# Every claim and every ack rewrites each index that holds the row, so each index costs
# the dispatcher on every job, and most in the B-trees as deep as the queue is long:
# - jobs_ready: the waiting jobs of a task in due order. A claim removes one entry from
#   its head; an ack never touches it.
# - jobs_leased: the jobs out on lease (running or in reserve) by task and lease end: a
#   claim adds an entry, an ack removes it, in a small B-tree that stays in the cache at
#   any depth. A fetch also takes lapsed leases from it (a dead daemon's jobs).
# - jobs_dead: the dead letters, by failure time; claims and acks never touch it.
# stats() counts from these. Version 2 had jobs_due (task, due_at) for waiting and leased
# jobs alike, and jobs_state (state, due_at): six index writes per job in B-trees as long
# as the queue, where now there is one. In an A/B on fresh copies of the files, a settle +
# claim round of 264 jobs with jobs_due alone (version 3) cost 9-15 % more CPU at a million
# jobs queued than at a thousand, and this schema 2-6 %, 10 % less at either depth; the
# bench's drainpool-queue scenario measures it on reused files (bench/RESULTS.md). The schema
# runs when a file's user_version is older: a new file, or an upgrade, which builds the
# indexes once.
# The acks of one lease token in one statement, not one step per job: each step lets go of
# the GIL, and under load every step then waits its turn to take it back. ?1 is the token,
# ?2 a JSON list of the ids leased with it, each reached by the primary key.
ACK_SQL = "DELETE FROM jobs WHERE token = ?1 AND id IN (SELECT value FROM json_each(?2))"
# The due jobs of one task (?T) at ?1, at most ?2 of each kind: waiting, and lapsed leases.
_DUE_TERMS = (
    "SELECT * FROM (SELECT due_at, id FROM jobs"
    f" WHERE state = {WAITING} AND task = ?T AND due_at <= ?1 ORDER BY due_at LIMIT ?2)"
    " UNION ALL SELECT * FROM (SELECT due_at, id FROM jobs"
    f" WHERE state = {LEASED} AND task = ?T AND due_at <= ?1 ORDER BY due_at LIMIT ?2)"
)


@functools.lru_cache(maxsize=128)
def claim_sql(ids: int, checked_tasks: int = 0) -> str:
    """The claim of `ids` rows by id; with `checked_tasks`, only if waiting, due and of those tasks.

    The parameters: the six of the lease, the ids, then (checked) the time and the tasks.
    """
    check = ""
    if checked_tasks:
        check = f" AND state = {WAITING} AND due_at <= ? AND task IN ({_marks(checked_tasks)})"
    return (
        f"UPDATE jobs SET state = {LEASED}, due_at = ?, token = ?, attempts = attempts + 1,"
        " started_at = COALESCE(started_at, ?), worker_host = ?, worker_pid = ?,"
        f" worker_pool = ? WHERE id IN ({_marks(ids)}){check}"
        " RETURNING id, task, CAST(payload AS BLOB), attempts, enqueued_at,"
        " timeout_seconds, cancel_requested_at, meta"
    )


DUE_TASKS_MAX = 200  # tasks per statement: two compound terms each, under SQLite's 500


@functools.lru_cache(maxsize=64)
def due_sql(count: int) -> str:
    """The due jobs of `count` tasks (?3, ?4, ...) at ?1, the first ?2 of all, in one statement.

    One statement, not one per task: each costs a round through the sqlite3
    module (and a GIL hand-off), and a pool serving twenty tasks made forty
    per fetch, the look and the claim's (issue 21).
    """
    terms = " UNION ALL ".join(_DUE_TERMS.replace("?T", f"?{i + 3}") for i in range(count))
    return f"SELECT due_at, id FROM ({terms}) ORDER BY due_at, id LIMIT ?2"


# AUTOINCREMENT: ids are never reused, so a log line or a stale token can never
# point at a different job after the first one was acked.


def _migrate(conn: sqlite3.Connection, found: int) -> None:
    """Bring a file at version `found` (0: new) to SCHEMA_VERSION, keeping every job."""
    if found < 4:
        for statement in _SCHEMA.split(";"):
            conn.execute(statement)
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    # Every step is idempotent (a column is added only if missing), so a file that took
    # the steps in another order (a branch's build) still ends with all of them.
    for column in (*RECORD_COLUMNS, META_COLUMN, *CANCEL_COLUMNS):
        if column.split()[0] not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
    conn.execute(EXPIRY_INDEX)
    conn.execute(TABLE_SQL)
    sqlite_schedules.migrate(conn)


def path_from_url(url: str, base_dir: Path | None) -> Path:
    """Resolve `sqlite:///rel` against `base_dir` and `sqlite:////abs` as absolute."""
    if not url.startswith("sqlite:///"):
        raise QueueError(
            f"not a sqlite URL: {url!r} (want sqlite:///relative or sqlite:////absolute)"
        )
    raw = url[len("sqlite:///") :]
    if not raw or raw == "/":
        raise QueueError(f"sqlite URL has no file path: {url!r}")
    path = Path(raw)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


# What a settlement does to one job: (job, new state or None when acked, due_at, attempts,
# error, traceback, failed_at).
_Change = tuple[Job, int | None, float, int, str | None, str | None, float | None]


def _acked(job: Job) -> _Change:
    """An ack as a change for _adopt: state None, done, nothing to keep."""
    return (job, None, 0.0, 0, None, None, None)


class SqliteQueue:
    """The `Queue` protocol on one SQLite file (see module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        retry: RetryPolicy | None = None,
        durable_commits: bool = True,
        clock: Callable[[], float] = time.time,
        retention_seconds: float = RETENTION_SECONDS,
        result_max_bytes: int = RESULT_MAX_BYTES,
    ) -> None:
        check_retention(retention_seconds, result_max_bytes)
        self.path = Path(path)
        self.retry = retry or RetryPolicy()
        self.retention_seconds = retention_seconds
        self.result_max_bytes = result_max_bytes  # for the pool's encode_result
        self.worker = WorkerIdentity.here()  # recorded at a claim that names no other
        self._clock = clock
        self._closing = threading.Event()  # wakes wait() at close
        self._db = Database(
            self.path,
            _migrate,
            SCHEMA_VERSION,
            synchronous="FULL" if durable_commits else "NORMAL",
        )
        # Reads for people (stats at a scrape, dead letters) on a connection of their own:
        # a count over a million jobs takes a tenth of a second, and on the dispatcher's
        # connection it would hold up every settle and fetch for that long.
        self._aside = Database(
            self.path, _migrate, SCHEMA_VERSION, synchronous="NORMAL", create=False
        )
        self._token_prefix = secrets.token_hex(4)
        self._token_counter = itertools.count()
        self._doorbell = Doorbell(self.path)  # wakes idle daemons after a commit (issue 21)
        # What our pools' doorbells rang for since their last fetch: that fetch skips the
        # lock-free look (the ring says a job is there), one transaction less per pickup,
        # and claims the jobs the rings named by id, without looking for them either.
        self._heard = Heard()

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """A transaction on the main connection; a fault lets go of the side one too.

        The main connection is dropped on a fault (a file system that failed or was
        unmounted); the side one, idle between scrapes and prunes, would otherwise
        hold the broken file open, and the device with it, until its next use.
        """
        try:
            return self._db.run(fn, write=write)
        except QueueUnavailable:
            self._aside.close()
            raise

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        base_dir: Path | None = None,
        durable_commits: bool = True,
        retention_seconds: float = RETENTION_SECONDS,
        result_max_bytes: int = RESULT_MAX_BYTES,
    ) -> SqliteQueue:
        """Open `sqlite:///relative` (to `base_dir`, else the working directory) or `sqlite:////abs`."""
        return cls(
            path_from_url(url, base_dir),
            retry=retry,
            durable_commits=durable_commits,
            retention_seconds=retention_seconds,
            result_max_bytes=result_max_bytes,
        )

    # -- producers --------------------------------------------------------

    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        delay: float = 0.0,
        key: str | None = None,
        connection: Any = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        refuse_connection(connection, "SQLite")
        if not math.isfinite(delay):
            raise QueueError(f"delay must be a finite number of seconds, not {delay!r}")
        limit = check_timeout(timeout)
        body = encode_payload(payload)
        meta_json = encode_meta(meta) or None
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> str:
            if key is not None:
                # A key stays taken until its job is acked or purged (a dead job keeps it).
                row = conn.execute("SELECT id FROM jobs WHERE idem_key = ?", (key,)).fetchone()
                if row:
                    return str(row[0])
            cur = conn.execute(
                "INSERT INTO jobs (task, payload, due_at, idem_key, enqueued_at, timeout_seconds,"
                " meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task, body, now + max(delay, 0.0), key, now, limit, meta_json),
            )
            return str(cur.lastrowid)

        job_id = self._run(insert, write=True)
        if delay > 0:
            self._doorbell.ring((task,), now + delay)
        else:
            self._doorbell.ring((task,), ids={task: (job_id,)})
        return job_id

    def enqueue_tick(
        self,
        schedule: str,
        task: str,
        payload: Any = None,
        *,
        tick: float | None,
        expected: float | None,
    ) -> str | None:
        body = encode_payload(payload)
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> str | None:
            if tick is not None and not sqlite_schedules.advance(
                conn, schedule, tick, expected, now
            ):
                return None  # another daemon enqueued this tick (or a later one) first
            cur = conn.execute(
                "INSERT INTO jobs (task, payload, due_at, enqueued_at, schedule, tick)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (task, body, now, now, schedule, tick),
            )
            job_id = int(cur.lastrowid or 0)
            if tick is not None:
                sqlite_schedules.note_job(conn, schedule, job_id)
            return str(job_id)

        return self._run(insert, write=True)

    def schedule_ticks(self) -> dict[str, float]:
        return self._run(sqlite_schedules.read_ticks, write=False)

    def enqueue_many(self, jobs: Iterable[tuple[str, Any]]) -> int:
        now = self._clock()
        rows = [(task, encode_payload(payload), now, now) for task, payload in jobs]

        def insert(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO jobs (task, payload, due_at, enqueued_at) VALUES (?, ?, ?, ?)", rows
            )
            return len(rows)

        if not rows:
            return 0
        added = self._run(insert, write=True)
        self._doorbell.ring(row[0] for row in rows)
        return added

    # -- consumers --------------------------------------------------------

    def fetch(
        self,
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        *,
        worker: WorkerIdentity | None = None,
    ) -> list[Job]:
        if n <= 0 or not tasks:
            return []
        rung, named = self._heard.take(tasks)
        if not rung and not self._run(lambda c: _due_ids(c, 1, tasks, self._clock()), write=False):
            return []  # nothing due: no write lock taken
        return self._run(self._claimer(n, tasks, lease_seconds, worker, named), write=True)

    def waiter(self, tasks: Collection[str]) -> DoorbellWaiter:
        """A pool's doorbell (drainpool.queue.doorbell): producers ring it after a commit."""
        return DoorbellWaiter(self.path, tasks, self._heard)

    def next_due(self, tasks: Collection[str]) -> float | None:
        """Seconds until the earliest waiting job of `tasks` is due, one index seek per task."""

        def earliest(conn: sqlite3.Connection) -> float | None:
            found = [
                conn.execute(
                    f"SELECT MIN(due_at) FROM jobs WHERE state = {WAITING} AND task = ?", (task,)
                ).fetchone()[0]
                for task in tasks
            ]
            return min((due for due in found if due is not None), default=None)

        due = self._run(earliest, write=False)
        return None if due is None else max(due - self._clock(), 0.0)

    def settle_and_fetch(
        self,
        acks: Sequence[Job | Done],
        releases: Sequence[Job],
        failures: Sequence[Failure],
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        *,
        worker: WorkerIdentity | None = None,
        outcomes: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """Settle and lease up to `n` more in one write transaction: the dispatcher's hot path.

        The write lock is taken anyway to settle, so claiming inside the same
        transaction saves a commit and a lock round per job finished; with
        nothing to settle, the lock-free look of `fetch` comes first as usual.
        """
        counts = check_outcomes(outcomes)
        if not (acks or releases or failures or counts):
            return self.fetch(n, tasks, lease_seconds, worker=worker)
        settle = self._settlement(acks, releases, failures, counts)
        if n <= 0 or not tasks:
            self._run(settle, write=True)
            log_dead(failures, self.retry)
            self._ring_released(releases)
            return []
        claim = self._claimer(n, tasks, lease_seconds, worker)
        self._heard.forget(tasks)  # this claim answers the rings heard so far

        def both(conn: sqlite3.Connection) -> list[Job]:
            settle(conn)
            return claim(conn)

        jobs = self._run(both, write=True)
        log_dead(failures, self.retry)
        self._ring_released(releases)
        return jobs

    def _ring_released(self, releases: Sequence[Job]) -> None:
        """Released jobs are ready again: other daemons (a drain's, say) may take them now."""
        if releases:
            ids: dict[str, list[str]] = {}
            for job in releases:
                ids.setdefault(job.task, []).append(job.id)
            self._doorbell.ring(ids.keys(), ids=ids)

    def _claimer(
        self,
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        worker: WorkerIdentity | None,
        named: Sequence[int] = (),
    ) -> Callable[[sqlite3.Connection], list[Job]]:
        """The claim of up to `n` due jobs of `tasks`; first those `named` by a ring, if any.

        The named rows are claimed by primary key when they are still waiting,
        due, and of our tasks; if none is (another daemon took them, or a ring
        named a job not yet due, or each ended at once: dead, cancelled), the claim
        looks for due jobs as without names, in the same transaction: a daemon
        that lost the race still costs one.
        """
        who = worker or self.worker

        def claim(conn: sqlite3.Connection) -> list[Job]:
            # Under the write lock the due set cannot change: select and claim at once.
            now = self._clock()
            token = self._new_token()
            lease = (now + lease_seconds, token, now, who.host, who.pid, who.pool)
            if named:
                ids = named[:n]
                sql = claim_sql(len(ids), len(tasks))
                rows = conn.execute(sql, (*lease, *ids, now, *tasks)).fetchall()
                rows.sort()  # by id, the order of enqueue; RETURNING has no defined order
                jobs = self._to_jobs(conn, rows, token, now)
                if jobs:
                    return jobs
            ids = _due_ids(conn, n, tasks, now)
            if not ids:
                return []  # another daemon took them between the look and the lock
            rows = conn.execute(claim_sql(len(ids)), (*lease, *ids)).fetchall()
            # In the due order of `ids` (RETURNING has no defined order), without a key
            # function called per row.
            by_id = {row[0]: row for row in rows}
            ordered = [by_id[job_id] for job_id in ids if job_id in by_id]
            return self._to_jobs(conn, ordered, token, now)

        return claim

    def _new_token(self) -> str:
        # The file's epoch (see _adopt), then a random per-process prefix and a counter:
        # unique between fetches and between daemons, without a getrandom call per fetch.
        return f"{self._db.epoch}-{self._token_prefix}{next(self._token_counter):x}"

    def _to_jobs(
        self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]], token: str, now: float
    ) -> list[Job]:
        jobs: list[Job] = []
        max_attempts = self.retry.max_attempts
        for job_id, task, body, attempts, enqueued_at, timeout, cancel_at, meta in rows:
            if cancel_at is not None:
                # Cancelled while leased, and its daemon died before it stopped the job.
                conn.execute(
                    CANCEL_SETTLED_SQL,
                    (now, now + self.retention_seconds, token, f"[{job_id}]"),
                )
                continue
            payload, error = fetched_payload(job_id, task, body, attempts, max_attempts)
            if error:
                conn.execute(
                    f"UPDATE jobs SET state = {DEAD}, token = NULL, error = ?, traceback = '',"
                    " failed_at = ? WHERE id = ?",
                    (error, now, job_id),
                )
                continue
            jobs.append(
                fetched_job(
                    str(job_id),
                    task,
                    payload,
                    attempts,
                    token,
                    enqueued_at,
                    timeout,
                    {} if meta is None else decode_meta(meta),  # most jobs have none
                )
            )
        return jobs

    def renew(self, jobs: Sequence[Job], lease_seconds: float) -> None:
        if not jobs:
            return
        until = self._clock() + lease_seconds
        params = [(until, int(j.id), j.token) for j in jobs]
        self._run(
            lambda c: c.executemany(
                f"UPDATE jobs SET due_at = ? WHERE id = ? AND token = ? AND state = {LEASED}",
                params,
            ),
            write=True,
        )

    def settle(
        self,
        acks: Sequence[Job | Done] = (),
        releases: Sequence[Job] = (),
        failures: Sequence[Failure] = (),
        *,
        outcomes: Mapping[str, int] | None = None,
    ) -> None:
        counts = check_outcomes(outcomes)
        if acks or releases or failures or counts:
            self._run(self._settlement(acks, releases, failures, counts), write=True)
            log_dead(failures, self.retry)
            self._ring_released(releases)

    def _settlement(
        self,
        acks: Sequence[Job | Done],
        releases: Sequence[Job],
        failures: Sequence[Failure],
        counts: dict[str, int],
    ) -> Callable[[sqlite3.Connection], None]:
        """The statements of one settle, every one guarded by id and lease token."""
        now = self._clock()
        expires = now + self.retention_seconds
        # The acks of one claim share its token: grouped by it (and by the result they
        # record), each group is one statement over a JSON list of ids (issue 17).
        groups, singles = group_acks(acks, keep_results=bool(self.retention_seconds))
        acked = [
            (token, result, json.dumps([int(j.id) for j in jobs]), jobs)
            for (token, result), jobs in groups.items()
        ]
        # What becomes of each job: (job, state, due_at, attempts, error, traceback, failed_at);
        # decided once, so a busy retry of the transaction keeps the same jittered delays.
        changes: list[_Change] = []
        for j in releases:  # keeps its place: due at its enqueue time, attempt not counted
            changes.append((j, WAITING, min(j.enqueued_at, now), j.attempt - 1, None, None, None))
        for f in failures:
            j = f.job
            if f.retry and not self.retry.is_final(j.attempt):
                due = now + self.retry.delay_after(j.attempt)
                changes.append((j, WAITING, due, j.attempt, f.error, f.traceback, None))
            else:
                changes.append((j, DEAD, now, j.attempt, f.error, f.traceback, now))
        changed = [
            (token, json.dumps(ids)) for token, ids in ids_by_token(c[0] for c in changes).items()
        ]
        dead = sum(1 for c in changes if c[1] == DEAD)
        minute = minute_of(now)
        # One upsert per outcome kind of the batch, never one per job.
        bumps = [(minute, name, n) for name, n in {**counts, "dead": dead}.items() if n]

        def apply(conn: sqlite3.Connection) -> None:
            mine = f"{self._db.epoch}-"
            orphans: list[_Change] = []
            for token, result, ids, jobs in acked:
                if not token.startswith(mine):
                    orphans += [_acked(j) for j in jobs]
                elif self.retention_seconds:
                    conn.execute(COMPLETE_IDS_SQL, (now, expires, result, "", token, ids))
                else:
                    conn.execute(ACK_SQL, (token, ids))
            kept = [
                (int(d.job.id), d.job.token, d.result_json, d.note)
                for d in singles
                if d.job.token.startswith(mine)
            ]
            if kept:
                conn.execute(COMPLETE_SQL, (now, expires, json.dumps(kept)))
            orphans += [_acked(d.job) for d in singles if not d.job.token.startswith(mine)]
            for token, ids in changed:
                if token.startswith(mine):
                    # A job whose cancel was asked ends cancelled; the UPDATE below skips it.
                    conn.execute(CANCEL_SETTLED_SQL, (now, expires, token, ids))
            updates = [
                (*c[1:], int(c[0].id), c[0].token) for c in changes if c[0].token.startswith(mine)
            ]
            if updates:
                conn.executemany(
                    "UPDATE jobs SET state = ?, due_at = ?, attempts = ?, token = NULL,"
                    " error = COALESCE(?, error), traceback = COALESCE(?, traceback),"
                    f" failed_at = ? WHERE id = ? AND token = ? AND state = {LEASED}",
                    updates,
                )
            orphans += [c for c in changes if not c[0].token.startswith(mine)]
            if orphans:
                self._adopt(conn, orphans)
            if bumps:
                conn.executemany(UPSERT_SQL, bumps)

        return apply

    def _adopt(self, conn: sqlite3.Connection, changes: list[_Change]) -> None:
        """Settle jobs leased from a file that was since deleted or replaced (module docstring)."""
        for job, *_ in changes:
            if job.token.split(".", 1)[0] == self._db.file_id:
                # The file now at the path is a copy of the old one (a restored backup):
                # its copy of this job (same id, task and enqueue time) gives way.
                conn.execute(
                    "DELETE FROM jobs WHERE id = ? AND task = ? AND enqueued_at = ?",
                    (int(job.id), job.task, job.enqueued_at),
                )
        for job, state, due_at, attempts, error, traceback, failed_at in changes:
            if state is None:
                continue  # acked: done, nothing to keep
            cur = conn.execute(
                "INSERT INTO jobs (task, payload, state, due_at, attempts, enqueued_at, error,"
                " traceback, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.task,
                    encode_payload(job.payload),
                    state,
                    due_at,
                    attempts,
                    job.enqueued_at,
                    error,
                    traceback,
                    failed_at,
                ),
            )
            log.warning(
                "job %s was leased from a database file that has since been deleted or replaced;"
                " written into %s as job %s",
                job.id,
                self.path,
                cur.lastrowid,
            )

    # -- stopping one job -------------------------------------------------

    def cancel(self, job_id: str, *, reason: str = "", by: str = "") -> CancelResult:
        numeric = _job_id(job_id)
        now = self._clock()
        expires = now + self.retention_seconds

        def decide(conn: sqlite3.Connection) -> CancelEffect | None:
            row = conn.execute(
                f"SELECT state, cancel_requested_at FROM jobs WHERE id = :id AND {LIVE_SQL}",
                {"id": numeric, "now": now},
            ).fetchone()
            if row is None:
                return None
            state, asked = row
            if state == WAITING:
                conn.execute(
                    f"UPDATE jobs SET state = {CANCELLED}, idem_key = NULL,"
                    " released_key = idem_key, finished_at = ?, expires_at = ?,"
                    " cancel_requested_at = ?, cancel_reason = ?, cancel_by = ? WHERE id = ?",
                    (now, expires, now, reason, by, numeric),
                )
                return CancelEffect.CANCELLED
            if state != LEASED:
                return CancelEffect.ENDED
            if asked is not None:
                return CancelEffect.ALREADY_REQUESTED
            conn.execute(
                "UPDATE jobs SET cancel_requested_at = ?, cancel_reason = ?, cancel_by = ?"
                " WHERE id = ?",
                (now, reason, by, numeric),
            )
            return CancelEffect.REQUESTED

        def apply(conn: sqlite3.Connection) -> CancelResult | None:
            effect = decide(conn)
            # Read in the same transaction, a moment back: with retention 0 a record that
            # ends now expires now, and the answer must still show it.
            info = None if effect is None else read_job(conn, numeric, now - 1e-3)
            return None if info is None or effect is None else CancelResult(effect, info)

        result = self._run(apply, write=True)
        if result is None:
            raise JobNotFound(job_id)
        return result

    def cancel_requests(self, jobs: Sequence[Job]) -> set[str]:
        """One read of the primary key for the held ids, on the side connection."""
        if not jobs:
            return set()
        ids = json.dumps([int(j.id) for j in jobs])
        rows = self._read_aside(
            lambda c: c.execute(
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
                " AND cancel_requested_at IS NOT NULL",
                (ids,),
            ).fetchall()
        )
        return {str(row[0]) for row in rows}

    # -- inspection and dead letters --------------------------------------

    def stats(self) -> QueueStats:
        now = self._clock()

        def count(conn: sqlite3.Connection) -> QueueStats:
            # One pass over jobs_ready (the longest: linear in the waiting jobs), then the
            # two small indexes. A lapsed lease is counted as leased, as it is until taken.
            # The earliest due time of all waiting jobs is a ready one's whenever any is.
            waiting, ready, earliest = conn.execute(
                "SELECT COUNT(*), TOTAL(due_at <= ?), MIN(due_at) FROM jobs"
                f" WHERE state = {WAITING}",
                (now,),
            ).fetchone()
            (leased,) = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state = {LEASED}").fetchone()
            (dead,) = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state = {DEAD}").fetchone()
            oldest = earliest if ready else None
            return QueueStats(
                ready=int(ready),
                delayed=waiting - int(ready),
                leased=leased,
                dead=dead,
                oldest_ready_age_seconds=None if oldest is None else max(now - oldest, 0.0),
            )

        return self._read_aside(count)

    def dead_list(self, limit: int = 100) -> list[DeadJob]:
        rows = self._read_aside(
            lambda c: c.execute(
                "SELECT id, task, CAST(payload AS BLOB), attempts, error, traceback, failed_at"
                f" FROM jobs WHERE state = {DEAD} ORDER BY failed_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            DeadJob(str(r[0]), r[1], loads_or_raw(r[2]), r[3], r[4] or "", r[5] or "", r[6] or 0)
            for r in rows
        ]

    def dead_retry(self, ids: Sequence[str] | None = None) -> int:
        now = self._clock()
        sql = (
            f"UPDATE jobs SET state = {WAITING}, due_at = ?, attempts = 0, token = NULL,"
            f" failed_at = NULL WHERE state = {DEAD}"
        )
        retried = self._dead_update(sql, (now,), ids)
        if retried:
            self._doorbell.ring(self._run(_live_tasks, write=False))
        return retried

    def dead_purge(self, ids: Sequence[str] | None = None) -> int:
        return self._dead_update(f"DELETE FROM jobs WHERE state = {DEAD}", (), ids)

    def _dead_update(self, sql: str, args: tuple[Any, ...], ids: Sequence[str] | None) -> int:
        if ids is None:
            return self._run(lambda c: c.execute(sql, args).rowcount, write=True)
        numeric = [_job_id(i) for i in ids]

        def apply(conn: sqlite3.Connection) -> int:
            changed = 0
            for start in range(0, len(numeric), BATCH_SIZE):
                chunk = numeric[start : start + BATCH_SIZE]
                marks = ",".join("?" * len(chunk))
                changed += conn.execute(f"{sql} AND id IN ({marks})", (*args, *chunk)).rowcount
            return changed

        return self._run(apply, write=True)

    def bury_unknown(self, known_tasks: Collection[str]) -> int:
        # Looked up first without the write lock: a start or reload with nothing to bury
        # (the usual case) never waits for it, nor makes the dispatchers wait.
        known = set(known_tasks)
        unknown = [t for t in self._run(_live_tasks, write=False) if t not in known]
        if not unknown:
            return 0
        now = self._clock()

        def apply(conn: sqlite3.Connection) -> int:
            buried = 0
            for task in unknown:
                # Waiting jobs, and leases that expired: a live lease belongs to a daemon
                # that still serves the task (another config, mid-rollout).
                bury = (
                    f"UPDATE jobs SET state = {DEAD}, token = NULL, traceback = '',"
                    f" error = :error, failed_at = :now WHERE task = :task AND "
                )
                params = {"error": f"task {task!r} is not configured", "now": now, "task": task}
                buried += conn.execute(bury + f"state = {WAITING}", params).rowcount
                buried += conn.execute(
                    bury + f"state = {LEASED} AND due_at <= :now", params
                ).rowcount
            return buried

        return self._run(apply, write=True)

    # -- job records ------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        try:
            numeric = int(job_id)
        except ValueError:
            return None  # no job of this queue has such an id
        now = self._clock()
        return self._read_aside(lambda c: read_job(c, numeric, now))

    def jobs(
        self, state: JobState | str | None = None, task: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        wanted = parse_state(state)
        check_limit(limit)
        now = self._clock()
        return self._read_aside(lambda c: list_jobs(c, wanted, task, limit, now))

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """Polls with a backoff (2 ms doubling to 100 ms): SQLite has no notification."""
        return wait_for(job_id, timeout, lambda: self.job(job_id), self._pause)

    def _pause(self, left: float | None, rounds: int) -> None:
        if self._closing.wait(backoff_pause(left, rounds)):
            raise QueueError(f"{self.path}: the queue was closed while waiting for a job")

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        return result_of(self.wait(job_id, timeout))

    def prune(self, limit: int = 500) -> int:
        """Delete up to `limit` expired records in one short write transaction."""
        now = self._clock()

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute(PRUNE_SQL, (minute_of(now - KEEP_SECONDS),))  # a few rows at most
            return prune_expired(conn, now, limit)

        if not self._db.opened:
            return self._run(delete, write=True)
        return self._aside.run(delete, write=True)  # not the dispatcher's connection lock

    def outcome_minutes(self, since: float) -> list[dict[str, Any]]:
        now = self._clock()
        first = first_minute(since, now)
        found = self._read_aside(lambda c: c.execute(READ_SQL, (first,)).fetchall())
        return as_minutes(first, now, found)

    def ping(self) -> None:
        self._run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    def _read_aside(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the side connection, once the main one has opened (or created) the file."""
        if not self._db.opened:
            return self._run(fn, write=False)  # the main connection decides about creating
        return self._aside.run(fn, write=False)

    def close(self) -> None:
        self._closing.set()
        self._doorbell.close()
        self._db.close()
        self._aside.close()


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _job_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise QueueError(f"not a job id of this queue: {raw!r}") from None


def _live_tasks(conn: sqlite3.Connection) -> list[str]:
    """The task names of waiting and leased jobs, one index seek per name and index.

    A skip-scan by hand over jobs_ready and jobs_leased: SELECT DISTINCT read the
    whole index, 0.6 s with a million jobs queued, at every start and reload.
    """
    names: set[str] = set()
    for state in (WAITING, LEASED):
        name = conn.execute(f"SELECT MIN(task) FROM jobs WHERE state = {state}").fetchone()[0]
        while name is not None:
            names.add(name)
            row = conn.execute(
                f"SELECT task FROM jobs WHERE state = {state} AND task > ? ORDER BY task LIMIT 1",
                (name,),
            ).fetchone()
            name = row[0] if row else None
    return sorted(names)


def _due_ids(conn: sqlite3.Connection, n: int, tasks: Collection[str], now: float) -> list[int]:
    """Ids of up to `n` due jobs of `tasks`, oldest due first (waiting or lease expired)."""
    # One range of jobs_ready and one of jobs_leased per task, in one statement: the cost
    # does not grow with the queue (tests/test_queue_sqlite_durability.py asserts the plan).
    names = list(tasks)
    found: list[tuple[float, int]] = []
    for start in range(0, len(names), DUE_TASKS_MAX):
        chunk = names[start : start + DUE_TASKS_MAX]
        found += conn.execute(due_sql(len(chunk)), (now, n, *chunk)).fetchall()
    if len(names) > DUE_TASKS_MAX:
        found.sort()
    return [job_id for _, job_id in found[:n]]
