"""Issue 21: an idle daemon sleeps until the queue announces work, on SQLite and on Redis.

Every daemon here runs with queue.poll_interval_seconds = 30, so a job that
starts within PROMPT seconds was started by a wake-up, not by the safety-net
fetch (which would take up to 30 s). Faults (a deleted doorbell socket, a
read-only doorbell directory, CLIENT KILL, a Redis restart) must fall back,
log one line, and recover without a restart; no job may run twice.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainpool.queue.postgres import PostgresQueue
from drainpool.queue.redis import RedisQueue

from tests.support.daemon import Daemon, DaemonFactory, enqueue
from tests.support.joblog import count
from tests.support.mountns import MountNamespace
from tests.support.postgres_server import PostgresServer, postgres_servers
from tests.support.redis_server import RedisServer, redis_servers
from tests.support.waiting import wait_until

SAFETY_NET = 30.0  # poll_interval_seconds: what would pick a job up without a wake-up
PROMPT = 10.0  # a generous deadline that is still far below the safety net
IDLE_WINDOW = 8.0  # seconds of an idle daemon whose Redis commands are counted
QUIET = 0.5  # seconds without a script: the daemons are idle again
StartRedis = Callable[..., RedisServer]
StartPostgres = Callable[..., PostgresServer]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    with redis_servers(tmp_path) as start:
        yield start


def idle_config(factory: DaemonFactory, url: str = "sqlite:///queue.db", **extra: Any) -> Path:
    return factory.config(
        queue={"url": url, "poll_interval_seconds": SAFETY_NET, **extra.pop("queue", {})},
        pool={"workers": 2},
        reload={"watch": False},
        **extra,
    )


def job(factory: DaemonFactory, config: Path, log: Path) -> str:
    return enqueue(factory, config, "record", {"log": str(log), "seconds": 0})


def done_promptly(log: Path, job_id: str, what: str) -> None:
    wait_until(lambda: count(log, "done")[job_id] >= 1, PROMPT, what, every=0.05)


def waits(daemon: Daemon) -> list[str]:
    return [pool["waits"] for pool in daemon.status()["pools"]]


def bell_dir(tmp_path: Path) -> Path:
    return tmp_path / "queue.db-doorbell"


# -- SQLite: the doorbell ------------------------------------------------------------


def test_sqlite_job_into_an_idle_daemon_starts_on_the_doorbell(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = idle_config(factory)
    daemon = factory.start(config)
    assert waits(daemon) == ["doorbell"]
    log = tmp_path / "jobs.log"
    for _ in range(3):  # each one after the daemon went idle again
        job_id = job(factory, config, log)
        done_promptly(log, job_id, f"job {job_id} started by the doorbell")
    assert set(count(log, "start").values()) == {1}


def test_a_deleted_doorbell_socket_is_noticed_logged_once_and_bound_again(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = idle_config(factory)
    daemon = factory.start(config)
    (sock,) = bell_dir(tmp_path).glob("*.sock")
    sock.unlink()
    daemon.wait_log(r"was removed; polling every queue.poll_interval_seconds", PROMPT)
    daemon.wait_log(r"doorbell in .*: wake-ups are back", PROMPT)
    assert daemon.log().count("was removed") == 1
    log = tmp_path / "jobs.log"
    job_id = job(factory, config, log)
    done_promptly(log, job_id, "a job after the doorbell was bound again")
    assert count(log, "start") == {job_id: 1}


def test_a_stale_doorbell_socket_is_removed_by_the_producer(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = idle_config(factory)
    factory.start(config)
    stale = bell_dir(tmp_path) / "1-dead.sock"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(stale))
    gone.close()  # bound, then closed: a daemon that died without cleaning up
    log = tmp_path / "jobs.log"
    job_id = job(factory, config, log)
    done_promptly(log, job_id, "the job, past a stale socket")
    assert not stale.exists()


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[MountNamespace]:
    with MountNamespace(tmp_path) as ns:
        yield ns


def test_a_read_only_doorbell_directory_falls_back_to_polling_and_recovers(
    factory: DaemonFactory, tmp_path: Path, namespace: MountNamespace
) -> None:
    """Read-only by a bind mount (the tests run as root, which ignores file modes)."""
    config = idle_config(factory)
    bells = bell_dir(tmp_path)
    bells.mkdir()
    namespace.run("mount", "--bind", str(bells), str(bells))
    namespace.run("mount", "-o", "remount,bind,ro", str(bells))
    daemon = namespace.start(config)
    daemon.wait_log(r"doorbell in .*: .*Read-only file system.*; polling", PROMPT)
    assert [pool["waits"] for pool in daemon.status()["pools"]] == ["poll"]
    log = tmp_path / "jobs.log"
    payload = json.dumps({"log": str(log), "seconds": 0})
    made = namespace.cli("enqueue", "record", payload, config=config)
    assert made.returncode == 0, made.stderr  # a producer that cannot ring still enqueues
    job_id = made.stdout.strip()
    namespace.run("umount", str(bells))
    # Re-armed within a second or so, and the re-arm itself fetches: the job runs long
    # before the 30 s safety net.
    done_promptly(log, job_id, "the job enqueued while the doorbell was read-only")
    wait_until(lambda: waits(daemon) == ["doorbell"], PROMPT, "the doorbell back")
    assert daemon.log().count("Read-only file system") == 1
    assert count(log, "start") == {job_id: 1}


# -- Redis: a subscribed connection ------------------------------------------------


def commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def test_redis_job_into_an_idle_daemon_starts_on_the_blocking_read_and_idle_is_quiet(
    factory: DaemonFactory, tmp_path: Path, start_redis: StartRedis
) -> None:
    server = start_redis()
    config = idle_config(factory, server.url)
    daemon = factory.start(config)
    assert waits(daemon) == ["blocking read"]
    log = tmp_path / "jobs.log"
    job_id = job(factory, config, log)
    done_promptly(log, job_id, "a job started by the wake-up")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        # The design allows, per pool and safety-net interval (30 s), one fetch and one
        # due-time script, and one PING per PING_SECONDS (10 s) on the wake-up connection;
        # the daemon's pruner runs once a minute. Over IDLE_WINDOW seconds that is at most
        # one of each (INFO, ours, is left out). The window is the measurement itself.
        before = commands(client)
        threading.Event().wait(IDLE_WINDOW)
        after = commands(client)
        spent = {k: n - before.get(k, 0) for k, n in after.items() if k != "cmdstat_info"}
        spent = {k: n for k, n in spent.items() if n}
        assert sum(spent.values()) <= 4, spent
        job_id = job(factory, config, log)
        done_promptly(log, job_id, "a job after the idle window")
    finally:
        client.close()


@pytest.mark.parametrize("fault", ["client kill", "restart"])
def test_redis_wake_up_connection_broken_falls_back_logs_once_and_recovers(
    factory: DaemonFactory, tmp_path: Path, start_redis: StartRedis, fault: str
) -> None:
    server = start_redis(appendonly=True)
    config = idle_config(factory, server.url)
    daemon = factory.start(config)
    log = tmp_path / "jobs.log"
    first = job(factory, config, log)
    done_promptly(log, first, "a job before the fault")
    if fault == "client kill":
        client = redis.Redis.from_url(server.url)
        try:
            assert client.client_kill_filter(_type="pubsub") >= 1
        finally:
            client.close()
    else:
        server.restart()
    daemon.wait_log(r"wake-up connection to .*; polling every", PROMPT)
    daemon.wait_log(r"wake-up connection to .*: wake-ups are back", PROMPT)
    assert len([line for line in daemon.log().splitlines() if "polling every" in line]) == 1
    second = job(factory, config, log)
    done_promptly(log, second, "a job after the wake-ups came back")
    assert count(log, "start") == {first: 1, second: 1}


def test_two_idle_daemons_on_redis_run_one_enqueued_job_once(
    factory: DaemonFactory, tmp_path: Path, start_redis: StartRedis
) -> None:
    server = start_redis()
    config = idle_config(factory, server.url)
    daemons = [factory.start(config), factory.start(config)]
    log = tmp_path / "jobs.log"
    ids = []
    for _ in range(4):
        ids.append(job(factory, config, log))
        done_promptly(log, ids[-1], "a job into two idle daemons")
    assert count(log, "start") == dict.fromkeys(ids, 1)
    assert all(waits(d) == ["blocking read"] for d in daemons)


def test_one_enqueue_into_three_idle_redis_daemons_costs_the_others_one_fetch_each(
    factory: DaemonFactory, tmp_path: Path, start_redis: StartRedis
) -> None:
    """Issue 21, item 4: every idle daemon wakes; a herd costs one round trip per loser.

    Scripts (EVALSHA) by design: `drainpool enqueue`'s enqueue and its leaving the
    consumer group at close (2); the daemon that gets the job fetches it, fetches again
    once the 2 ms gap is over or with the ack (nothing), asks for the next due time, and
    acks it (4); each of the two others fetches once and finds nothing (2). 8 in all.
    """
    server = start_redis()
    config = idle_config(factory, server.url)
    daemons = [factory.start(config) for _ in range(3)]
    log = tmp_path / "jobs.log"
    warm = job(factory, config, log)  # every daemon has fetched, asked and gone idle
    done_promptly(log, warm, "a first job")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        before = quiet_scripts(client)  # the first job's ack and after-fetches are over
        job_id = job(factory, config, log)
        done_promptly(log, job_id, "the job, once")
        spent = quiet_scripts(client) - before
    finally:
        client.close()
    assert count(log, "start") == {warm: 1, job_id: 1}
    assert all(waits(d) == ["blocking read"] for d in daemons)
    assert spent <= 8, f"{spent} scripts for one job into three idle daemons"


def quiet_scripts(client: redis.Redis) -> int:
    """The count of scripts run, once it has not moved for QUIET seconds (all idle again)."""
    seen: list[int] = []

    def settled() -> int | None:
        seen.append(commands(client).get("cmdstat_evalsha", 0))
        return seen[-1] if len(seen) > 1 and seen[-1] == seen[-2] else None

    return wait_until(settled, PROMPT, "the daemons idle again", every=QUIET)


def test_a_delayed_job_starts_at_its_due_time_not_at_the_safety_net(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = idle_config(factory)
    factory.start(config)
    log = tmp_path / "jobs.log"
    payload = {"log": str(log), "seconds": 0}
    job_id = enqueue(factory, config, "record", payload, "--delay", "2")
    done_promptly(log, job_id, "a delayed job at its due time")


# -- PostgreSQL: LISTEN/NOTIFY ----------------------------------------------------


@pytest.fixture
def start_postgres(tmp_path: Path) -> Iterator[StartPostgres]:
    with postgres_servers(tmp_path / "pg") as start:
        yield start


def test_postgres_job_into_an_idle_daemon_starts_on_its_notification(
    factory: DaemonFactory, tmp_path: Path, start_postgres: StartPostgres
) -> None:
    server = start_postgres()
    config = idle_config(factory, server.url())
    daemon = factory.start(config)
    assert waits(daemon) == ["blocking read"]
    log = tmp_path / "jobs.log"
    for _ in range(3):  # each one after the daemon went idle again
        job_id = job(factory, config, log)
        done_promptly(log, job_id, f"job {job_id} started by its notification")
    assert set(count(log, "start").values()) == {1}


def test_postgres_wake_up_connection_terminated_falls_back_logs_once_and_recovers(
    factory: DaemonFactory, tmp_path: Path, start_postgres: StartPostgres
) -> None:
    server = start_postgres()
    config = idle_config(factory, server.url())
    daemon = factory.start(config)
    log = tmp_path / "jobs.log"
    first = job(factory, config, log)
    done_promptly(log, first, "a job before the fault")
    ended = server.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'drainpool-wakeups'"
    )
    assert ended and all(row[0] for row in ended)
    daemon.wait_log(r"wake-up connection to .*; polling every", PROMPT)
    daemon.wait_log(r"wake-up connection to .*: wake-ups are back", PROMPT)
    assert len([line for line in daemon.log().splitlines() if "polling every" in line]) == 1
    second = job(factory, config, log)
    done_promptly(log, second, "a job after the wake-ups came back")
    assert count(log, "start") == {first: 1, second: 1}


def test_postgres_notifies_when_the_applications_transaction_commits_not_before(
    start_postgres: StartPostgres,
) -> None:
    server = start_postgres()
    queue = PostgresQueue.from_url(server.url())
    waiter = queue.waiter(["record"])
    try:
        assert waiter.wait(PROMPT)  # armed: the first wait reports a wake-up
        with psycopg.connect(server.url()) as app:
            queue.enqueue("record", {"n": 1}, connection=app)
            assert not waiter.wait(1.0)  # not committed yet: nobody is told
            app.rollback()
            assert not waiter.wait(1.0)  # rolled back: nobody ever is
            queue.enqueue("other", {"n": 2}, connection=app)
            app.commit()
            assert not waiter.wait(1.0)  # committed, but not one of the waiter's tasks
            queue.enqueue("record", {"n": 3}, delay=60, connection=app)
            app.commit()
        assert waiter.wait(PROMPT)
        due = waiter.take_due()
        (delayed,) = queue.jobs(task="record")
        assert due is not None and 59 < due - delayed.enqueued_at <= 60
        assert waiter.mode == "blocking read"
    finally:
        waiter.close()
        queue.close()


# -- idle is idle -----------------------------------------------------------------


def wake_ups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid`: one per wake-up from a wait."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended between the listing and the read
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_an_idle_daemon_sleeps_until_something_happens(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """The watcher (inotify), supervisor (5 s tick), dispatcher (30 s safety net) all sleep.

    By design, over IDLE_WINDOW (8 s) the daemon wakes: its doorbell listener every
    2 s to check its socket file (4), the supervisor every 5 s for /healthz (2), and
    nothing else. 30 leaves room for GIL hand-offs around those; the 20 ms watchfiles
    step and the 0.5 s supervisor tick of before came to over 400.
    """
    config = factory.config(
        queue={"poll_interval_seconds": SAFETY_NET}, pool={"workers": 2}, reload={"watch": True}
    )
    daemon = factory.start(config)
    log = tmp_path / "jobs.log"
    job_id = job(factory, config, log)
    done_promptly(log, job_id, "one job, then idle")
    before = wake_ups(daemon.pid)
    threading.Event().wait(IDLE_WINDOW)  # the window is the measurement
    spent = wake_ups(daemon.pid) - before
    assert spent <= 30, f"{spent} wake-ups in {IDLE_WINDOW} s of idling"


def test_redis_fetch_makes_the_consumer_group_again_when_redis_says_it_is_missing(
    start_redis: StartRedis,
) -> None:
    """An idle fetch does not create the group (issue 21); NOGROUP makes it again."""
    server = start_redis()
    queue = RedisQueue.from_url(server.url, prefix="nogroup")
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        first = queue.enqueue("t", 1)
        assert [job.id for job in queue.fetch(1, ["t"], 60)] == [first]
        second = queue.enqueue("t", 2)
        raw.xgroup_destroy("nogroup:stream:t", "nogroup")
        before = commands(raw).get("cmdstat_xgroup|create", 0)
        fetched = queue.fetch(2, ["t"], 60)  # every entry is new to the new group
        assert sorted(job.id for job in fetched) == sorted([first, second])
        assert commands(raw)["cmdstat_xgroup|create"] == before + 1
        assert queue.fetch(2, ["t"], 60) == []  # an idle fetch: no group creation
        assert commands(raw)["cmdstat_xgroup|create"] == before + 1
    finally:
        raw.close()
        queue.close()
