"""The PostgreSQL queue: one table of jobs, leases by FOR UPDATE SKIP LOCKED (issue 22).

Why this shape: a fetch locks the rows it claims and skips the rows another
daemon is claiming at that moment, so any number of daemons take different
jobs without a table lock or a retry. Every later change of a job (renew,
ack, release, failure) is one UPDATE or DELETE keyed on the job id *and* its
lease token: a holder whose lease lapsed, and whose job was claimed again,
can no longer touch it. A settle and the next fetch are one transaction, and
each kind of change of a batch is one statement (arrays unnested), so a batch
costs the same few round trips at one job or five hundred.

Times are the database's clock (statement_timestamp), so daemons on hosts
whose clocks differ still agree on when a lease ends. The columns and state
numbers are those of the SQLite backend (postgres_schema).

`enqueue(..., connection=conn)` inserts on the application's own psycopg
connection, inside its transaction: the job exists only if that commits.

Wake-ups: every enqueue, release and retry notifies in its own transaction,
and an idle pool LISTENs on a connection of its own (postgres_wakeups); so
does a cancel of a running job, which its daemon stops at once. A settle that
ends jobs notifies their ids on a second channel, which `wait()` listens on
(postgres_ended).

Longer than a module should be, as sqlite.py is: every method of the protocol
is here; the statements are in postgres_sql.py, the connections and faults in
postgres_db.py, the tables in postgres_schema.py, the records' reads in
postgres_records.py, the wake-ups' waiter in postgres_wakeups.py, the cancel of
one job in postgres_cancel.py, the wait for a job's end in postgres_ended.py.
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from drainpool.queue import postgres_cancel
from drainpool.queue import postgres_sql as sql
from drainpool.queue.base import (
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
    redact_url,
)
from drainpool.queue.outcome_minutes import (
    KEEP_SECONDS,
    MINUTE,
    as_minutes,
    check_outcomes,
    first_minute,
)
from drainpool.queue.postgres_db import Database, check_url
from drainpool.queue.postgres_ended import POLL_SECONDS, EndListeners, ended_channel, payloads
from drainpool.queue.postgres_records import NOW, db_now, list_jobs, prune_expired, read_job
from drainpool.queue.postgres_schema import DEAD, DEFAULT_SCHEMA, WAITING
from drainpool.queue.postgres_wakeups import ListenWaiter, channel_literal
from drainpool.queue.records import (
    RESULT_MAX_BYTES,
    RETENTION_SECONDS,
    as_done,
    backoff_pause,
    check_limit,
    check_retention,
    parse_state,
    result_of,
    wait_for,
)

BATCH = 5_000  # rows per statement of enqueue_many
SHARDS = 64  # outcome_minutes rows per minute and outcome, at most


class PostgresQueue:
    """The `Queue` protocol on PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        schema: str = DEFAULT_SCHEMA,
        retention_seconds: float = RETENTION_SECONDS,
        result_max_bytes: int = RESULT_MAX_BYTES,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        create_schema: bool = True,
        durable_commits: bool = True,
    ) -> None:
        check_retention(retention_seconds, result_max_bytes)
        self.where = redact_url(url)
        check_url(url, self.where)
        self.retry = retry or RetryPolicy()
        self.retention_seconds = retention_seconds
        self.result_max_bytes = result_max_bytes  # for the pool's encode_result
        self.worker = WorkerIdentity.here()  # recorded at a claim that names no other
        self._db = Database(
            url,
            where=self.where,
            schema=schema,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            create=create_schema,
            durable_commits=durable_commits,
        )
        self.schema = self._db.schema
        self._connect_timeout = connect_timeout
        channel = channel_literal(self.schema)
        self._channels = (self.schema, ended_channel(self.schema))  # wake-ups, ends
        ended = channel_literal(self._channels[1])
        self._sql = {
            name: text.replace("{s}", self._db.s).replace("{c}", channel).replace("{e}", ended)
            for name, text in {
                "enqueue": sql.ENQUEUE,
                "enqueue_many": sql.ENQUEUE_MANY,
                "claim": sql.CLAIM,
                "bury_one": sql.BURY_ONE,
                "renew": sql.RENEW,
                "ack_delete": sql.ACK_DELETE,
                "complete": sql.COMPLETE,
                "change": sql.CHANGE,
                "bump": sql.BUMP,
                "stats": sql.STATS,
                "live_tasks": sql.LIVE_TASKS,
                "bury": sql.BURY,
                "announce_ready": sql.ANNOUNCE_READY,
                "announce_changes": sql.ANNOUNCE_CHANGES,
                "tick_first": sql.TICK_FIRST,
                "tick_next": sql.TICK_NEXT,
                "enqueue_tick": sql.ENQUEUE_TICK,
                "note_tick_job": sql.NOTE_TICK_JOB,
                "next_due": sql.NEXT_DUE,
                "cancel_settled": postgres_cancel.SETTLED,
                "announce_ended": sql.ANNOUNCE_ENDED,
            }.items()
        }
        self._closing = threading.Event()  # wakes wait() at close
        self._ended = EndListeners(self._db.url, self._channels[1], connect_timeout)
        self._token_prefix = secrets.token_hex(6)
        self._shard = secrets.randbelow(SHARDS)  # this object's outcome_minutes rows
        self._token_counter = itertools.count()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        schema: str = DEFAULT_SCHEMA,
        retention_seconds: float = RETENTION_SECONDS,
        result_max_bytes: int = RESULT_MAX_BYTES,
        create_schema: bool = True,
        connect_timeout: float = 5.0,
        durable_commits: bool = True,
    ) -> PostgresQueue:
        """Open `postgresql://` or `postgres://`; libpq's query options pass through.

        Connects lazily: at the first call, which also creates the schema's tables.
        The daemon passes `durable_commits=False` (see postgres_db: Commits).
        """
        return cls(
            url,
            retry=retry,
            schema=schema,
            retention_seconds=retention_seconds,
            result_max_bytes=result_max_bytes,
            create_schema=create_schema,
            connect_timeout=connect_timeout,
            durable_commits=durable_commits,
        )

    def __repr__(self) -> str:
        return f"PostgresQueue({self.where!r}, schema={self.schema!r})"

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
        """Add a job; with `connection` (the application's psycopg one), in its transaction."""
        if not math.isfinite(delay):
            raise QueueError(f"delay must be a finite number of seconds, not {delay!r}")
        limit = check_timeout(timeout)
        body, meta_json = encode_payload(payload), encode_meta(meta) or None
        params = (task, body, max(delay, 0.0), key, limit, meta_json)

        def insert(conn: Any) -> str:
            row = conn.execute(self._sql["enqueue"], params).fetchone()
            while row is None:  # the key is taken: the live job's id (it may just have gone)
                row = (
                    conn.execute(
                        f"SELECT id FROM {self._db.s}.jobs WHERE idem_key = %s", (key,)
                    ).fetchone()
                    or conn.execute(self._sql["enqueue"], params).fetchone()
                )
            return str(row[0])

        if connection is not None:
            return self._db.on(connection, insert, "enqueue")
        return self._db.run(insert, "enqueue", durable=True)

    def enqueue_many(self, jobs: Iterable[tuple[str, Any]]) -> int:
        rows = [(task, encode_payload(payload)) for task, payload in jobs]

        def insert(conn: Any) -> int:
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                conn.execute(
                    self._sql["enqueue_many"], ([t for t, _ in chunk], [p for _, p in chunk])
                )
            conn.execute(self._sql["announce_ready"], (sorted({t for t, _ in rows}),))
            return len(rows)

        return self._db.run(insert, "enqueue", durable=True) if rows else 0

    def enqueue_tick(
        self,
        schedule: str,
        task: str,
        payload: Any = None,
        *,
        tick: float | None,
        expected: float | None,
    ) -> str | None:
        """The tick's row moves by compare-and-set in the transaction that inserts its job."""
        body = encode_payload(payload)

        def insert(conn: Any) -> str | None:
            if tick is not None:
                moved = (
                    conn.execute(self._sql["tick_first"], (schedule, tick))
                    if expected is None
                    else conn.execute(self._sql["tick_next"], (tick, schedule, expected))
                )
                if moved.rowcount != 1:
                    return None  # another daemon enqueued this tick (or a later one) first
            (job_id, _) = conn.execute(
                self._sql["enqueue_tick"], (task, body, schedule, tick)
            ).fetchone()
            if tick is not None:
                conn.execute(self._sql["note_tick_job"], (job_id, schedule))
            return str(job_id)

        return self._db.run(insert, "enqueue a tick", durable=True)

    def schedule_ticks(self) -> dict[str, float]:
        rows = self._db.run(
            lambda c: c.execute(f"SELECT name, tick FROM {self._db.s}.schedule_ticks").fetchall(),
            "read schedule ticks",
        )
        return {name: float(tick) for name, tick in rows}

    # -- wake-ups ---------------------------------------------------------

    def waiter(self, tasks: Collection[str]) -> ListenWaiter:
        """A pool's own listening connection (drainpool.queue.postgres_wakeups)."""
        return ListenWaiter(self._db.url, self.schema, tasks, self.where, self._connect_timeout)

    def next_due(self, tasks: Collection[str]) -> float | None:
        (due,) = self._db.run(
            lambda c: c.execute(self._sql["next_due"], (sorted(set(tasks)),)).fetchone(),
            "read due times",
        )
        return None if due is None else max(float(due), 0.0)

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
        claim = self._claimer(n, tasks, lease_seconds, worker)
        return self._db.run(claim, "fetch jobs", idempotent=True)

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
        """Settle and lease up to `n` more in one transaction: the dispatcher's hot path."""
        settle = self._settlement(acks, releases, failures, check_outcomes(outcomes))
        claim = self._claimer(n, tasks, lease_seconds, worker)

        def both(conn: Any) -> list[Job]:
            settle(conn)
            return claim(conn) if n > 0 and tasks else []

        jobs = self._db.run(both, "settle and fetch jobs", idempotent=True)
        log_dead(failures, self.retry)
        return jobs

    def _claimer(
        self, n: int, tasks: Collection[str], lease_seconds: float, worker: WorkerIdentity | None
    ) -> Callable[[Any], list[Job]]:
        who = worker or self.worker
        token = f"{self._token_prefix}{next(self._token_counter):x}"
        params = {
            "tasks": sorted(tasks),
            "n": n,
            "lease": float(lease_seconds),
            "token": token,
            "host": who.host,
            "pid": who.pid,
            "pool": who.pool,
        }

        def claim(conn: Any) -> list[Job]:
            rows = conn.execute(self._sql["claim"], params).fetchall()
            rows.sort(key=lambda row: (row[5], row[0]))  # RETURNING has no defined order
            jobs: list[Job] = []
            for job_id, task, body, attempts, enqueued_at, _, timeout, cancel_at, meta in rows:
                if cancel_at is not None:
                    # Cancelled while leased, and its daemon died before it stopped the job.
                    settled = (float(self.retention_seconds), [job_id], [token])
                    conn.execute(self._sql["cancel_settled"], settled)
                    continue
                max_attempts = self.retry.max_attempts
                payload, error = fetched_payload(job_id, task, body, attempts, max_attempts)
                if error:
                    conn.execute(self._sql["bury_one"], (error, job_id))
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
                        decode_meta(meta),
                    )
                )
            return jobs

        return claim

    def renew(self, jobs: Sequence[Job], lease_seconds: float) -> None:
        if not jobs:
            return
        ids, tokens = [int(j.id) for j in jobs], [j.token for j in jobs]
        self._db.run(
            lambda c: c.execute(self._sql["renew"], (float(lease_seconds), ids, tokens)),
            "renew leases",
            idempotent=True,
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
            settle = self._settlement(acks, releases, failures, counts)
            self._db.run(settle, "settle jobs", idempotent=True)
            log_dead(failures, self.retry)

    def _settlement(
        self,
        acks: Sequence[Job | Done],
        releases: Sequence[Job],
        failures: Sequence[Failure],
        counts: dict[str, int],
    ) -> Callable[[Any], None]:
        """The statements of one settle; decided once, so a retried transaction does the same."""
        dones = [as_done(a) for a in acks]
        # (id, token, state, delay or None for a release, attempts, error, traceback)
        changes: list[tuple[int, str, int, float | None, int, str | None, str | None]] = [
            (int(j.id), j.token, WAITING, None, j.attempt - 1, None, None) for j in releases
        ]
        for f in failures:
            j = f.job
            if f.retry and not self.retry.is_final(j.attempt):
                delay = self.retry.delay_after(j.attempt)
                changes.append(
                    (int(j.id), j.token, WAITING, delay, j.attempt, f.error, f.traceback)
                )
            else:
                changes.append((int(j.id), j.token, DEAD, 0.0, j.attempt, f.error, f.traceback))
        dead = sum(1 for c in changes if c[2] == DEAD)
        # Released and retried jobs are waiting again: (task, delay) for their notification.
        again = [(j.task, None) for j in releases] + [
            (f.job.task, c[3])
            for f, c in zip(failures, changes[len(releases) :], strict=True)
            if c[2] == WAITING
        ]
        bumps = sorted((name, n) for name, n in {**counts, "dead": dead}.items() if n)
        # Ended here (a cancel notifies from its own statement): named for wait() (postgres_ended).
        ended = payloads([int(d.job.id) for d in dones] + [c[0] for c in changes if c[2] == DEAD])

        def apply(conn: Any) -> None:
            if dones and not self.retention_seconds:
                conn.execute(
                    self._sql["ack_delete"],
                    ([int(d.job.id) for d in dones], [d.job.token for d in dones]),
                )
            elif dones:
                conn.execute(
                    self._sql["complete"],
                    (
                        float(self.retention_seconds),
                        [int(d.job.id) for d in dones],
                        [d.job.token for d in dones],
                        [d.result_json for d in dones],
                        [d.note for d in dones],
                    ),
                )
            if changes:
                # A job whose cancel was asked ends cancelled; CHANGE then skips it.
                conn.execute(
                    self._sql["cancel_settled"],
                    (
                        float(self.retention_seconds),
                        [c[0] for c in changes],
                        [c[1] for c in changes],
                    ),
                )
                conn.execute(
                    self._sql["change"], [list(column) for column in zip(*changes, strict=True)]
                )
            if again:
                conn.execute(
                    self._sql["announce_changes"], ([a[0] for a in again], [a[1] for a in again])
                )
            if ended:
                conn.execute(self._sql["announce_ended"], (ended,))
            if bumps:
                conn.execute(
                    self._sql["bump"],
                    (self._shard, [b[0] for b in bumps], [b[1] for b in bumps]),
                )

        return apply

    # -- stopping one job -------------------------------------------------

    def cancel(self, job_id: str, *, reason: str = "", by: str = "") -> CancelResult:
        numeric = _job_id(job_id)
        retention = float(self.retention_seconds)
        result = self._db.run(
            lambda c: postgres_cancel.cancel(
                c, self._db.s, self._channels, numeric, reason, by, retention
            ),
            "cancel a job",
        )
        if result is None:
            raise JobNotFound(job_id)
        return result

    def cancel_requests(self, jobs: Sequence[Job]) -> set[str]:
        if not jobs:
            return set()
        return self._db.run(
            lambda c: postgres_cancel.cancel_requests(c, self._db.s, jobs),
            "read cancel requests",
            idempotent=True,
        )

    # -- inspection and dead letters --------------------------------------

    def stats(self) -> QueueStats:
        row = self._db.run(lambda c: c.execute(self._sql["stats"]).fetchone(), "count jobs")
        ready, delayed, leased, earliest, now, dead = row
        return QueueStats(
            ready=ready,
            delayed=delayed,
            leased=leased,
            dead=dead,
            oldest_ready_age_seconds=None if not ready else max(now - earliest, 0.0),
        )

    def dead_list(self, limit: int = 100) -> list[DeadJob]:
        rows = self._db.run(
            lambda c: c.execute(
                "SELECT id, task, payload, attempts, error, traceback, failed_at"
                f" FROM {self._db.s}.jobs WHERE state = {DEAD}"
                " ORDER BY failed_at DESC, id DESC LIMIT %s",
                (limit,),
            ).fetchall(),
            "list dead jobs",
        )
        return [
            DeadJob(str(r[0]), r[1], loads_or_raw(r[2]), r[3], r[4] or "", r[5] or "", r[6] or 0)
            for r in rows
        ]

    def dead_retry(self, ids: Sequence[str] | None = None) -> int:
        retried = self._dead_update(
            f"UPDATE {self._db.s}.jobs SET state = {WAITING}, due_at = {NOW}, attempts = 0,"
            f" token = NULL, failed_at = NULL WHERE state = {DEAD}",
            ids,
        )
        if retried:
            self._db.run(
                lambda c: c.execute(
                    self._sql["announce_ready"],
                    ([row[0] for row in c.execute(self._sql["live_tasks"]).fetchall()],),
                ),
                "announce retried jobs",
            )
        return retried

    def dead_purge(self, ids: Sequence[str] | None = None) -> int:
        return self._dead_update(f"DELETE FROM {self._db.s}.jobs WHERE state = {DEAD}", ids)

    def _dead_update(self, sql: str, ids: Sequence[str] | None) -> int:
        if ids is None:
            return self._db.run(lambda c: int(c.execute(sql).rowcount), "change dead jobs")
        numeric = [_job_id(i) for i in ids]
        return self._db.run(
            lambda c: int(c.execute(f"{sql} AND id = ANY(%s::bigint[])", (numeric,)).rowcount),
            "change dead jobs",
        )

    def bury_unknown(self, known_tasks: Collection[str]) -> int:
        known = set(known_tasks)

        def apply(conn: Any) -> int:
            live = [row[0] for row in conn.execute(self._sql["live_tasks"]).fetchall()]
            buried = 0
            for task in (t for t in live if t not in known):
                error = f"task {task!r} is not configured"
                buried += int(conn.execute(self._sql["bury"], (error, task)).rowcount)
            return buried

        return self._db.run(apply, "bury jobs of unknown tasks")

    # -- job records ------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        try:
            numeric = int(job_id)
        except ValueError:
            return None  # no job of this queue has such an id
        if not -(2**63) <= numeric < 2**63:
            return None
        return self._db.run(lambda c: read_job(c, self._db.s, numeric), "read a job")

    def jobs(
        self, state: JobState | str | None = None, task: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        wanted = parse_state(state)
        check_limit(limit)
        return self._db.run(lambda c: list_jobs(c, self._db.s, wanted, task, limit), "list jobs")

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """Woken by the settle's notification (postgres_ended); reads again at least every
        POLL_SECONDS, and polls with a backoff when it cannot listen."""
        named = _spelled(job_id)  # as the notification's payload spells it
        with self._ended.listening() as listening:

            def block(left: float | None, rounds: int) -> None:
                if listening is None or listening.broken:
                    self._pause(left, rounds)
                    return
                listening.block(named, POLL_SECONDS if left is None else min(left, POLL_SECONDS))
                if self._closing.is_set():
                    raise QueueError(f"{self.where}: the queue was closed while waiting for a job")

            return wait_for(job_id, timeout, lambda: self.job(job_id), block)

    def _pause(self, left: float | None, rounds: int) -> None:
        if self._closing.wait(backoff_pause(left, rounds)):
            raise QueueError(f"{self.where}: the queue was closed while waiting for a job")

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        return result_of(self.wait(job_id, timeout))

    def prune(self, limit: int = 500) -> int:
        """Delete up to `limit` expired records, and outcome counts older than kept."""

        def delete(conn: Any) -> int:
            conn.execute(
                f"DELETE FROM {self._db.s}.outcome_minutes WHERE minute < %s",
                (int(db_now(conn) - KEEP_SECONDS) // MINUTE * MINUTE,),
            )
            return prune_expired(conn, self._db.s, limit)

        return self._db.run(delete, "prune records")

    def outcome_minutes(self, since: float) -> list[dict[str, Any]]:
        def read(conn: Any) -> tuple[int, float, list[tuple[int, str, int]]]:
            now = db_now(conn)
            first = first_minute(since, now)
            rows = conn.execute(
                f"SELECT minute, outcome, sum(n) FROM {self._db.s}.outcome_minutes"
                " WHERE minute >= %s GROUP BY minute, outcome",
                (first,),
            ).fetchall()
            return first, now, rows

        first, now, found = self._db.run(read, "read outcome counts")
        return as_minutes(first, now, found)

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema's tables now: (version found, version now)."""
        return self._db.migrate()

    def ping(self) -> None:
        self._db.run(lambda c: c.execute("SELECT 1").fetchone(), "ping")

    def discard(self) -> None:
        """Nothing to undo: a queue built only to check its URL never connected."""
        self.close()

    def close(self) -> None:
        self._closing.set()
        self._ended.close()
        self._db.close()


def _spelled(raw: str) -> str:
    """A job id as the settle's notification writes it; a non-number is left (no such job)."""
    try:
        return str(int(raw))
    except ValueError:
        return raw


def _job_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise QueueError(f"not a job id of this queue: {raw!r}") from None
