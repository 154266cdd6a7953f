"""The PostgreSQL queue's tables: their DDL, their version, and upgrading them in place.

A module of its own because the schema is one concern with two callers: the
queue creates or upgrades it on first use, and `drainpool queue migrate` does
the same for operators who keep DDL rights away from the service (then the
service only reads the version and needs no CREATE privilege at all).

Everything lives in one PostgreSQL schema (`queue.schema`, default drainpool),
so the application's own tables never meet ours. `meta` holds the version; each
entry of MIGRATIONS brings the previous version to its own, inside one
transaction under an advisory lock, so two daemons starting at once never
both run it, and a failed upgrade leaves the old tables untouched.
"""

from __future__ import annotations

from typing import Any

from drainpool.queue.base import QueueError
from drainpool.queue.schemes import schema_name_problem

SCHEMA_VERSION = 3
DEFAULT_SCHEMA = "drainpool"

# The values of jobs.state, the same numbers as the SQLite backend's (sqlite_records).
WAITING, LEASED, DEAD, COMPLETED, CANCELLED = 0, 1, 2, 3, 4

# Version 1. {s} is the quoted schema name. Times are epoch seconds (float8) on the
# database's clock, so daemons on several hosts agree on every lease's end.
_VERSION_1 = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {s}.jobs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task text NOT NULL,
        payload text NOT NULL,
        state smallint NOT NULL DEFAULT 0,
        due_at float8 NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        token text,
        idem_key text,
        enqueued_at float8 NOT NULL,
        error text,
        traceback text,
        failed_at float8,
        started_at float8,
        finished_at float8,
        expires_at float8,
        worker_host text,
        worker_pid integer,
        worker_pool text,
        result text,
        result_note text,
        released_key text)""",
    # Waiting and leased jobs of a task by due time (then id: the order of a bulk
    # enqueue): a fetch reads the head of each task's range in index order, lapsed
    # leases included, with FOR UPDATE SKIP LOCKED, never sorting the whole range.
    "CREATE INDEX IF NOT EXISTS jobs_due ON {s}.jobs (task, due_at, id) WHERE state < 2",
    "CREATE INDEX IF NOT EXISTS jobs_dead ON {s}.jobs (failed_at) WHERE state = 2",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON {s}.jobs (idem_key) WHERE idem_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_expiry ON {s}.jobs (expires_at) WHERE expires_at IS NOT NULL",
    # One row per minute, outcome and shard: each queue object bumps its own shard
    # (picked at random), so daemons settling at once never wait on each other's row.
    "CREATE TABLE IF NOT EXISTS {s}.outcome_minutes (minute bigint NOT NULL,"
    " outcome text NOT NULL, shard smallint NOT NULL, n bigint NOT NULL,"
    " PRIMARY KEY (minute, outcome, shard))",
)
# Version 2: each job's metadata (Job.meta, JSON text), the schedule and tick that
# enqueued it, and one row per schedule holding its last enqueued tick, moved by
# compare-and-set in the transaction that inserts the tick's job (schedules).
_VERSION_2 = (
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS meta text",
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS schedule text",
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS tick float8",
    "CREATE TABLE IF NOT EXISTS {s}.schedule_ticks (name text PRIMARY KEY,"
    " tick float8 NOT NULL, job_id bigint, updated_at float8 NOT NULL)",
)
# Version 3 (issue 19): each job's own time limit, and a cancel asked while it was
# leased (when, why, by whom), as the SQLite backend's CANCEL_COLUMNS.
_VERSION_3 = (
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS timeout_seconds float8",
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS cancel_requested_at float8",
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS cancel_reason text",
    "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS cancel_by text",
)
# Version -> the statements that bring the version before it to this one.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _VERSION_1, 2: _VERSION_2, 3: _VERSION_3}


def check_schema_name(name: str) -> str:
    if (problem := schema_name_problem(name)) is not None:
        raise QueueError(f"queue.schema {problem}")
    return name


def quoted(name: str) -> str:
    return f'"{check_schema_name(name)}"'


def found_version(conn: Any, schema: str) -> int:
    """The version of the tables in `schema`: 0 when there are none yet."""
    (table,) = conn.execute("SELECT to_regclass(%s)", (f"{quoted(schema)}.meta",)).fetchone()
    if table is None:
        return 0
    row = conn.execute(f"SELECT value FROM {quoted(schema)}.meta WHERE key = 'version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: Any, schema: str) -> tuple[int, int]:
    """Create or upgrade the tables in `schema`, every job kept: (version found, version now).

    `conn` is an autocommit psycopg connection; the upgrade is one transaction.
    """
    with conn.transaction():
        # Two daemons (or a daemon and `queue migrate`) starting at once: one waits here.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"drainpool:{schema}",))
        found = found_version(conn, schema)
        if found > SCHEMA_VERSION:
            raise QueueError(too_new(schema, found))
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement.replace("{s}", quoted(schema)))
        if found < SCHEMA_VERSION:
            conn.execute(
                f"INSERT INTO {quoted(schema)}.meta VALUES ('version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
    return found, SCHEMA_VERSION


def too_new(schema: str, found: int) -> str:
    return (
        f"schema {schema!r} is at version {found}, newer than this drainpool's"
        f" {SCHEMA_VERSION}: upgrade drainpool, or use another queue.schema"
    )
