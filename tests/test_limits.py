"""Resource limits: the daemon out of file descriptors, and a task that leaks memory.

The descriptor limit is set on the real daemon process with prlimit(2) right
after it is spawned (its start-up needs a dozen descriptors, far under the
limit, so when the call lands makes no difference). A task then takes every
descriptor left, and holds them until the test lets go: everything the daemon
needs a new descriptor for fails during that window, and must fail clearly.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonFactory
from tests.support.joblog import count
from tests.support.waiting import wait_until

NOFILE = 100


def dead_errors(factory: DaemonFactory, config: Path) -> list[str]:
    result = factory.cli("queue", "dead", "list", "--json", config=config)
    assert result.returncode == 0, result.stderr
    return [job["error"] for job in json.loads(result.stdout)]


def enqueue(factory: DaemonFactory, config: Path, task: str, payload: dict) -> None:
    result = factory.cli("enqueue", task, json.dumps(payload), config=config)
    assert result.returncode == 0, result.stderr


def start_limited(factory: DaemonFactory, config: Path) -> Daemon:
    daemon = factory.start(config, ready=False)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    daemon.wait_ready()
    limits = Path(f"/proc/{daemon.pid}/limits").read_text()
    assert re.search(rf"Max open files\s+{NOFILE}\s+{NOFILE}", limits), limits
    return daemon


def test_out_of_file_descriptors_errors_are_clear_and_the_daemon_recovers(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    holding, release = tmp_path / "holding", tmp_path / "release"

    def write(workers: int) -> Path:
        return factory.config(
            pool={"workers": workers},
            queue={"max_attempts": 1},  # a job that fails for want of a descriptor dies at once
            reload={"watch": False},
            tasks={"exhaust": "tests.support.limit_tasks:exhaust"},
        )

    config = write(3)
    daemon = start_limited(factory, config)
    enqueue(factory, config, "exhaust", {"holding": str(holding), "release": str(release)})
    wait_until(holding.exists, what="the task holding every descriptor")

    # A connection to the endpoint now waits in the backlog: accept(2) has no descriptor.
    client = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        # A task that opens a file fails with the operating system's own words.
        enqueue(factory, config, "record", {"log": str(log)})
        errors = wait_until(lambda: dead_errors(factory, config), what="the job dead")
        assert errors == [f"OSError: [Errno 24] Too many open files: '{log}'"], errors
        # A reload cannot read the file: rejected in one line; the running pool stays.
        write(2)
        daemon.signal(signal.SIGHUP)
        daemon.wait_log(r"config rejected, keeping the running config: .*Too many open files")
        daemon.wait_log(r"cannot accept connections on the metrics endpoint: .*Too many open")
        assert daemon.proc.poll() is None
    finally:
        release.touch()
        client.close()

    # Descriptors back: the endpoint answers, jobs run, a reload applies.
    wait_until(
        lambda: daemon.metric("drainpool_tasks_completed_total", task="exhaust") == 1,
        what="the exhausting task completed",
    )
    assert daemon.get("/healthz")[0] == 200
    enqueue(factory, config, "record", {"log": str(log)})
    wait_until(lambda: count(log, "done"), what="a job done after recovery")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.metric("drainpool_pool_workers") == 2, what="the reload applied")
    assert "Traceback" not in daemon.log()
    daemon.terminate()


def test_a_leaking_task_in_process_mode_fails_clearly_and_the_daemon_survives(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """The leak grows in a child process until its memory limit; the daemon stays small."""
    tasks = {
        "leak": "tests.support.limit_tasks:leak",
        "whoami": "tests.support.limit_tasks:whoami",
    }
    config = factory.config(pool={"workers": 2, "kind": "process"}, tasks=tasks)
    daemon = factory.start(config)
    where = tmp_path / "pid"
    enqueue(factory, config, "whoami", {"path": str(where)})
    wait_until(where.exists, what="the whoami task")
    if int(where.read_text()) == daemon.pid:
        pytest.skip(
            "pool.kind = 'process' still runs tasks on the daemon's own threads in this branch:"
            " process-mode pools have not landed"
        )
    log = tmp_path / "jobs.log"
    enqueue(factory, config, "leak", {"daemon_pid": daemon.pid, "limit_mib": 256})
    errors = wait_until(lambda: dead_errors(factory, config), timeout=120, what="the leak dead")
    assert len(errors) == 1 and re.search(r"MemoryError|memory|died|killed", errors[0]), errors
    assert daemon.proc.poll() is None and daemon.get("/healthz")[0] == 200
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{daemon.pid}/status").read_text())[1])
    assert rss_kib < 256 * 1024, f"the daemon itself holds {rss_kib} KiB: the leak was not isolated"
    enqueue(factory, config, "record", {"log": str(log)})
    wait_until(lambda: count(log, "done"), what="a job done after the leak")
    daemon.terminate()
