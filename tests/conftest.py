"""Shared fixtures: a daemon factory per test, and a guard against leaked threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonFactory, daemons
from tests.support.redis_server import redis_servers


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Starts real daemons in tmp_path; kills every one of them by pid at the end."""
    with daemons(tmp_path) as f:
        yield f


# A thread that a test told to stop may still be on its way out (a join with a
# timeout in the code under test, a server's poll interval): it gets this long.
LEAK_GRACE_SECONDS = 5.0
# No thread may outlive its test, daemon or not, so nothing is allow-listed: the
# long-lived ones (a module's redis-server, a session's browser) are processes,
# or threads started by a wider-scoped fixture before this guard's snapshot. A
# daemon thread left running would go on touching the test's tmp_path, ports
# and queue files during the next tests, and its failures would land there.


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread it started running, daemon threads included."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t for t in started if t.is_alive()]
    assert not leaked, f"threads still running {LEAK_GRACE_SECONDS} s after the test: {leaked}"


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The queue of a test's config, once per backend: a SQLite file in the test's folder
    (relative to its config), or a redis-server of its own."""
    if request.param == "sqlite":
        yield "sqlite:///queue.db"
        return
    with redis_servers(tmp_path) as start_redis:
        yield start_redis().url
