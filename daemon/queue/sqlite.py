"""The embedded queue: one SQLite file in WAL mode.

Why this shape: every state change is one conditional UPDATE or DELETE inside
a write transaction, keyed on the job id *and* its lease token, so two daemons
sharing the file (or a stale holder whose lease expired) can never both own a
job. Fetching reads candidates first without the write lock (an idle daemon
never blocks producers), then claims them with a re-checked condition.

Durability: the daemon's connection uses synchronous=NORMAL, which in WAL mode
survives a killed process but may lose the last commits on power loss. What
that can lose is an ack or a lease (the job runs again: at-least-once holds),
never an enqueue: producers' connections commit with synchronous=FULL.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from daemon.queue.base import (
    DeadJob,
    Failure,
    Job,
    QueueError,
    QueueStats,
    QueueUnavailable,
    RetryPolicy,
    decode_payload,
    encode_payload,
    loads_or_raw,
)

T = TypeVar("T")

WAITING, LEASED, DEAD = 0, 1, 2
SCHEMA_VERSION = 1
BUSY_RETRY_SECONDS = 60.0  # how long a writer keeps retrying a locked database
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
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(task, due_at) WHERE state < 2;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, due_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
"""
# AUTOINCREMENT: ids are never reused, so a log line or a stale token can never
# point at a different job after the first one was acked.


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


class SqliteQueue:
    """The `Queue` protocol on one SQLite file (see module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        retry: RetryPolicy | None = None,
        durable_commits: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.retry = retry or RetryPolicy()
        self._synchronous = "FULL" if durable_commits else "NORMAL"
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None

    # -- connection -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open (or reopen after the file was replaced) the connection; caller holds the lock."""
        if self._conn is not None:
            if self._file_identity() == self._inode:
                return self._conn
            self._conn.close()  # the file was deleted or replaced under us
            self._conn = None
            raise QueueUnavailable(f"{self.path}: database file was deleted or replaced")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                # executescript commits first, so the transaction is part of the script.
                conn.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
        except sqlite3.Error as exc:
            raise QueueUnavailable(f"{self.path}: cannot open queue database: {exc}") from exc
        self._conn = conn
        self._inode = self._file_identity()
        return conn

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `fn` in one transaction, retrying while another writer holds the lock."""
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        pause = 0.005
        while True:
            with self._lock:
                conn = self._connect()
                try:
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    busy = "locked" in str(exc) or "busy" in str(exc)
                    if not busy or time.monotonic() > deadline:
                        raise QueueUnavailable(f"{self.path}: {exc}") from exc
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            time.sleep(pause)  # lock released; another writer is committing
            pause = min(pause * 2, 0.2)

    # -- producers --------------------------------------------------------

    def enqueue(
        self, task: str, payload: Any = None, *, delay: float = 0.0, key: str | None = None
    ) -> str:
        body = encode_payload(payload)
        if not math.isfinite(delay):
            raise QueueError(f"delay must be a finite number of seconds, not {delay!r}")
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> str:
            if key is not None:
                row = conn.execute("SELECT id FROM jobs WHERE idem_key = ?", (key,)).fetchone()
                if row:
                    return str(row[0])
            cur = conn.execute(
                "INSERT INTO jobs (task, payload, due_at, idem_key, enqueued_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (task, body, now + max(delay, 0.0), key, now),
            )
            return str(cur.lastrowid)

        return self._run(insert, write=True)

    def enqueue_many(self, jobs: Iterable[tuple[str, Any]]) -> int:
        now = self._clock()
        rows = [(task, encode_payload(payload), now, now) for task, payload in jobs]

        def insert(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO jobs (task, payload, due_at, enqueued_at) VALUES (?, ?, ?, ?)", rows
            )
            return len(rows)

        return self._run(insert, write=True) if rows else 0

    # -- consumers --------------------------------------------------------

    def fetch(self, n: int, tasks: Collection[str], lease_seconds: float) -> list[Job]:
        if n <= 0 or not tasks:
            return []
        now = self._clock()
        candidates = self._run(lambda c: self._due_ids(c, n, tasks, now), write=False)
        if not candidates:
            return []
        token = secrets.token_hex(8)
        marks = ",".join("?" * len(candidates))

        def claim(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"UPDATE jobs SET state = {LEASED}, due_at = ?, token = ?, attempts = attempts + 1"
                f" WHERE id IN ({marks}) AND state < {DEAD} AND due_at <= ?"
                " RETURNING id, task, CAST(payload AS BLOB), attempts, enqueued_at",
                (now + lease_seconds, token, *candidates, now),
            ).fetchall()
            return self._to_jobs(conn, rows, token, now)

        return self._run(claim, write=True)

    @staticmethod
    def _due_ids(conn: sqlite3.Connection, n: int, tasks: Collection[str], now: float) -> list[int]:
        # One indexed range scan per task keeps the cost flat however long the queue is.
        found: list[tuple[float, int]] = []
        for task in tasks:
            found += conn.execute(
                "SELECT due_at, id FROM jobs WHERE state < 2 AND task = ? AND due_at <= ?"
                " ORDER BY due_at LIMIT ?",
                (task, now, n),
            ).fetchall()
        if len(tasks) > 1:
            found.sort()
        return [job_id for _, job_id in found[:n]]

    def _to_jobs(
        self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]], token: str, now: float
    ) -> list[Job]:
        jobs: list[Job] = []
        for job_id, task, body, attempts, enqueued_at in rows:
            error = ""
            if attempts > self.retry.max_attempts:
                error = f"lease expired {attempts - 1} times: its worker died each time"
            else:
                payload, error = decode_payload(body)
            if error:
                conn.execute(
                    f"UPDATE jobs SET state = {DEAD}, token = NULL, error = ?, traceback = '',"
                    " failed_at = ? WHERE id = ?",
                    (error, now, job_id),
                )
                continue
            jobs.append(Job(str(job_id), task, payload, attempts, token, enqueued_at))
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
        acks: Sequence[Job] = (),
        releases: Sequence[Job] = (),
        failures: Sequence[Failure] = (),
    ) -> None:
        if not (acks or releases or failures):
            return
        now = self._clock()
        retries = []
        deaths = []
        for f in failures:
            if f.retry and not self.retry.is_final(f.job.attempt):
                due = now + self.retry.delay_after(f.job.attempt)
                retries.append((due, f.error, f.traceback, int(f.job.id), f.job.token))
            else:
                deaths.append((f.error, f.traceback, now, int(f.job.id), f.job.token))

        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM jobs WHERE id = ? AND token = ?", [(int(j.id), j.token) for j in acks]
            )
            # A released job keeps its place: due again at its enqueue time, attempt not counted.
            conn.executemany(
                f"UPDATE jobs SET state = {WAITING}, due_at = MIN(enqueued_at, ?), token = NULL,"
                f" attempts = attempts - 1 WHERE id = ? AND token = ? AND state = {LEASED}",
                [(now, int(j.id), j.token) for j in releases],
            )
            conn.executemany(
                f"UPDATE jobs SET state = {WAITING}, due_at = ?, token = NULL, error = ?,"
                f" traceback = ? WHERE id = ? AND token = ? AND state = {LEASED}",
                retries,
            )
            conn.executemany(
                f"UPDATE jobs SET state = {DEAD}, token = NULL, error = ?, traceback = ?,"
                f" failed_at = ? WHERE id = ? AND token = ? AND state = {LEASED}",
                deaths,
            )

        self._run(apply, write=True)

    # -- inspection and dead letters --------------------------------------

    def stats(self) -> QueueStats:
        now = self._clock()

        def count(conn: sqlite3.Connection) -> QueueStats:
            def scalar(sql: str, *args: Any) -> Any:
                return conn.execute(sql, args).fetchone()[0]

            ready = scalar("SELECT COUNT(*) FROM jobs WHERE state = 0 AND due_at <= ?", now)
            oldest = scalar("SELECT MIN(due_at) FROM jobs WHERE state = 0 AND due_at <= ?", now)
            return QueueStats(
                ready=ready,
                delayed=scalar("SELECT COUNT(*) FROM jobs WHERE state = 0 AND due_at > ?", now),
                leased=scalar("SELECT COUNT(*) FROM jobs WHERE state = 1"),
                dead=scalar("SELECT COUNT(*) FROM jobs WHERE state = 2"),
                oldest_ready_age_seconds=None if oldest is None else max(now - oldest, 0.0),
            )

        return self._run(count, write=False)

    def dead_list(self, limit: int = 100) -> list[DeadJob]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT id, task, CAST(payload AS BLOB), attempts, error, traceback, failed_at"
                " FROM jobs"
                " WHERE state = 2 ORDER BY failed_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall(),
            write=False,
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
        return self._dead_update(sql, (now,), ids)

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
        now = self._clock()
        known = sorted(known_tasks)
        marks = ",".join("?" * len(known))

        def apply(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"SELECT DISTINCT task FROM jobs WHERE state < 2 AND task NOT IN ({marks})", known
            ).fetchall()
            buried = 0
            for (task,) in rows:
                # Waiting jobs, and leases that expired: a live lease belongs to a daemon
                # that still serves the task (another config, mid-rollout).
                buried += conn.execute(
                    f"UPDATE jobs SET state = {DEAD}, token = NULL, traceback = '',"
                    " error = ?, failed_at = ? WHERE task = ? AND state < 2"
                    f" AND (state = {WAITING} OR due_at <= ?)",
                    (f"task {task!r} is not configured", now, task, now),
                ).rowcount
            return buried

        return self._run(apply, write=True)

    def ping(self) -> None:
        self._run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _job_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise QueueError(f"not a job id of this queue: {raw!r}") from None
