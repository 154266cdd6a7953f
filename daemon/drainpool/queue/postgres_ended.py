"""Waiting for one job's end on PostgreSQL: a LISTEN woken by the settle's NOTIFY (issue 22).

Every statement that ends jobs (a completion, a final failure, a cancel)
notifies the queue's "ended" channel (`<schema>.ended`) in its own
transaction, with the comma-separated ids of the jobs it ended: a waiter
learns of the end when, and only if, it is committed. One notification per
settle, not per job, so the daemon's hot path gains one statement in its
pipeline and no round trip. Jobs buried by a fetch or by `bury_unknown` do not
notify: a waiter sees them at its next safety read.

`wait()` borrows a listening connection of its own (never one of the queue's
pool: a LISTEN belongs to a session), LISTENs, and only then reads the record,
so an end between the read and the wait is not missed; it then blocks on the
connection's socket until a notification names its job, reading the record
again at least every POLL_SECONDS (the safety net for a notification lost
with a connection). After the wait the connection UNLISTENs before it is kept
for the next one: a listener nobody reads holds back the server's
notification queue. When no listening connection can be had (or it breaks),
the wait falls back to polling with the backoff it always had.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from drainpool.queue.wakeups import Interrupter

POLL_SECONDS = 1.0  # a waiter reads its record at least this often
KEEP_IDLE = 2  # listening connections kept for the next waits
IDS_PER_NOTIFY = 400  # 19-digit ids and commas: under the 8000-byte payload limit


def ended_channel(schema: str) -> str:
    """The channel's name (schema names are plain identifiers: no quote to escape)."""
    return f"{schema}.ended"


def payloads(ids: list[int]) -> list[str]:
    """The notification payloads that name `ids`, each under PostgreSQL's size limit."""
    return [
        ",".join(map(str, ids[start : start + IDS_PER_NOTIFY]))
        for start in range(0, len(ids), IDS_PER_NOTIFY)
    ]


class Listening:
    """One wait's listening connection: `block` returns when its job may have ended."""

    def __init__(self, conn: psycopg.Connection[Any], interrupter: Interrupter) -> None:
        self.conn = conn
        self.broken = False
        self._interrupter = interrupter

    def block(self, job_id: str, seconds: float) -> None:
        """Up to `seconds`: until a notification names `job_id`, the queue closes, or a fault."""
        deadline = time.monotonic() + seconds
        while not self.broken:
            left = deadline - time.monotonic()
            if left <= 0 or not self._interrupter.select([self.conn.fileno()], left):
                return  # time is up, or the queue is closing
            try:
                heard = [n.payload for n in self.conn.notifies(timeout=0)]
            except (psycopg.Error, OSError):
                self.broken = True  # the caller reads again, then polls
                return
            if any(job_id in payload.split(",") for payload in heard):
                return


class EndListeners:
    """The listening connections of one queue object's waits; closed with the queue."""

    def __init__(self, url: str, channel: str, connect_timeout: float) -> None:
        self._url = url
        self._channel = channel
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._interrupter = Interrupter()  # wakes every wait in progress at close
        self._closed = False

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(round(self._connect_timeout), 1),
            application_name="drainpool-wait",
        )

    @contextlib.contextmanager
    def listening(self) -> Iterator[Listening | None]:
        """A connection that LISTENs on the channel, or None when none can be had now."""
        with self._lock:
            conn = None if self._closed or not self._idle else self._idle.pop()
            closed = self._closed
        listening = None
        if not closed:
            try:
                conn = conn or self._connect()
                conn.execute(f'LISTEN "{self._channel}"')
                listening = Listening(conn, self._interrupter)
            except (psycopg.Error, OSError):
                if conn is not None:
                    conn.close()
                conn = None
        try:
            yield listening
        finally:
            if conn is not None:
                self._put_back(conn, listening is not None and not listening.broken)

    def _put_back(self, conn: psycopg.Connection[Any], healthy: bool) -> None:
        if healthy:
            try:
                conn.execute("UNLISTEN *")
                for _ in conn.notifies(timeout=0):  # heard before the UNLISTEN: not ours now
                    pass
            except (psycopg.Error, OSError):
                healthy = False
        with self._lock:
            keep = healthy and not self._closed and len(self._idle) < KEEP_IDLE
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        self._interrupter.interrupt()
        for conn in idle:
            conn.close()
        self._interrupter.release()  # a wait still in select sees it closed, and returns
