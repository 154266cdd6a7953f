"""Real daemons on a real PostgreSQL (issue 22): drain, two daemons through cut
connections, an outage longer than a lease, a database that turns read-only, a
full disk.

Each test starts its own cluster (tests/support/postgres_server.py) and its
own daemons. The jobs are the `record` test task, which writes start/done/
interrupted lines to one O_APPEND log; job ids are 1..N in enqueue order (a
fresh schema counts from 1). Long jobs at known ids make "the daemon is busy
right now" something a test waits for instead of guessing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from drainpool.queue.postgres_schema import COMPLETED

from tests.support.daemon import Daemon, DaemonFactory, queue_stats
from tests.support.joblog import count, events
from tests.support.mountns import MountNamespace
from tests.support.postgres_server import PostgresServer, postgres_servers
from tests.support.waiting import wait_until
from tests.test_e2e_redis import enqueue, generation_counts, running, short

JOBS = 1000
LONG = 30.0  # seconds of a long job (scaled down on a daemon started with FAST)
FAST = {"TEST_TIME_SCALE": "0.05"}

StartPostgres = Callable[..., PostgresServer]


@pytest.fixture
def start_postgres(tmp_path: Path) -> Iterator[StartPostgres]:
    with postgres_servers(tmp_path / "pg") as start:
        yield start


def pg_config(
    factory: DaemonFactory, server: PostgresServer, *, lease: float = 30.0, **sections: Any
) -> Path:
    pool = {"workers": 8, **sections.pop("pool", {})}
    queue = {"url": server.url(), "lease_seconds": lease, **sections.pop("queue", {})}
    return factory.config(pool=pool, queue=queue, **sections)


def ready(daemon: Daemon) -> int:
    return daemon.get("/readyz")[0]


def all_done(log: Path, n: int = JOBS) -> bool:
    return len(count(log, "done")) == n


def assert_queue_empty(factory: DaemonFactory, config: Path) -> None:
    stats = queue_stats(factory, config)
    assert (stats["ready"], stats["delayed"], stats["leased"], stats["dead"]) == (0, 0, 0, 0)


def test_sigterm_drains_back_to_postgres_and_another_daemon_finishes(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    server = start_postgres()
    log = tmp_path / "jobs.log"
    config = pg_config(factory, server)
    enqueue(factory, config, log, [LONG] * 4 + [short(i) for i in range(4, JOBS)])
    first = factory.start(config)
    wait_until(lambda: {"1", "2", "3", "4"} <= running(first).keys(), what="long jobs running")

    first.terminate()  # exit 0: everything settled
    interrupted = count(log, "interrupted")
    assert {"1", "2", "3", "4"} <= interrupted.keys()
    assert generation_counts(first)["abandoned"] == 0
    stats = queue_stats(factory, config)
    assert stats["leased"] == 0  # every lease handed back at the drain
    assert stats["ready"] == JOBS - len(count(log, "done"))

    second = factory.start(config, env=FAST)
    wait_until(lambda: all_done(log), timeout=120, what="every job done")
    assert max(count(log, "done").values()) == 1
    assert_queue_empty(factory, config)
    second.terminate()


def test_two_daemons_share_the_queue_through_terminated_backends(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    server = start_postgres()
    log = tmp_path / "jobs.log"
    config = pg_config(factory, server)
    daemons = [factory.start(config), factory.start(config)]  # both idle: both take jobs
    enqueue(factory, config, log, [short(i) for i in range(JOBS)])
    for target in (100, 400, 700):
        wait_until(lambda t=target: len(count(log, "done")) >= t, what=f"{target} jobs done")
        wait_until(
            lambda: server.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'drainpool' AND pid <> pg_backend_pid()"
            ),
            what="a daemon's connection to cut",
        )

    wait_until(lambda: all_done(log), timeout=120, what="every job done")
    assert max(count(log, "done").values()) == 1  # no lease lapsed: nothing ran twice
    assert_queue_empty(factory, config)
    for daemon in daemons:
        assert daemon.metric("drainpool_tasks_completed_total", task="record") > 0, "not shared"
        assert ready(daemon) == 200
        assert "Traceback" not in daemon.log()
        daemon.terminate()


def test_postgres_down_longer_than_a_lease_then_back(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    server = start_postgres()
    log = tmp_path / "jobs.log"
    lease = 2.0
    config = pg_config(factory, server, lease=lease)
    seconds = [1.0 if i % 100 == 50 else short(i) for i in range(JOBS)]
    enqueue(factory, config, log, seconds)
    daemon = factory.start(config)
    wait_until(lambda: len(count(log, "done")) >= 200, what="200 jobs done")

    server.stop()
    wait_until(lambda: ready(daemon) == 503, what="/readyz 503 while PostgreSQL is down")
    assert daemon.get("/healthz")[0] == 200  # alive, only not ready
    refused = factory.cli("queue", "stats", config=config)
    assert refused.returncode == 1 and refused.stderr.startswith("drainpool: queue unavailable:")
    assert len(refused.stderr.splitlines()) == 1
    # The outage outlasts every lease the daemon held (scenario, not a check).
    time.sleep(lease * 2)
    server.start()
    back = len(events(log))
    wait_until(lambda: ready(daemon) == 200, what="/readyz 200 once PostgreSQL is back")
    wait_until(lambda: all_done(log), timeout=120, what="every job done")

    done = count(log, "done")
    started_before_back = {job for kind, job, _ in events(log)[:back] if kind == "start"}
    duplicates = {job for job, n in done.items() if n > 1}
    # Only a job leased before the outage may run again (its lease lapsed meanwhile).
    assert duplicates <= started_before_back
    assert_queue_empty(factory, config)
    text = daemon.log()
    assert text.count("queue unavailable") == 1, text
    assert text.count("queue available again") == 1, text
    assert "Traceback" not in text
    assert daemon.metric("drainpool_pool_generation") == 1  # recovered without a restart
    daemon.terminate()


def read_only(server: PostgresServer, on: bool) -> None:
    """Every session's default, existing ones included (a reload), as an operator sets it.

    The session that changes it turns it off for itself first: with it on, a
    new session could change nothing.
    """
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        if on:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


def completed_in_db(server: PostgresServer) -> int:
    return server.sql(f"SELECT count(*) FROM drainpool.jobs WHERE state = {COMPLETED}")[0][0]


def test_a_read_only_database_holds_finished_results_in_memory_until_writes_work_again(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    server = start_postgres()
    log = tmp_path / "jobs.log"
    held = 8
    config = pg_config(factory, server)
    enqueue(factory, config, log, [1.0] * held + [short(i) for i in range(held, 200)])
    daemon = factory.start(config)
    long_ids = {str(i) for i in range(1, held + 1)}
    wait_until(lambda: long_ids <= running(daemon).keys(), what="the long jobs running")

    read_only(server, True)
    wait_until(lambda: ready(daemon) == 503, what="/readyz 503 while the database is read-only")
    wait_until(lambda: long_ids <= count(log, "done").keys(), what="the long jobs finished")
    # Finished, and not written: their results wait in the daemon's memory.
    assert completed_in_db(server) == 0
    assert daemon.get("/healthz")[0] == 200

    read_only(server, False)
    wait_until(lambda: ready(daemon) == 200, what="/readyz 200 once writes work again")
    wait_until(lambda: all_done(log, 200), timeout=120, what="every job done")
    wait_until(lambda: completed_in_db(server) == 200, what="every result written")
    assert max(count(log, "done").values()) == 1  # nothing ran twice
    assert_queue_empty(factory, config)
    text = daemon.log()
    assert text.count("queue unavailable") == 1, text
    assert "read-only transaction" in text
    assert text.count("queue available again") == 1, text
    assert "Traceback" not in text
    daemon.terminate()


def test_a_full_disk_holds_finished_results_in_memory_until_space_is_freed(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    """The queue's tables live in a tablespace on an 8 MiB tmpfs that a filler file fills."""
    jobs = 3000
    with MountNamespace(tmp_path / "ns") as namespace:
        server = start_postgres(mount_namespace=namespace.holder.pid)
        disk = server.directory / "small"
        disk.mkdir()
        namespace.run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk))
        namespace.run("mkdir", str(disk / "tablespace"))
        if server.user is not None:
            owner = f"{server.user.pw_uid}:{server.user.pw_gid}"
            namespace.run("chown", owner, str(disk / "tablespace"))
        server.sql(f"CREATE TABLESPACE small LOCATION '{disk / 'tablespace'}'")
        server.sql("ALTER DATABASE postgres SET default_tablespace = small")
        log = tmp_path / "jobs.log"
        config = pg_config(factory, server)
        enqueue(factory, config, log, [short(i) for i in range(jobs)])
        daemon = factory.start(config)
        wait_until(lambda: len(count(log, "done")) >= 100, what="100 jobs done")

        filler = disk / "filler"
        full = namespace.run("dd", "if=/dev/zero", f"of={filler}", "bs=64k", check=False)
        assert "No space left on device" in full.stderr
        wait_until(lambda: ready(daemon) == 503, what="/readyz 503 while the disk is full")
        # Jobs that finished after the disk filled: their results wait in memory.
        wait_until(
            lambda: len(count(log, "done")) > completed_in_db(server),
            what="jobs done that the database has not recorded",
        )
        assert daemon.get("/healthz")[0] == 200

        namespace.run("rm", str(filler))
        wait_until(lambda: ready(daemon) == 200, what="/readyz 200 once there is space")
        wait_until(lambda: all_done(log, jobs), timeout=120, what="every job done")
        wait_until(lambda: completed_in_db(server) == jobs, what="every result written")
        assert max(count(log, "done").values()) == 1  # nothing ran twice
        assert_queue_empty(factory, config)
        text = daemon.log()
        assert "No space left on device" in text
        assert text.count("queue unavailable") == text.count("queue available again") >= 1, text
        assert "Traceback" not in text
        daemon.terminate()
        server.stop()  # the last process in the namespace: its tmpfs goes with it


def test_a_row_lock_that_holds_the_release_does_not_hold_the_stop(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    """Another session keeps the running job's row locked: the daemon still exits on its own.

    The drain's release of the interrupted job waits for that lock for ever. Without
    the drain's settle deadline the daemon never exits, and systemd kills it at
    TimeoutStopSec; with it, the pool is given up SETTLE_SECONDS after its grace, the
    daemon exits 1 with a line that says why, and the job keeps its lease.
    """
    server = start_postgres()
    log = tmp_path / "jobs.log"
    config = pg_config(factory, server, shutdown={"grace_seconds": 1.0})
    enqueue(factory, config, log, [LONG])
    daemon = factory.start(config)
    wait_until(lambda: "1" in running(daemon), what="job 1 running")
    with psycopg.connect(server.url()) as locker:  # one transaction, open until the end
        locker.execute("SELECT id FROM drainpool.jobs WHERE id = 1 FOR UPDATE")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=60) == 1, daemon.log()
        locker.rollback()
    assert "interrupted 1 1" in log.read_text()
    assert "its queue did not settle within 3s after the grace" in daemon.log()
    assert queue_stats(factory, config)["leased"] == 1  # left to its lease, not lost


def lease_end(server: PostgresServer, job_id: int) -> float:
    return float(server.sql(f"SELECT due_at FROM drainpool.jobs WHERE id = {job_id}")[0][0])


def test_a_row_lock_on_a_job_being_acked_fails_the_ack_visibly_and_the_other_leases_stay(
    factory: DaemonFactory, start_postgres: StartPostgres, tmp_path: Path
) -> None:
    """Another session locks a running job's row: its ack cannot be written when it ends.

    PostgreSQL waits for a row lock for ever by default, which held the pool's
    dispatcher (no lease renewed, nothing logged). With the daemon's lock_timeout
    the ack fails as the queue being unavailable (one line that says why), it is
    tried again, and the other running job's lease is still renewed meanwhile;
    once the lock goes, the ack lands and the queue is available again.
    """
    server = start_postgres()
    log = tmp_path / "jobs.log"
    config = pg_config(factory, server, lease=6.0)
    enqueue(factory, config, log, [LONG, 3.0])  # 2 ends after 3 s, its row locked by then
    daemon = factory.start(config)
    wait_until(lambda: {"1", "2"} <= running(daemon).keys(), what="both jobs running")
    with psycopg.connect(server.url()) as locker:  # one transaction, open until rollback
        locker.execute("SELECT id FROM drainpool.jobs WHERE id = 2 FOR UPDATE")
        wait_until(lambda: "2" in count(log, "done"), what="job 2 done")
        wait_until(lambda: "lock timeout" in daemon.log(), what="the ack failing on the lock")
        assert "queue unavailable" in daemon.log()
        held_until = lease_end(server, 1)
        wait_until(
            lambda: lease_end(server, 1) > held_until,
            timeout=30,
            what="job 1's lease renewed while job 2's ack keeps failing",
        )
        assert completed_in_db(server) == 0  # the ack still waits for the lock
        assert ready(daemon) == 503
        locker.rollback()
    wait_until(lambda: completed_in_db(server) == 1, what="job 2's ack written after the lock")
    wait_until(lambda: "queue available again" in daemon.log(), what="the recovery logged")
    assert ready(daemon) == 200
    assert count(log, "start") == {"1": 1, "2": 1}  # nothing ran twice
    daemon.terminate()
