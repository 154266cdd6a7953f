"""The PostgreSQL queue's statements, beside the indexes they rely on (postgres_schema).

A module of its own so that the queue's methods (postgres.py) read as what
they do. `{s}` stands for the quoted schema name; the queue fills it in once.
Every statement that changes a leased job is keyed on its id and lease token.
"""

from __future__ import annotations

from drainpool.queue.outcome_minutes import MINUTE
from drainpool.queue.postgres_records import NOW
from drainpool.queue.postgres_schema import COMPLETED, DEAD, LEASED, WAITING


# SQL text with {s} for the quoted schema name, {c} for the wake-up channel's name
# as a literal (postgres_wakeups) and {e} for the ended channel's (postgres_ended),
# all filled in once per queue. Every statement that makes a job ready or delayed
# notifies in its own transaction: a rolled-back enqueue wakes nobody. A notification's
# payload is "<due>\t<task>" (postgres_wakeups.announce).
def _announce(due: str, task: str) -> str:
    """The pg_notify call for one job: `due` is 0 for ready, else its epoch due time."""
    return f"pg_notify({{c}}, ({due})::text || chr(9) || {task})"


ANNOUNCE_DUE = "CASE WHEN {d} > {n} THEN {d} ELSE 0 END"
ENQUEUE = (
    "WITH ins AS (INSERT INTO {s}.jobs (task, payload, due_at, idem_key, enqueued_at,"
    f" timeout_seconds, meta) VALUES (%s, %s, {NOW} + %s, %s, {NOW}, %s, %s)"
    " ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL DO NOTHING"
    " RETURNING id, task, due_at, enqueued_at)"
    f" SELECT id, {_announce(ANNOUNCE_DUE.format(d='due_at', n='enqueued_at'), 'task')}"
    " FROM ins"
)
ENQUEUE_MANY = (
    "INSERT INTO {s}.jobs (task, payload, due_at, enqueued_at)"
    f" SELECT task, payload, {NOW}, {NOW} FROM unnest(%s::text[], %s::text[]) AS d(task, payload)"
)
# Ready now, each of the tasks %s (distinct names): after a bulk enqueue or a dead retry.
ANNOUNCE_READY = f"SELECT {_announce('0', 't')} FROM unnest(%s::text[]) AS d(t)"
# Released (delay NULL: ready) or retried after a backoff (the delay in seconds).
ANNOUNCE_CHANGES = (
    f"SELECT {_announce(f'CASE WHEN d.delay > 0 THEN {NOW} + d.delay ELSE 0 END', 'd.t')}"
    " FROM unnest(%s::text[], %s::float8[]) AS d(t, delay)"
)
# The ids of jobs a settle ended, one payload each of %s (postgres_ended), on channel {e}.
ANNOUNCE_ENDED = "SELECT pg_notify({e}, p) FROM unnest(%s::text[]) AS d(p)"
# Schedules: the tick's row moves from the expected tick (none: inserted) or not at all.
TICK_FIRST = (
    f"INSERT INTO {{s}}.schedule_ticks (name, tick, updated_at) VALUES (%s, %s, {NOW})"
    " ON CONFLICT (name) DO NOTHING"
)
TICK_NEXT = (
    f"UPDATE {{s}}.schedule_ticks SET tick = %s, updated_at = {NOW} WHERE name = %s AND tick = %s"
)
ENQUEUE_TICK = (
    "WITH ins AS (INSERT INTO {s}.jobs (task, payload, due_at, enqueued_at, schedule, tick)"
    f" VALUES (%s, %s, {NOW}, {NOW}, %s, %s) RETURNING id, task)"
    f" SELECT id, {_announce('0', 'task')} FROM ins"
)
NOTE_TICK_JOB = "UPDATE {s}.schedule_ticks SET job_id = %s WHERE name = %s"
# Seconds until the earliest waiting job of the tasks %s is due: one index seek per task.
NEXT_DUE = (
    f"SELECT min(head.due_at) - {NOW} FROM unnest(%s::text[]) AS t(task)"
    " CROSS JOIN LATERAL (SELECT due_at FROM {s}.jobs"
    f" WHERE state = {WAITING} AND task = t.task ORDER BY due_at LIMIT 1) AS head"
)
# Up to n due jobs of each task, each task's from the head of its index range (a
# LATERAL per task, so no sort of the whole range), then the n oldest of those.
CLAIM = (
    "WITH due AS (SELECT d.id, d.due_at FROM unnest(%(tasks)s::text[]) AS t(task)"
    " CROSS JOIN LATERAL (SELECT id, due_at FROM {s}.jobs"
    f" WHERE state < {DEAD} AND task = t.task AND due_at <= {NOW}"
    " ORDER BY due_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED) AS d"
    " ORDER BY d.due_at, d.id LIMIT %(n)s)"
    f" UPDATE {{s}}.jobs AS j SET state = {LEASED}, due_at = {NOW} + %(lease)s,"
    f" token = %(token)s, attempts = j.attempts + 1, started_at = COALESCE(j.started_at, {NOW}),"
    " worker_host = %(host)s, worker_pid = %(pid)s, worker_pool = %(pool)s"
    " FROM due WHERE j.id = due.id"
    " RETURNING j.id, j.task, j.payload, j.attempts, j.enqueued_at, due.due_at,"
    " j.timeout_seconds, j.cancel_requested_at, j.meta"
)
BURY_ONE = (
    f"UPDATE {{s}}.jobs SET state = {DEAD}, token = NULL, traceback = '', error = %s,"
    f" failed_at = {NOW} WHERE id = %s"
)
RENEW = (
    f"UPDATE {{s}}.jobs AS j SET due_at = {NOW} + %s"
    " FROM unnest(%s::bigint[], %s::text[]) AS d(id, token)"
    f" WHERE j.id = d.id AND j.token = d.token AND j.state = {LEASED}"
)
ACK_DELETE = (
    "DELETE FROM {s}.jobs AS j USING unnest(%s::bigint[], %s::text[]) AS d(id, token)"
    " WHERE j.id = d.id AND j.token = d.token"
)
COMPLETE = (
    f"UPDATE {{s}}.jobs AS j SET state = {COMPLETED}, token = NULL, released_key = j.idem_key,"
    f" idem_key = NULL, finished_at = {NOW}, expires_at = {NOW} + %s,"
    " result = d.result, result_note = d.note"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS d(id, token, result, note)"
    " WHERE j.id = d.id AND j.token = d.token"
)
# A release keeps its place (due at its enqueue time); a retry is due after its backoff
# (delay); a final failure is dead now. Guarded by token and state, as every change.
CHANGE = (
    "UPDATE {s}.jobs AS j SET state = d.state, attempts = d.attempts, token = NULL,"
    f" due_at = CASE WHEN d.delay IS NULL THEN LEAST(j.enqueued_at, {NOW})"
    f" ELSE {NOW} + d.delay END,"
    " error = COALESCE(d.error, j.error), traceback = COALESCE(d.traceback, j.traceback),"
    f" failed_at = CASE WHEN d.state = {DEAD} THEN {NOW} END"
    " FROM unnest(%s::bigint[], %s::text[], %s::smallint[], %s::float8[], %s::int[],"
    " %s::text[], %s::text[]) AS d(id, token, state, delay, attempts, error, traceback)"
    f" WHERE j.id = d.id AND j.token = d.token AND j.state = {LEASED}"
)
BUMP = (
    "INSERT INTO {s}.outcome_minutes (minute, outcome, shard, n)"
    f" SELECT (floor({NOW} / {MINUTE}) * {MINUTE})::bigint, outcome, %s, n"
    " FROM unnest(%s::text[], %s::bigint[]) AS d(outcome, n)"
    " ON CONFLICT (minute, outcome, shard) DO UPDATE SET n = {s}.outcome_minutes.n + excluded.n"
)
STATS = (
    f"SELECT count(*) FILTER (WHERE state = {WAITING} AND due_at <= {NOW}),"
    f" count(*) FILTER (WHERE state = {WAITING} AND due_at > {NOW}),"
    f" count(*) FILTER (WHERE state = {LEASED}),"
    f" min(due_at) FILTER (WHERE state = {WAITING}), {NOW},"
    f" (SELECT count(*) FROM {{s}}.jobs WHERE state = {DEAD})"
    f" FROM {{s}}.jobs WHERE state < {DEAD}"
)
# The task names of waiting and leased jobs: one index seek per name (a skip scan).
LIVE_TASKS = (
    f"WITH RECURSIVE t(task) AS (SELECT min(task) FROM {{s}}.jobs WHERE state < {DEAD}"
    f" UNION ALL SELECT (SELECT min(task) FROM {{s}}.jobs WHERE state < {DEAD} AND task > t.task)"
    " FROM t WHERE t.task IS NOT NULL) SELECT task FROM t WHERE task IS NOT NULL"
)
BURY = (
    f"UPDATE {{s}}.jobs SET state = {DEAD}, token = NULL, traceback = '', error = %s,"
    f" failed_at = {NOW} WHERE task = %s"
    f" AND (state = {WAITING} OR (state = {LEASED} AND due_at <= {NOW}))"
)
