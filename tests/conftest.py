"""Shared fixtures: a daemon factory per test, a guard against leaked threads, and the
queue of a test on each backend it supports; the suite's order and bytecode
(tests/support/suite_speed.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.daemon import DaemonFactory, daemons
from tests.support.postgres_server import PostgresServer, postgres_servers
from tests.support.redis_server import RedisServer, redis_servers
from tests.support.suite_speed import compile_bytecode, long_modules_first


def pytest_configure(config: pytest.Config) -> None:
    compile_bytecode(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    long_modules_first(items)


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


# The queue backends a test that takes `queue_url` runs on, unless its module or the
# test itself says otherwise with @pytest.mark.queue_backends("sqlite", "postgres", ...).
DEFAULT_QUEUE_BACKENDS = ("sqlite", "redis")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "queue_url" in metafunc.fixturenames:
        chosen = metafunc.definition.get_closest_marker("queue_backends")
        backends = chosen.args if chosen else DEFAULT_QUEUE_BACKENDS
        metafunc.parametrize("queue_url", backends, indirect=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, started in tmp_path; stopped by its pid after."""
    with redis_servers(tmp_path) as start:
        yield start()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of `redis_server` (strings decoded), to look at what the queue wrote."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def shared_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per test module (a cluster costs a second or two to make);
    each test takes a database or a schema of its own in it."""
    with postgres_servers(tmp_path_factory.mktemp("postgres")) as start:
        yield start()


@pytest.fixture
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The queue of a test's config, once per backend: a SQLite file in the test's folder
    (relative to its config: a producer opens it with `base_dir=tmp_path`), a
    redis-server of its own, or a database of its own in the module's PostgreSQL cluster."""
    if request.param == "sqlite":
        yield "sqlite:///queue.db"
    elif request.param == "redis":
        with redis_servers(tmp_path) as start_redis:
            yield start_redis().url
    elif request.param == "postgres":
        cluster: PostgresServer = request.getfixturevalue("shared_postgres")
        database = f"test_{uuid.uuid4().hex[:12]}"
        cluster.sql(f"CREATE DATABASE {database}")
        yield cluster.url(database=database)
    else:
        raise ValueError(f"unknown queue backend {request.param!r} in queue_backends")
