"""Job records in the PostgreSQL queue: a job's row read, listed and pruned.

The rows are those of the hot path (daemon/drainpool/queue/postgres.py); the
columns and state numbers are the SQLite backend's, so a row becomes a JobInfo
the same way (sqlite_records.info_from_row). A completed or cancelled row stays
until `expires_at` and is not shown after it, even before prune() deletes it.
"""

from __future__ import annotations

from typing import Any

from drainpool.queue.base import JobInfo, JobState
from drainpool.queue.postgres_schema import CANCELLED, COMPLETED, DEAD, LEASED, WAITING
from drainpool.queue.sqlite_records import info_from_row

# Epoch seconds on the database's clock, fixed for one statement.
NOW = "extract(epoch from statement_timestamp())::float8"

RECORD_COLUMNS = (
    "id, task, payload, COALESCE(idem_key, released_key), state, due_at, attempts,"
    " enqueued_at, started_at, COALESCE(finished_at, failed_at), worker_host, worker_pid,"
    " worker_pool, error, traceback, result, result_note, timeout_seconds, cancel_requested_at,"
    " cancel_reason, cancel_by, schedule, tick"
)
LIVE_SQL = f"NOT (state IN ({COMPLETED}, {CANCELLED}) AND expires_at <= %(now)s)"
STATE_SQL = {
    JobState.WAITING: f"state = {WAITING} AND due_at <= %(now)s",
    JobState.DELAYED: f"state = {WAITING} AND due_at > %(now)s",
    JobState.RUNNING: f"state = {LEASED}",
    JobState.DEAD: f"state = {DEAD}",
    JobState.COMPLETED: f"state = {COMPLETED}",
    JobState.CANCELLED: f"state = {CANCELLED}",
}


def db_now(conn: Any) -> float:
    (now,) = conn.execute(f"SELECT {NOW}").fetchone()
    return float(now)


def read_job(conn: Any, schema: str, job_id: int, *, now: float | None = None) -> JobInfo | None:
    """The live record as of `now` (default: the database's clock at this read)."""
    now = db_now(conn) if now is None else now
    row = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM {schema}.jobs WHERE id = %(id)s AND {LIVE_SQL}",
        {"id": job_id, "now": now},
    ).fetchone()
    return None if row is None else info_from_row(row, now)


def list_jobs(
    conn: Any, schema: str, state: JobState | None, task: str | None, limit: int
) -> list[JobInfo]:
    """Newest first: the primary key backwards, filtered."""
    now = db_now(conn)
    where = [LIVE_SQL]
    if state is not None:
        where.append(STATE_SQL[state])
    if task is not None:
        where.append("task = %(task)s")
    rows = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM {schema}.jobs WHERE {' AND '.join(where)}"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"now": now, "task": task, "limit": limit},
    ).fetchall()
    return [info_from_row(row, now) for row in rows]


def prune_expired(conn: Any, schema: str, limit: int) -> int:
    """Delete up to `limit` expired records, oldest expiry first (one range of jobs_expiry)."""
    cur = conn.execute(
        f"DELETE FROM {schema}.jobs WHERE id IN (SELECT id FROM {schema}.jobs"
        f" WHERE expires_at <= {NOW} ORDER BY expires_at LIMIT %s)",
        (limit,),
    )
    return int(cur.rowcount)
