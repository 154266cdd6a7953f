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

The same connection listens on the pool's push channel (drainpool.queue.redis_push):
a job leased to the pool by its enqueue, handed over through `Waiter.hear_pushes`
on the waiting thread, with no fetch and no wake-up.

redis-py opens the connection (TCP, unix socket or TLS, AUTH, SELECT) and
closes it; once it is subscribed, our own reader (drainpool.queue.resp) reads
it: each push is on the path from its enqueue to its job's start, and
redis-py's read of one cost about 90 µs more there (bench/RESULTS.md, session 31).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from typing import Any

import redis

from drainpool.queue.base import Failure, Job, loads
from drainpool.queue.redis_push import (
    BACKSTOP_SECONDS,
    FULL_ROUND_EVERY,
    IdleAsk,
    IdleMemory,
    PushOwner,
    job_from_row,
    push_channel,
)
from drainpool.queue.resp import RespError, RespReader
from drainpool.queue.wakeups import ChannelWaiter, WaitMode

PING_SECONDS = 60.0  # a quiet connection is asked whether the server is still there
CANCEL = b"cancel "  # a message naming a job whose cancel was asked
DEFAULT_TIMEOUT = 5.0  # for a reply at arming and closing when the queue set no socket_timeout

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
    """One subscribed connection, built with the queue's own connection options.

    It also listens on the pool's push channel (drainpool.queue.redis_push),
    under a push id that is new at each subscription.
    """

    armed_mode: WaitMode = "blocking read"
    # Only the dispatcher fetches: each fetch tells the registration what the pool holds
    # (IdleMemory, one thread's). An idle pool is pushed its jobs instead (hear_pushes).
    fetch_anywhere = False

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        tasks: Collection[str],
        where: str,
        *,
        owner: PushOwner,
    ) -> None:
        super().__init__(f"wake-up connection to {where}")
        self._options: dict[str, Any] = {
            **client.connection_pool.connection_kwargs,
            "health_check_interval": 0,  # our own PING, once per safety-net interval
        }
        self._connection_class = client.connection_pool.connection_class
        self._prefix = prefix
        self._tasks = list(dict.fromkeys(tasks))
        self._channels = [wake_channel(prefix, task) for task in self._tasks]
        self._timeout: float | None = self._options.get("socket_timeout")
        self._connection: redis.connection.AbstractConnection | None = None
        self._reader: RespReader | None = None  # reads the connection once subscribed
        self._backlog: list[Any] = []  # replies read with the subscription's confirmations
        self._ping_unanswered = False
        self._heard_at = time.monotonic()  # the last reply read on this connection
        self._owner = owner
        # (push id of this subscription, pushes handed over): one tuple, read by fetches.
        self._push = ("", 0)
        self._push_channel = b""
        self._refusing = False  # the pool refused a push (it drains): registered no more
        self._safety_net = 0.0  # the listener's wait: an idle round at least this often
        self._idle = IdleMemory()  # read and written by the fetching thread only

    def wait(self, timeout: float) -> bool:
        self._safety_net = timeout
        return super().wait(timeout)

    @property
    def push_id(self) -> str:
        """The push id of this subscription; "" while no push can reach the pool."""
        return self._push[0] if self._pushable() else ""

    def _pushable(self) -> bool:
        """Subscribed, and not refusing: a push can reach the pool."""
        return self._armed and not self._refusing and not self._interrupter.closed.is_set()

    def idle_ask(self, n: int) -> IdleAsk:
        """What a fetch of `n` for our tasks tells its script about the registration."""
        push_id, heard = self._push  # one read: the listener's thread replaces it
        if not self._pushable():
            return IdleAsk()
        # Longer than the longest gap between full rounds, which move it on.
        backstop = max(BACKSTOP_SECONDS, 2 * FULL_ROUND_EVERY * self._safety_net)
        return self._idle.ask(push_id, n, heard, int(backstop * 1000))

    def idle_answer(self, ask: IdleAsk, outcome: str) -> None:
        self._idle.answer(ask, outcome)

    def _arm(self) -> None:
        push_id = secrets.token_hex(8)
        channel = push_channel(self._prefix, push_id)
        connection = self._connection_class(**self._options)
        try:
            connection.connect()  # redis-py's: TCP, unix socket or TLS, AUTH, SELECT, name
            sock = connection._sock  # redis-py keeps it private; our reader reads it from here
            if sock is None:
                raise ConnectionError("the connection was closed")
            reader = RespReader(sock, self._timeout)
            reader.send("SUBSCRIBE", *self._channels, channel)
            confirmed, backlog = 0, []
            deadline = time.monotonic() + (self._timeout or DEFAULT_TIMEOUT)
            while confirmed < len(self._channels) + 1:
                for reply in reader.read_until(deadline):
                    _check(reply)
                    if confirmed <= len(self._channels) and _kind(reply) == b"subscribe":
                        confirmed += 1
                    else:  # published just after the subscription took: read by _listen
                        backlog.append(reply)
        except BaseException:
            connection.disconnect()
            raise
        self._connection, self._reader, self._backlog = connection, reader, backlog
        self._push_channel, self._push = channel.encode(), (push_id, 0)
        self._ping_unanswered = False
        self._heard_at = time.monotonic()

    def _listen(self, timeout: float) -> bool:
        reader = self._reader
        assert reader is not None
        held = self._backlog or reader.buffered()  # replies a select would not announce
        if not held and not self._interrupter.select([reader.fileno()], timeout):
            if time.monotonic() - self._heard_at >= PING_SECONDS:
                self._ping(reader)
            return False
        replies = reader.read()  # every reply waiting: a burst of enqueues is one wake-up
        if self._backlog:
            replies, self._backlog = self._backlog + replies, []
        if not replies:
            return False  # half a reply so far: the rest wakes the next wait
        self._heard_at = time.monotonic()
        woken = False
        pushed: list[bytes] = []
        for reply in replies:
            kind = _kind(reply)
            if kind == b"message":
                channel, data = reply[1], reply[2]
                if channel == self._push_channel:
                    pushed.append(data)
                elif data.startswith(CANCEL):  # not work: no fetch for it
                    self._cancel_heard(data[len(CANCEL) :].decode())
                else:
                    woken = True
                    if float(data) > 0:
                        self._note_due(float(data))
            elif kind == b"pong":
                self._ping_unanswered = False
            else:
                _check(reply)
        if pushed:
            self._hand_pushed(pushed)
        return woken

    def _hand_pushed(self, messages: list[bytes]) -> None:
        """Pushed rows to the pool (counted as heard once handed: a fetch that counts them
        too registers a slot fewer, never one more); refused ones go back to the queue."""
        jobs, bad = _decode_pushed(messages)
        if bad:
            self._owner.settle(failures=bad)
        take = self._take_pushed
        taken = bool(jobs) and not self._refusing and take is not None and take(jobs)
        push_id, heard = self._push
        self._push = (push_id, heard + len(messages))
        if jobs and not taken:
            self._give_back(jobs)

    def _give_back(self, jobs: list[Job]) -> None:
        """The pool takes no more jobs (it drains): release them, and register no more."""
        self._refuse_pushes()
        self._owner.settle(releases=jobs)

    def _refuse_pushes(self) -> None:
        """Once: remove the registration, so no enqueue pushes to this pool any more."""
        if not self._refusing:
            self._refusing = True
            self._owner.forget_idle(self._push[0], self._tasks)

    def _closing(self) -> None:
        """No more pushes once the registration is gone; those on the wire go back.

        A PING after the removal: its answer comes after every push published before
        the removal, on this connection, so reading up to it finds them all.
        """
        reader = self._reader
        self._refuse_pushes()
        if reader is None:
            return
        reader.send("PING")
        pongs = 2 if self._ping_unanswered else 1  # ours, and a safety PING's on the way
        pushed: list[bytes] = []
        replies, self._backlog = self._backlog, []
        while True:
            for reply in replies:
                kind = _kind(reply)
                if kind == b"pong":
                    pongs -= 1
                if kind == b"message" and reply[1] == self._push_channel:
                    pushed.append(reply[2])
            if pongs <= 0:
                break
            replies = reader.read_until(time.monotonic() + (self._timeout or DEFAULT_TIMEOUT))
        jobs, bad = _decode_pushed(pushed)
        if jobs or bad:
            self._owner.settle(releases=jobs, failures=bad)

    def _ping(self, reader: RespReader) -> None:
        """Quiet for PING_SECONDS: ask, unless the last question went unanswered (dead peer)."""
        if self._ping_unanswered:
            raise ConnectionError(f"no answer to PING in {PING_SECONDS:.0f} s")
        reader.send("PING")
        self._ping_unanswered = True
        self._heard_at = time.monotonic()

    def _disarm(self) -> None:
        connection, self._connection, self._reader = self._connection, None, None
        self._backlog = []
        if connection is not None:
            connection.disconnect()


def _kind(reply: Any) -> bytes | None:
    """The first element of a pub/sub reply (b"message", b"subscribe", b"pong")."""
    return reply[0] if isinstance(reply, list) and reply else None


def _check(reply: Any) -> None:
    """An error reply (a refused SUBSCRIBE: an ACL without the channel) breaks the channel."""
    if isinstance(reply, RespError):
        raise ConnectionError(f"Redis answered: {reply}")


def _decode_pushed(messages: list[bytes]) -> tuple[list[Job], list[Failure]]:
    """Pushed rows (the fetch's row and the lease token, as JSON) as jobs, and those whose
    payload cannot be decoded, as failures to dead-letter (as the fetch does)."""
    jobs: list[Job] = []
    bad: list[Failure] = []
    for message in messages:
        *row, token = loads(message.decode())  # json.loads, less its Python layers
        job, error = job_from_row(row, token)
        if error:
            bad.append(Failure(job, error, retry=False))
        else:
            jobs.append(job)
    return jobs, bad
