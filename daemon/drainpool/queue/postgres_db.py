"""Connections to the PostgreSQL queue: a small pool, one transaction per call, faults.

A module of its own because what can go wrong with the server is one concern
and the queue's semantics (daemon/drainpool/queue/postgres.py) are another:

- Pool: a few idle connections kept for reuse, and a new one made when none
  is idle (up to `pool_size` at once). Not psycopg_pool: during an outage its
  background reconnects back off exponentially (a 30 s outage could delay the
  recovery by as long again) and log a warning at each attempt; here each call
  tries one connection of its own, so the queue is back at the first call
  after the server is, and the daemon logs one line per change. Building a
  queue never connects, so `check-config` and a reload check a URL offline.
- Faults: a lost connection (restart, `pg_terminate_backend`, a network cut),
  a read-only server, a full disk, a statement timeout or a pool that cannot
  connect in time are QueueUnavailable, one line, never a secret. A call whose
  transaction failed *before* its commit was sent is tried again on another
  connection (the server rolled it back): after a restart the pool's idle
  connections are all dead, and each would otherwise cost the caller a round.
  A lock or statement timeout is not tried again: the connection is sound and
  another try would only wait as long again.
  A failure during the commit is not retried: it may have committed, and every
  settle is keyed on lease tokens, so the caller's retry is a no-op if so.
- Commits: producers' commits wait for the WAL flush (PostgreSQL's default).
  The daemon's do not (`durable_commits=False`: synchronous_commit off on its
  connections), as the SQLite backend's daemon connection uses synchronous=
  NORMAL: a crash of the server may lose its last few hundred milliseconds of
  acks and leases, which only makes jobs run again, never corrupts or loses
  one; an enqueue made through it still waits for the flush.
- Locks: a statement waits at most LOCK_TIMEOUT for a row lock that another
  session holds (an operator's `SELECT ... FOR UPDATE`, a long migration),
  unless the URL's options, the role or the database set a `lock_timeout` of
  their own. PostgreSQL's default is to wait for ever: a settle stuck behind
  such a lock held the pool's dispatcher (no fetch, no lease renewal) with
  nothing in health or the log. Now the statement fails as QueueUnavailable,
  health says so, and the settle is tried again until the lock goes. Fetches
  skip locked rows and never wait.
- Schema: created or upgraded at the first call (postgres_schema), unless the
  operator ran `drainpool queue migrate` and the version is already current,
  in which case no DDL is issued and no CREATE privilege is needed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from drainpool.queue.base import QueueError, QueueUnavailable

try:
    import psycopg
    import psycopg.conninfo
except ImportError as exc:  # the optional extra; settings show this at check-config
    raise QueueError(
        f"PostgreSQL queue URLs need the postgres extra: pip install 'drainpool[postgres]' ({exc})"
    ) from None

from drainpool.queue.postgres_schema import (
    SCHEMA_VERSION,
    check_schema_name,
    found_version,
    migrate,
    quoted,
    too_new,
)

T = TypeVar("T")
LOCK_TIMEOUT = "5s"  # see Locks in the module docstring
PREFIXES = ("postgresql://", "postgres://")
# Errors of the server or the link, not of a request: the caller waits and tries again.
_TRANSIENT = (
    psycopg.OperationalError,  # connection lost, admin shutdown, disk full, timeouts
    psycopg.InternalError,  # a read-only transaction (default_transaction_read_only)
    psycopg.InterfaceError,  # a connection already closed
)

# Statements the server cancelled after their time: the link is fine, the data was busy.
_TIMEOUTS = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)


def check_url(url: str, where: str) -> None:
    """Raise QueueError unless libpq accepts `url` (its options are passed through)."""
    if not url.startswith(PREFIXES):
        raise QueueError(f"not a PostgreSQL URL: {where} (want postgresql:// or postgres://)")
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise QueueError(f"invalid PostgreSQL URL {where}: {one_line(exc, url)}") from None


def one_line(exc: BaseException, url: str = "") -> str:
    """An error's message on one line, with the URL's password (if any) hidden."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        secret = urlsplit(url).password if url else None
    except ValueError:
        secret = None
    return text.replace(secret, "***") if secret else text


class Database:
    """A lazily opened pool on one PostgreSQL database and one schema in it."""

    def __init__(
        self,
        url: str,
        *,
        where: str,
        schema: str,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        create: bool = True,
        durable_commits: bool = True,
    ) -> None:
        self.url = url
        self.where = where  # redacted: the only form that reaches messages and logs
        self.schema = check_schema_name(schema)
        self.s = quoted(schema)  # for SQL text
        self.create = create  # False: never issue DDL (the operator migrates)
        self.durable_commits = durable_commits
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()  # guards the idle list
        self._slots = threading.BoundedSemaphore(pool_size)  # connections in use at once
        self._idle: list[psycopg.Connection[Any]] = []
        self._ready = False  # the schema was found at (or brought to) SCHEMA_VERSION
        self._closed = False

    @contextlib.contextmanager
    def _connection(self) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
        """(An idle connection, True) or (a new one, False); kept unless it broke or we closed."""
        if not self._slots.acquire(timeout=self._connect_timeout * 2):
            raise QueueUnavailable(f"{self.where}: all {self._pool_size} connections are busy")
        try:
            with self._lock:
                if self._closed:
                    raise QueueError(f"{self.where}: the queue is closed")
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = psycopg.connect(
                    self.url,
                    autocommit=True,  # transactions are explicit: conn.transaction()
                    connect_timeout=max(round(self._connect_timeout), 1),
                    application_name="drainpool",
                )
                if not self.durable_commits:
                    conn.execute("SET synchronous_commit = off")
                # Only where no one chose one (0, PostgreSQL's default, waits for ever).
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, false)"
                    " WHERE current_setting('lock_timeout') = '0'",
                    (LOCK_TIMEOUT,),
                )
            try:
                yield conn, reused
            finally:
                with self._lock:
                    keep = not (self._closed or conn.closed or conn.broken)
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()
        finally:
            self._slots.release()

    def run(
        self,
        fn: Callable[[Any], T],
        what: str,
        *,
        ensure: bool = True,
        durable: bool = False,
        idempotent: bool = False,
    ) -> T:
        """Run `fn(conn)` in one transaction; faults are QueueUnavailable (module docstring).

        `ensure`: first make sure the tables are there (once per process).
        `durable`: the commit waits for the WAL flush even without durable_commits.
        `idempotent`: doing it twice is the same as once (a settle or renew keyed on
        lease tokens, a claim): it is sent in pipeline mode, BEGIN, statements and
        COMMIT in one round trip, and tried again on a stale connection even when
        the failure showed only at the commit (the batch's outcome counts may then
        be added twice: a chart's bar, never a job).
        """
        for attempt in range(self._pool_size + 1):
            sent_commit = reused = False
            try:
                with self._connection() as (conn, reused):
                    if ensure and not self._ready:
                        self._ensure(conn)
                    pipeline = conn.pipeline() if idempotent else contextlib.nullcontext()
                    with pipeline, conn.transaction():
                        if durable and not self.durable_commits:
                            conn.execute("SET LOCAL synchronous_commit = on")
                        result = fn(conn)
                        sent_commit = not idempotent
                    return result
            except psycopg.errors.TransactionRollback:
                # A deadlock or serialization failure: the server rolled it all back.
                if attempt == self._pool_size:
                    raise
            except _TRANSIENT as exc:
                # A timeout (lock_timeout, statement_timeout) leaves the connection sound:
                # another try would wait as long again.
                broken = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
                broken = broken and not isinstance(exc, _TIMEOUTS)
                # Only a kept connection that went stale is worth another try: a new one
                # that fails means the server is away.
                if not (reused and broken) or sent_commit or attempt == self._pool_size:
                    raise QueueUnavailable(
                        f"{self.where}: cannot {what}: {one_line(exc)}"
                    ) from None
            except psycopg.errors.UndefinedTable as exc:
                self._ready = False  # the schema was dropped under us: created again next time
                raise QueueUnavailable(f"{self.where}: cannot {what}: {one_line(exc)}") from None
            except psycopg.Error as exc:
                raise QueueError(f"{self.where}: cannot {what}: {one_line(exc)}") from None
        raise AssertionError("unreachable: the last attempt raises")

    def on(self, conn: Any, fn: Callable[[Any], T], what: str) -> T:
        """Run `fn` on the caller's own connection, in its transaction (no commit here)."""
        if not isinstance(conn, psycopg.Connection):
            raise QueueError(
                f"connection= must be a psycopg (3) Connection, not {type(conn).__name__}"
            )
        if not self._ready:  # the tables exist before the insert (once per process)
            self.run(lambda _conn: None, "open the queue")
        try:
            return fn(conn)
        except psycopg.Error as exc:
            raise QueueError(f"{self.where}: cannot {what}: {one_line(exc)}") from None

    def _ensure(self, conn: Any) -> None:
        found = found_version(conn, self.schema)
        if found > SCHEMA_VERSION:
            raise QueueError(too_new(self.schema, found))
        if found < SCHEMA_VERSION:
            if not self.create:
                raise QueueError(
                    f"schema {self.schema!r} is at version {found}, not {SCHEMA_VERSION}:"
                    " run `drainpool queue migrate`"
                )
            try:
                migrate(conn, self.schema)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise QueueError(
                    f"{self.where}: cannot create the queue's tables in schema {self.schema!r}"
                    f" ({one_line(exc)}): run `drainpool queue migrate` as a role that may"
                ) from None
        self._ready = True

    def migrate(self) -> tuple[int, int]:
        """`drainpool queue migrate`: create or upgrade the tables; (version found, now)."""
        return self.run(lambda conn: migrate(conn, self.schema), "migrate", ensure=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
