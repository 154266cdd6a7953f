"""The SQLite doorbell names the jobs it rings for, and an idle daemon claims them by id.

In-process, on a real file and real datagram sockets: a producer's queue
rings, a daemon's queue hears through its own waiter (as a pool's listener
does) and fetches. Two daemon queues on one file act as two daemons. The
clock is driven by hand, so no test waits for a job to come due.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drainpool.queue.doorbell import (
    MAX_DATAGRAM,
    MAX_IDS,
    Doorbell,
    DoorbellWaiter,
    Heard,
    doorbell_dir,
)
from drainpool.queue.sqlite import SqliteQueue, claim_sql

from tests.test_queue_sqlite_durability import Clock

WAIT = 5.0  # seconds a waiter may take to hear a datagram already sent (it returns at once)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_queue(tmp_path: Path, clock: Clock) -> Iterator[Callable[[], SqliteQueue]]:
    """Queues on one file (each acts as one daemon or producer), all closed at the end."""
    opened: list[SqliteQueue] = []

    def make() -> SqliteQueue:
        queue = SqliteQueue(tmp_path / "queue.db", clock=clock)
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


@pytest.fixture
def listening(open_queue: Callable[[], SqliteQueue]) -> Iterator[Callable[..., DoorbellWaiter]]:
    """A daemon queue's waiter for `tasks` (bound now), as a pool's listener has; closed after."""
    waiters: list[DoorbellWaiter] = []

    def make(queue: SqliteQueue, tasks: tuple[str, ...] = ("stamp",)) -> DoorbellWaiter:
        waiter = queue.waiter(tasks)
        assert waiter.wait(0) is True  # armed: the first wait reports its (re-)arming
        waiters.append(waiter)
        return waiter

    yield make
    for waiter in waiters:
        waiter.close()


@contextlib.contextmanager
def reach(directory: Path) -> Iterator[Callable[[str], str]]:
    """Socket addresses in `directory` through its fd: tmp_path may pass sun_path's 108 bytes."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield lambda name: f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def leased(path: Path, job_id: str) -> tuple[int, int, str | None]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT state, attempts, token FROM jobs WHERE id = ?", (int(job_id),)
        ).fetchone()
    finally:
        conn.close()


def test_a_ring_names_its_job_and_the_daemon_claims_that_one_first(
    open_queue: Callable[[], SqliteQueue], listening: Callable[..., DoorbellWaiter]
) -> None:
    producer, daemon = open_queue(), open_queue()
    older = producer.enqueue("stamp", {"n": 1})  # rung before the daemon listened: not heard
    waiter = listening(daemon)
    named = producer.enqueue("stamp", {"n": 2})
    assert waiter.wait(WAIT) is True
    # A look for due jobs would take the older one first; the ring's job is claimed by id.
    assert [job.id for job in daemon.fetch(1, ["stamp"], 30)] == [named]
    # The next fetch heard nothing new, so it looks, and finds the older job.
    assert [job.id for job in daemon.fetch(8, ["stamp"], 30)] == [older]


def test_a_ring_naming_a_job_another_daemon_took_claims_nothing_twice_and_finds_the_rest(
    tmp_path: Path, open_queue: Callable[[], SqliteQueue], listening: Callable[..., DoorbellWaiter]
) -> None:
    producer, first, second = open_queue(), open_queue(), open_queue()
    waiter = listening(second)
    taken = producer.enqueue("stamp", {"n": 1})
    assert waiter.wait(WAIT) is True
    (job,) = first.fetch(8, ["stamp"], 30)  # the other daemon was quicker
    assert job.id == taken
    other = producer.enqueue("stamp", {"n": 2})  # its ring waits in the socket, unread
    # The ring named a job that is gone: the same claim falls back to a look for due jobs.
    assert [j.id for j in second.fetch(8, ["stamp"], 30)] == [other]
    assert leased(tmp_path / "queue.db", taken) == (1, 1, job.token)  # still the first's
    assert second.fetch(8, ["stamp"], 30) == []


def test_a_ring_naming_a_job_not_yet_due_leaves_it_until_it_is(
    tmp_path: Path,
    clock: Clock,
    open_queue: Callable[[], SqliteQueue],
    listening: Callable[..., DoorbellWaiter],
) -> None:
    producer, daemon = open_queue(), open_queue()
    waiter = listening(daemon)
    later = producer.enqueue("stamp", {}, delay=60)
    assert waiter.wait(WAIT) is True
    assert waiter.take_due() == clock.now + 60
    # A producer whose clock runs ahead names the job as ready: the claim checks the row.
    bell = Doorbell(tmp_path / "queue.db")
    try:
        assert bell.ring(["stamp"], ids={"stamp": [later]}) == 1
    finally:
        bell.close()
    assert waiter.wait(WAIT) is True
    assert daemon.fetch(8, ["stamp"], 30) == []
    assert leased(tmp_path / "queue.db", later)[:2] == (0, 0)  # waiting, never claimed
    clock.now += 61
    assert [job.id for job in daemon.fetch(8, ["stamp"], 30)] == [later]


def test_a_ring_never_claims_a_job_of_a_task_the_pool_does_not_serve(
    tmp_path: Path, open_queue: Callable[[], SqliteQueue], listening: Callable[..., DoorbellWaiter]
) -> None:
    producer, daemon = open_queue(), open_queue()
    waiter = listening(daemon)
    foreign = producer.enqueue("other", {})
    # A faulty producer names that job under our task: the claim checks the row's task.
    bell = Doorbell(tmp_path / "queue.db")
    try:
        assert bell.ring(["stamp"], ids={"stamp": [foreign]}) == 1
    finally:
        bell.close()
    assert waiter.wait(WAIT) is True
    assert daemon.fetch(8, ["stamp"], 30) == []
    assert leased(tmp_path / "queue.db", foreign)[:2] == (0, 0)


@pytest.mark.parametrize(
    "datagram",
    [b"stamp", b"stamp\n#stamp\tnot,ids", b"#other\t1\nstamp"],
    ids=["older producer", "malformed ids", "ids of another task"],
)
def test_a_ring_without_usable_ids_wakes_the_daemon_which_looks_for_its_jobs(
    tmp_path: Path,
    open_queue: Callable[[], SqliteQueue],
    listening: Callable[..., DoorbellWaiter],
    datagram: bytes,
) -> None:
    producer, daemon = open_queue(), open_queue()
    job_id = producer.enqueue("stamp", {})  # rung before the daemon listened: not heard
    waiter = listening(daemon)
    directory = doorbell_dir(tmp_path / "queue.db")
    (sock_file,) = directory.glob("*.sock")
    with reach(directory) as address, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(datagram, address(sock_file.name))
    assert waiter.wait(WAIT) is True
    assert waiter.mode == "doorbell"  # the channel did not break
    assert [job.id for job in daemon.fetch(8, ["stamp"], 30)] == [job_id]


def test_a_ring_of_ids_alone_does_not_wake_a_daemon_that_predates_them(tmp_path: Path) -> None:
    """An older daemon reads every line as a task name: an ids line never matches one."""
    directory = doorbell_dir(tmp_path / "queue.db")
    directory.mkdir()
    with reach(directory) as address, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address("old.sock"))
        listener.settimeout(WAIT)
        bell = Doorbell(tmp_path / "queue.db")
        try:
            assert bell.ring(["stamp"], ids={"stamp": ["7", "9"]}) == 1
            lines = listener.recv(MAX_DATAGRAM).decode().splitlines()
            assert lines == ["stamp", "#stamp\t7,9"]
            assert "stamp" not in {line.partition("\t")[0] for line in lines[1:]}
            too_many = [str(i) for i in range(MAX_IDS + 1)]
            bell.ring(["stamp"], ids={"stamp": too_many})
            assert listener.recv(MAX_DATAGRAM) == b"stamp"  # the daemon looks instead
            long_names = [f"task{i:04d}-" + "x" * 90 for i in range(1000)]  # > MAX_DATAGRAM
            bell.ring(long_names)
            received = listener.recv(MAX_DATAGRAM + 1)
            assert len(received) <= MAX_DATAGRAM
            assert set(received.decode().splitlines()) <= set(long_names)  # whole lines only
        finally:
            bell.close()


def test_heard_rings_merge_and_a_ring_without_ids_means_look() -> None:
    heard = Heard()
    assert heard.take(["a"]) == (False, [])
    heard.note({"a": [3], "b": [5]})
    heard.note({"a": [1]})
    assert heard.take(["a"]) == (True, [1, 3])
    assert heard.take(["a"]) == (False, [])
    heard.note({"a": [2]})
    heard.note({"a": None})  # a ring that named nothing: its jobs must be looked for
    assert heard.take(["a", "b"]) == (True, [])
    heard.note({"c": [4]})
    heard.forget(["c"])
    assert heard.take(["c"]) == (False, [])
    for job_id in range(MAX_IDS + 1):  # a full pool fetches nothing: no list grows for it
        heard.note({"d": [job_id]})
    assert heard.take(["d"]) == (True, [])


def test_the_claim_by_id_reaches_its_rows_by_the_primary_key(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.enqueue_many([("a", i) for i in range(2000)])
    queue.close()
    conn = sqlite3.connect(tmp_path / "queue.db")
    try:
        conn.execute("ANALYZE")
        args = (1.0, "t", 1.0, "h", 1, "p", 5, 1.0, "a", "b")
        steps = conn.execute(f"EXPLAIN QUERY PLAN {claim_sql(1, 2)}", args).fetchall()
        assert [step[3] for step in steps] == ["SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"]
    finally:
        conn.close()
