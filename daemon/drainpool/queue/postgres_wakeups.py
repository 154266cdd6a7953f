"""The PostgreSQL queue's wake-ups: LISTEN on a connection of each pool's own (issue 22).

Every statement that makes a job ready or delayed calls pg_notify in its own
transaction (postgres_sql), so the notification is delivered when, and only
if, that transaction commits: an application's `enqueue(..., connection=conn)`
that rolls back wakes nobody. One channel per queue schema (its name), whose
payload is "<due>\\t<task>": due 0 for a job ready now, else its due time in
epoch seconds on the database's clock. A pool's waiter holds one autocommit
connection that LISTENs on the channel and blocks on its socket; the
dispatcher fetches once per burst of notifications of its tasks.

A cancel of a running job is announced on the same channel with the payload
"cancel\t<id>" (postgres_cancel): the waiter hands the id to the pool
(Waiter.hear_cancels), which stops the job if it holds it.

PostgreSQL drops notifications sent while a listener is not connected; the
waiter makes up for them with one wake-up when it re-arms, and the pool's
safety-net fetch covers the rest (drainpool.queue.wakeups). Idle, the waiter
sends `SELECT 1` every PING_SECONDS, to notice a server that went away
without closing the connection.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import psycopg

from drainpool.queue.postgres_cancel import CANCEL_KIND
from drainpool.queue.wakeups import ChannelWaiter, WaitMode

PING_SECONDS = 30.0  # a quiet connection is asked whether the server is still there


def channel_literal(schema: str) -> str:
    """The channel's name as an SQL string literal (schema names are plain identifiers)."""
    return f"'{schema}'"


def parse(payload: str) -> tuple[str, float]:
    """(task, due time or 0) from a notification's payload."""
    due, _, task = payload.partition("\t")
    try:
        return task, float(due)
    except ValueError:
        return task, 0.0


class ListenWaiter(ChannelWaiter):
    """One listening connection to the queue's database."""

    armed_mode: WaitMode = "blocking read"

    def __init__(
        self, url: str, schema: str, tasks: Collection[str], where: str, connect_timeout: float
    ) -> None:
        super().__init__(f"wake-up connection to {where}")
        self._url = url
        self._schema = schema
        self._tasks = frozenset(tasks)
        self._connect_timeout = connect_timeout
        self._connection: psycopg.Connection[Any] | None = None
        self._heard_at = time.monotonic()

    def _arm(self) -> None:
        connection = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(round(self._connect_timeout), 1),
            application_name="drainpool-wakeups",
        )
        try:
            connection.execute(f'LISTEN "{self._schema}"')
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._heard_at = time.monotonic()

    def _listen(self, timeout: float) -> bool:
        connection = self._connection
        assert connection is not None
        if not self._interrupter.select([connection.fileno()], timeout):
            if time.monotonic() - self._heard_at < PING_SECONDS:
                return False
            connection.execute("SELECT 1")  # raises when the server is gone
            self._heard_at = time.monotonic()
            return self._take(connection)  # any that arrived with the answer
        self._heard_at = time.monotonic()
        if connection.closed or connection.broken:
            raise ConnectionError("the connection was closed")
        return self._take(connection)

    def _take(self, connection: psycopg.Connection[Any]) -> bool:
        """Read every notification waiting: a burst of enqueues is one wake-up."""
        woken = False
        for notify in connection.notifies(timeout=0):
            kind, _, job_id = notify.payload.partition("\t")
            if kind == CANCEL_KIND:
                self._cancel_heard(job_id)
                continue
            task, due = parse(notify.payload)
            if task in self._tasks:
                woken = True
                if due > 0:
                    self._note_due(due)
        return woken

    def _disarm(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
