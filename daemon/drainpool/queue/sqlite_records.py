"""Job records in the SQLite queue: the row of a job that ended, read, listed and pruned.

A module of its own because the records are a concern apart from the queue's
hot path (daemon/drainpool/queue/sqlite.py): they are read on the side
connection, and pruned in small batches, never in a long write transaction.
A completed (or cancelled) row stays until `expires_at`; expired rows are not
shown even before prune() deletes them. A dead row is the dead letter: kept
until it is retried or purged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from drainpool.queue.base import Done, Job, JobInfo, JobState
from drainpool.queue.records import make_info

# The values of jobs.state. CANCELLED: by cancel(), or a settle of a job whose cancel was asked.
WAITING, LEASED, DEAD, COMPLETED, CANCELLED = 0, 1, 2, 3, 4

# Version 5: a completed job's row stays, with its result, until expires_at (then prune()
# deletes it). Added to a version 4 file in place: every job is kept.
RECORD_COLUMNS = (
    "started_at REAL",
    "finished_at REAL",  # completed or cancelled; a dead job's is failed_at
    "expires_at REAL",
    "worker_host TEXT",
    "worker_pid INTEGER",
    "worker_pool TEXT",
    "result TEXT",
    "result_note TEXT",
    "released_key TEXT",  # the idempotency key a completed job held (free for a new job)
)
# Version 9 (issue 19): the job's own time limit, and a cancel asked while it was leased.
CANCEL_COLUMNS = (
    "timeout_seconds REAL",
    "cancel_requested_at REAL",
    "cancel_reason TEXT",
    "cancel_by TEXT",
)
# Only rows that have ended carry expires_at: a claim or an ack never writes this index
# with retention 0, and with retention once per job, at its ack.
EXPIRY_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs(expires_at) WHERE expires_at IS NOT NULL"
)
# An ack with retention: instead of the delete (ACK_SQL, sqlite.py) the row stays as the
# job's record. The acks of one lease token that share a result (most tasks return None:
# "null") are one statement over their ids (?6, a JSON list), reached by the primary key:
# a json_extract per field of each job cost more than the row's own update (issue 17).
# ?1 now, ?2 expires_at, ?3 the result JSON text or NULL, ?4 its note, ?5 the token.
_COMPLETE_SET = (
    f"UPDATE jobs SET state = {COMPLETED}, token = NULL, idem_key = NULL,"
    " released_key = idem_key, finished_at = ?1, expires_at = ?2"
)
COMPLETE_IDS_SQL = (
    f"{_COMPLETE_SET}, result = ?3, result_note = ?4"
    " WHERE token = ?5 AND id IN (SELECT value FROM json_each(?6))"
)
# Acks whose results differ: ?3 is a JSON list of [id, token, result JSON text or null, note].
COMPLETE_SQL = (
    f"{_COMPLETE_SET}, result = done.result, result_note = done.note"
    " FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token,"
    " json_extract(value, '$[2]') AS result, json_extract(value, '$[3]') AS note"
    " FROM json_each(?3)) AS done WHERE jobs.id = done.id AND jobs.token = done.token"
)
# A record as make_info takes it; the state is turned into a JobState by info_from_row.
RECORD_SQL = (
    "SELECT id, task, CAST(payload AS BLOB), COALESCE(idem_key, released_key), state, due_at,"
    " attempts, enqueued_at, started_at, COALESCE(finished_at, failed_at), worker_host,"
    " worker_pid, worker_pool, error, traceback, CAST(result AS BLOB), result_note,"
    " timeout_seconds, cancel_requested_at, cancel_reason, cancel_by, schedule, tick FROM jobs"
)
# Expired records are not shown, though prune() may not have deleted them yet.
LIVE_SQL = f"NOT (state IN ({COMPLETED}, {CANCELLED}) AND expires_at <= :now)"
STATE_SQL = {
    JobState.WAITING: f"state = {WAITING} AND due_at <= :now",
    JobState.DELAYED: f"state = {WAITING} AND due_at > :now",
    JobState.RUNNING: f"state = {LEASED}",
    JobState.DEAD: f"state = {DEAD}",
    JobState.COMPLETED: f"state = {COMPLETED}",
    JobState.CANCELLED: f"state = {CANCELLED}",
}


def read_job(conn: sqlite3.Connection, job_id: int, now: float) -> JobInfo | None:
    row = conn.execute(
        f"{RECORD_SQL} WHERE id = :id AND {LIVE_SQL}", {"id": job_id, "now": now}
    ).fetchone()
    return None if row is None else info_from_row(row, now)


def list_jobs(
    conn: sqlite3.Connection, state: JobState | None, task: str | None, limit: int, now: float
) -> list[JobInfo]:
    """Newest first: the primary key backwards, filtered (no index is kept for a listing)."""
    where = [LIVE_SQL]
    if state is not None:
        where.append(STATE_SQL[state])
    if task is not None:
        where.append("task = :task")
    sql = f"{RECORD_SQL} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :limit"
    rows = conn.execute(sql, {"now": now, "task": task, "limit": limit}).fetchall()
    return [info_from_row(row, now) for row in rows]


def prune_expired(conn: sqlite3.Connection, now: float, limit: int) -> int:
    """Delete up to `limit` expired records, oldest expiry first (one range of jobs_expiry)."""
    return conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE expires_at <= ?"
        " ORDER BY expires_at LIMIT ?)",
        (now, limit),
    ).rowcount


def info_from_row(row: tuple[Any, ...], now: float) -> JobInfo:
    (job_id, task, payload, key, state, due_at, attempts, enqueued_at, started_at, finished_at,
     host, pid, pool, error, traceback, result, note, timeout, cancel_at, cancel_reason,
     cancel_by, schedule, tick) = row  # fmt: skip
    if state == WAITING:
        shown = JobState.WAITING if due_at <= now else JobState.DELAYED
    else:
        shown = _STATES[state]
    return make_info(
        job_id=str(job_id),
        task=task,
        payload_text=payload,
        key=key,
        state=shown,
        attempts=attempts,
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        host=host,
        pid=pid,
        pool=pool,
        error=error,
        traceback=traceback,
        result_text=result,
        result_note=note,
        timeout=timeout,
        cancel_requested_at=cancel_at,
        cancel_reason=cancel_reason,
        cancelled_by=cancel_by,
        schedule=schedule,
        tick=tick,
    )


_STATES = {
    LEASED: JobState.RUNNING,
    DEAD: JobState.DEAD,
    COMPLETED: JobState.COMPLETED,
    CANCELLED: JobState.CANCELLED,
}


# A release or failure of a job whose cancel was asked while it was leased ends it as
# cancelled instead (?1: now, ?2: expires_at, ?3: the lease token, ?4: a JSON list of the
# ids leased with it); the settle's own UPDATE then skips such rows. One statement per
# token, not one per job: most settles have no cancel to find.
CANCEL_SETTLED_SQL = (
    f"UPDATE jobs SET state = {CANCELLED}, token = NULL, idem_key = NULL,"
    " released_key = idem_key, finished_at = ?1, expires_at = ?2"
    " WHERE token = ?3 AND id IN (SELECT value FROM json_each(?4))"
    f" AND state = {LEASED} AND cancel_requested_at IS NOT NULL"
)


def ids_by_token(jobs: Iterable[Job]) -> dict[str, list[int]]:
    """The ids of `jobs` under each lease token (the jobs of one claim share one)."""
    found: dict[str, list[int]] = {}
    for job in jobs:
        ids = found.get(job.token)
        if ids is None:
            found[job.token] = [int(job.id)]
        else:
            ids.append(int(job.id))
    return found


# Acks by (lease token, result JSON text): the result a whole group records.
AckGroups = dict[tuple[str, str | None], list[Job]]


def group_acks(acks: Sequence[Job | Done], keep_results: bool) -> tuple[AckGroups, list[Done]]:
    """The acks that record the same result (none, or "null": most tasks) by token; the rest.

    Without retention nothing is recorded, so every ack is in a group.
    """
    groups: AckGroups = {}
    singles: list[Done] = []
    for ack in acks:
        if not isinstance(ack, Done):
            job, result = ack, None
        elif not keep_results or (ack.result_json in (None, "null") and not ack.note):
            job, result = ack.job, ack.result_json if keep_results else None
        else:
            singles.append(ack)
            continue
        jobs = groups.get((job.token, result))
        if jobs is None:
            groups[job.token, result] = [job]
        else:
            jobs.append(job)
    return groups, singles
