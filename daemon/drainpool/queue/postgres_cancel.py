"""Cancelling one job on the PostgreSQL queue (issue 19): the statements and the decision.

A module of its own: postgres.py is past its length, and a cancel is one
concern. The row records the cancel (`cancel_requested_at`, `cancel_reason`,
`cancel_by`, schema version 3). A waiting or delayed job is cancelled at once;
a leased one is only flagged, and its daemon learns it from `cancel_requests`.
The settle that follows (a release or a failure) ends a flagged job cancelled
(SETTLED, run before the settle's own UPDATE, which then skips the row); an ack
that comes first completes it. A flagged job whose lease lapsed (its daemon
died) is ended cancelled by the next claim instead of being delivered.

Notifications, sent at commit: a flag goes on the wake-up channel with the
payload "cancel\t<id>" (postgres_wakeups), so the daemon holding the job sets
its stop event at once, not at the job watch's next read (which stays the
safety net); a job that ends cancelled, at once or at its settle, is named on
the ended channel for wait() (postgres_ended).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drainpool.queue.base import CancelEffect, CancelResult, Job
from drainpool.queue.postgres_records import LIVE_SQL, NOW, db_now, read_job
from drainpool.queue.postgres_schema import CANCELLED, LEASED, WAITING

CANCEL_KIND = "cancel"  # the first field of a cancel's payload on the wake-up channel
# {s}: the quoted schema name, {e}: the ended channel as a literal. A flagged leased
# job, keyed on id and token, ends cancelled (%s: retention seconds, ids, tokens) and
# is named on the ended channel; other rows are left to the settle.
SETTLED = (
    f"WITH ended AS (UPDATE {{s}}.jobs AS j SET state = {CANCELLED}, token = NULL,"
    f" idem_key = NULL, released_key = j.idem_key, finished_at = {NOW}, expires_at = {NOW} + %s"
    " FROM unnest(%s::bigint[], %s::text[]) AS d(id, token)"
    f" WHERE j.id = d.id AND j.token = d.token AND j.state = {LEASED}"
    " AND j.cancel_requested_at IS NOT NULL RETURNING j.id)"
    " SELECT pg_notify({e}, id::text) FROM ended"
)
_NOTIFY = "SELECT pg_notify(%s, %s)"
_LOCK = (
    f"SELECT state, cancel_requested_at FROM {{s}}.jobs WHERE id = %(id)s AND {LIVE_SQL} FOR UPDATE"
)
_CANCEL_NOW = (
    f"UPDATE {{s}}.jobs SET state = {CANCELLED}, token = NULL, idem_key = NULL,"
    f" released_key = idem_key, finished_at = {NOW}, expires_at = {NOW} + %s,"
    f" cancel_requested_at = {NOW}, cancel_reason = %s, cancel_by = %s WHERE id = %s"
)
_FLAG = (
    f"UPDATE {{s}}.jobs SET cancel_requested_at = {NOW}, cancel_reason = %s, cancel_by = %s"
    " WHERE id = %s"
)
_REQUESTED = (
    "SELECT id FROM {s}.jobs WHERE id = ANY(%s::bigint[]) AND cancel_requested_at IS NOT NULL"
)


def cancel(
    conn: Any,
    schema: str,
    channels: tuple[str, str],
    job_id: int,
    reason: str,
    by: str,
    retention: float,
) -> CancelResult | None:
    """Decide and record one cancel in the caller's transaction; None for no such job.

    `channels`: the wake-up and the ended channel's names (module docstring).
    """
    wakeups, ended = channels
    now = db_now(conn)
    row = conn.execute(_LOCK.replace("{s}", schema), {"id": job_id, "now": now}).fetchone()
    if row is None:
        return None
    state, asked = row
    if state == WAITING:
        conn.execute(_CANCEL_NOW.replace("{s}", schema), (retention, reason, by, job_id))
        conn.execute(_NOTIFY, (ended, str(job_id)))
        effect = CancelEffect.CANCELLED
    elif state != LEASED:
        effect = CancelEffect.ENDED
    elif asked is not None:
        effect = CancelEffect.ALREADY_REQUESTED
    else:
        conn.execute(_FLAG.replace("{s}", schema), (reason, by, job_id))
        conn.execute(_NOTIFY, (wakeups, f"{CANCEL_KIND}\t{job_id}"))
        effect = CancelEffect.REQUESTED
    # As of the start of this transaction: with retention 0 a record that ends now
    # expires now, and the answer must still show it.
    info = read_job(conn, schema, job_id, now=now - 1e-3)
    return None if info is None else CancelResult(effect, info)


def cancel_requests(conn: Any, schema: str, jobs: Sequence[Job]) -> set[str]:
    """One primary-key read over the held ids."""
    rows = conn.execute(_REQUESTED.replace("{s}", schema), ([int(j.id) for j in jobs],))
    return {str(row[0]) for row in rows.fetchall()}
