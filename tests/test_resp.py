"""The wake-up connection's own RESP reader (drainpool.queue.resp) against a real redis-server.

Plain TCP, TLS with a password, and a unix socket: whatever redis-py's
connection opens, the reader reads what Redis sends after SUBSCRIBE, whole or
in pieces (a message larger than one recv, many messages in one recv). A
queue's waiter then gets a large pushed job intact over TLS.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from drainpool.queue.base import Job
from drainpool.queue.redis import RedisQueue
from drainpool.queue.resp import CHUNK, RespError, RespReader

from tests.support.redis_server import RedisServer, redis_servers
from tests.support.waiting import wait_until

PROMPT = 10.0
SECRET = "resp-pw-5e1d"
Start = Callable[..., RedisServer]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    with redis_servers(tmp_path) as starting:
        yield starting


def served(start: Start, kind: str) -> tuple[RedisServer, str]:
    """A server reached over `kind`, and the queue URL for it (the password given apart)."""
    if kind == "tls":
        server = start(tls=True, password=SECRET)
        return server, server.url
    if kind == "unix":
        server = start(unixsocket=True, password=SECRET)
        return server, f"unix://{server.socket_path}?db=0"
    server = start(password=SECRET)
    return server, server.url


def subscribed(url: str, *channels: str) -> tuple[Any, RespReader]:
    """A connection opened by redis-py as the waiter opens one, subscribed through the reader."""
    client = redis.Redis.from_url(url, password=SECRET, protocol=2, socket_timeout=5.0)
    connection = client.connection_pool.make_connection()
    connection.connect()
    reader = RespReader(connection._sock, 5.0)
    reader.send("SUBSCRIBE", *channels)
    replies = read(reader, len(channels))
    assert replies == [[b"subscribe", c.encode(), n + 1] for n, c in enumerate(channels)]
    return connection, reader


def read(reader: RespReader, n: int) -> list[Any]:
    """`n` replies, waiting on the socket as the waiter does (select, then one read)."""
    replies: list[Any] = []
    deadline = time.monotonic() + PROMPT
    while len(replies) < n:
        assert time.monotonic() < deadline, f"{len(replies)} of {n} replies read"
        if not reader.buffered():
            select.select([reader.fileno()], [], [], 0.5)
        replies += reader.read()
    assert len(replies) == n
    return replies


@pytest.mark.parametrize("kind", ["tcp", "tls", "unix"])
def test_messages_come_whole_large_ones_over_several_reads_many_in_one(
    start: Start, kind: str
) -> None:
    _, url = served(start, kind)
    connection, reader = subscribed(url, "a", "b")
    publisher = redis.Redis.from_url(url, password=SECRET)
    try:
        large = os.urandom(3 * CHUNK + 17) + b"\r\n$5\r\n*1\r\n"  # RESP-like bytes inside
        sent = [(b"a", b"0"), (b"b", b""), (b"a", large), (b"b", b"cancel 12")]
        for channel, data in sent:
            publisher.publish(channel, data)
        assert read(reader, len(sent)) == [[b"message", c, d] for c, d in sent]
        with publisher.pipeline(transaction=False) as burst:  # one write: many replies per recv
            for n in range(300):
                burst.publish("a", str(n))
            burst.execute()
        assert read(reader, 300) == [[b"message", b"a", str(n).encode()] for n in range(300)]
        reader.send("PING")
        assert read(reader, 1) == [[b"pong", b""]]
        reader.send("GET", "x")  # not allowed while subscribed: an error reply, not a raise
        (error,) = read(reader, 1)
        assert isinstance(error, RespError) and "GET" in str(error).upper()
    finally:
        publisher.close()
        connection.disconnect()


def test_a_killed_connection_reads_as_closed(start: Start) -> None:
    server, url = served(start, "tcp")
    connection, reader = subscribed(url, "a")
    admin = redis.Redis.from_url(url, password=SECRET)
    try:
        assert admin.client_kill_filter(_type="pubsub") == 1
        select.select([reader.fileno()], [], [], PROMPT)
        with pytest.raises(ConnectionError):
            reader.read()
    finally:
        admin.close()
        connection.disconnect()
    assert server.answers()


def test_replies_split_at_every_byte_parse_as_when_whole() -> None:
    """Every RESP2 kind, and a RESP3 push, cut after each byte; nothing is lost or doubled."""
    stream = (
        b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$4\r\nab\r\n\r\n"
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        b"*3\r\n:-1\r\n$-1\r\n*-1\r\n"
        b"*2\r\n*1\r\n+OK\r\n-ERR no\r\n"
        b">3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$1\r\n7\r\n"
    )
    whole = [
        [b"message", b"a", b"ab\r\n"],
        [b"pong", b""],
        [-1, None, None],
        [[b"OK"], "ERR no"],
        [b"message", b"b", b"7"],
    ]
    ours, theirs = socket.socketpair()
    try:
        reader = RespReader(ours, 5.0)
        replies: list[Any] = []
        for n in range(len(stream)):
            theirs.sendall(stream[n : n + 1])
            select.select([reader.fileno()], [], [], PROMPT)
            replies += reader.read()
        assert reader.read() == []  # nothing left over, and nothing to read: no raise
    finally:
        ours.close()
        theirs.close()
    shown = [[str(x) if isinstance(x, RespError) else x for x in r] for r in replies]
    assert shown == whole


def test_a_large_job_is_pushed_intact_over_tls(start: Start) -> None:
    """The push path end to end through the reader: a payload of many TLS records."""
    server = start(tls=True, password=SECRET)
    queue = RedisQueue.from_url(server.url, password=SECRET, prefix="resp")
    waiter = queue.waiter(["t"])
    jobs: list[Job] = []
    waiter.hear_pushes(lambda pushed: jobs.extend(pushed) is None)
    try:
        assert waiter.wait(5.0)  # armed
        assert queue.fetch(1, ["t"], 60) == []  # nothing: the pool registers, 1 free
        payload = {"blob": os.urandom(200_000).hex(), "n": 1}
        job_id = queue.enqueue("t", payload)
        wait_until(lambda: waiter.wait(0.5) or bool(jobs), PROMPT, "the pushed job")
        assert [(j.id, j.payload) for j in jobs] == [(job_id, payload)]
        assert waiter.mode == "blocking read"
    finally:
        waiter.close()
        queue.close()
