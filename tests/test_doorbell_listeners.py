"""A producer finds the listening pools by one stat() of the doorbell directory per ring.

In-process, real datagram sockets bound by real waiters (as a pool's listener
binds them). The directory's mtime is set by hand (os.utime) to stand for a
directory that has been still for a while, and for a change that its mtime
does not show (two in one tick of the file system's clock).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from drainpool.queue.doorbell import COARSE_SETTLED_SECONDS, Doorbell, DoorbellWaiter, doorbell_dir


@pytest.fixture
def waiters(tmp_path: Path) -> Iterator[list[DoorbellWaiter]]:
    made: list[DoorbellWaiter] = []
    yield made
    for waiter in made:
        waiter.close()


@pytest.fixture
def bell(tmp_path: Path) -> Iterator[Doorbell]:
    """A producer's doorbell for the queue file in tmp_path; closed after the test."""
    made = Doorbell(tmp_path / "queue.db")
    yield made
    made.close()


def listen(tmp_path: Path, made: list[DoorbellWaiter]) -> DoorbellWaiter:
    waiter = DoorbellWaiter(tmp_path / "queue.db", ("t",))
    assert waiter.wait(0) is True  # armed: its socket is bound in the directory
    made.append(waiter)
    return waiter


def age(directory: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(directory, (then, then))


def test_a_listener_bound_just_after_a_ring_is_rung_by_the_next(
    tmp_path: Path, waiters: list[DoorbellWaiter], bell: Doorbell
) -> None:
    assert bell.ring(["t"]) == 0  # no directory yet: nobody listens
    listen(tmp_path, waiters)
    assert bell.ring(["t"]) == 1
    # A second bind within the same clock tick may leave the mtime as it was: a listing
    # of a directory that changed moments ago is not kept, so the next ring finds it.
    listen(tmp_path, waiters)
    assert bell.ring(["t"]) == 2
    assert all(waiter.wait(0) for waiter in waiters)  # each heard its datagram


def test_a_still_directory_is_not_listed_again_until_its_mtime_moves(
    tmp_path: Path, waiters: list[DoorbellWaiter], bell: Doorbell
) -> None:
    directory = doorbell_dir(tmp_path / "queue.db")
    listen(tmp_path, waiters)
    age(directory, COARSE_SETTLED_SECONDS + 10)
    still = os.stat(directory).st_mtime_ns
    assert bell.ring(["t"]) == 1  # listed, and kept: the directory was still
    listen(tmp_path, waiters)
    os.utime(directory, ns=(still, still))  # a change that the mtime does not show
    assert bell.ring(["t"]) == 1  # the kept listing: one stat, no listing
    age(directory, COARSE_SETTLED_SECONDS + 5)  # the mtime moves: listed again
    assert bell.ring(["t"]) == 2


def test_a_stale_socket_is_removed_and_the_listing_follows(
    tmp_path: Path, waiters: list[DoorbellWaiter], bell: Doorbell
) -> None:
    directory = doorbell_dir(tmp_path / "queue.db")
    gone = listen(tmp_path, waiters)
    kept = listen(tmp_path, waiters)
    age(directory, COARSE_SETTLED_SECONDS + 10)
    assert bell.ring(["t"]) == 2
    # A daemon killed with SIGKILL leaves its socket file behind: nobody reads it now.
    path = gone._path
    assert path is not None
    os.link(path, directory / "stale.sock")  # its name outlives the listener's close
    age(directory, COARSE_SETTLED_SECONDS + 8)
    assert bell.ring(["t"]) == 3  # listed again: the mtime moved
    gone.close()  # the socket is closed (and its own name removed): the link is stale
    assert bell.ring(["t"]) == 1  # refused: stale.sock is removed
    assert kept._path is not None
    assert sorted(p.name for p in directory.iterdir()) == [kept._path.name]
    assert bell.ring(["t"]) == 1
