"""The Redis queue's wake-ups: a pub/sub connection of each pool's own (issue 21).

Every script that makes a job ready or delayed publishes once per task on
`{prefix}:wake:{task}` (`wake()` in the scripts' prelude, in
drainpool.queue.redis). A pool's waiter holds one connection subscribed to its
tasks' channels and blocks on it; the dispatcher fetches once per message.

Why pub/sub rather than a notification list read with BLPOP: a message
reaches every subscribed daemon, so with several daemons idle one enqueue
wakes each of them for one fetch (a list would wake one, perhaps a busy one,
and leave the others to the safety net); nothing piles up while no daemon
listens; and an idle subscribed connection costs Redis no command at all.
What pub/sub loses (a message sent while the connection was down) the
waiter makes up for with one wake-up when it is back, and the dispatcher's
safety-net fetch covers the rest. Idle, a pool sends one PING on this
connection every PING_SECONDS (to notice a frozen server; a vanished peer is
also noticed by TCP keepalive, which costs Redis no command), besides the
safety-net fetch itself.

Messages: '0' (ready jobs), a due time in epoch seconds (a delayed job), or
`cancel ID` (issue 19: the cancel of a leased job, so the daemon holding it
sets the job's stop event at once instead of at its next 50 ms cancel check).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import redis

from drainpool.queue.wakeups import ChannelWaiter, WaitMode

PING_SECONDS = 60.0  # a quiet connection is asked whether the server is still there
CANCEL_PREFIX = "cancel "  # a message naming a job whose cancel was asked

# ARGV[3..]: tasks. The earliest delayed job's due time, in ms from now ('' when none).
NEXT_DUE = r"""
local earliest
for i = 3, #ARGV do
  local head = redis.call('ZRANGE', delayed_key(ARGV[i]), 0, 0, 'WITHSCORES')
  if #head > 0 and (earliest == nil or tonumber(head[2]) < earliest) then
    earliest = tonumber(head[2])
  end
end
if earliest == nil then return '' end
return tostring(math.max(earliest - now_ms(), 0))
"""


def wake_channel(prefix: str, task: str) -> str:
    return f"{prefix}:wake:{task}"


class PubSubWaiter(ChannelWaiter):
    """One subscribed connection, built with the queue's own connection options."""

    armed_mode: WaitMode = "blocking read"

    def __init__(
        self, client: redis.Redis, prefix: str, tasks: Collection[str], where: str
    ) -> None:
        super().__init__(f"wake-up connection to {where}")
        self._options: dict[str, Any] = {
            **client.connection_pool.connection_kwargs,
            "health_check_interval": 0,  # our own PING, once per safety-net interval
        }
        self._connection_class = client.connection_pool.connection_class
        self._channels = [wake_channel(prefix, task) for task in dict.fromkeys(tasks)]
        self._connection: redis.connection.AbstractConnection | None = None
        self._ping_unanswered = False
        self._heard_at = time.monotonic()  # the last reply read on this connection

    def _arm(self) -> None:
        connection = self._connection_class(**self._options)
        try:
            connection.connect()
            connection.send_command("SUBSCRIBE", *self._channels)
            for _ in self._channels:
                connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        self._connection = connection
        self._ping_unanswered = False
        self._heard_at = time.monotonic()

    def _listen(self, timeout: float) -> bool:
        connection = self._connection
        assert connection is not None
        if not connection.can_read(timeout=0):  # nothing buffered: block on the socket
            sock = connection._sock  # redis-py keeps it private; select needs its fd
            if sock is None:
                raise ConnectionError("the connection was closed")
            if not self._interrupter.select([sock.fileno()], timeout):
                if time.monotonic() - self._heard_at >= PING_SECONDS:
                    self._ping(connection)
                return False
        woken = False
        while True:  # every message waiting: a burst of enqueues is one wake-up
            reply = connection.read_response()
            self._heard_at = time.monotonic()
            kind = reply[0] if isinstance(reply, list) and reply else None
            if kind == "message":
                data = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
                if data.startswith(CANCEL_PREFIX):  # not work: no fetch for it
                    self._cancel_heard(data[len(CANCEL_PREFIX) :])
                else:
                    woken = True
                    if float(data) > 0:
                        self._note_due(float(data))
            if kind == "pong":
                self._ping_unanswered = False
            if not connection.can_read(timeout=0):
                return woken

    def _ping(self, connection: redis.connection.AbstractConnection) -> None:
        """Quiet for PING_SECONDS: ask, unless the last question went unanswered (dead peer)."""
        if self._ping_unanswered:
            raise ConnectionError(f"no answer to PING in {PING_SECONDS:.0f} s")
        connection.send_command("PING")
        self._ping_unanswered = True
        self._heard_at = time.monotonic()

    def _disarm(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
