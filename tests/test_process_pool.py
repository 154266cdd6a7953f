"""Process workers (`pool.kind = "process"`) against the real daemon, with real signals.

What a thread pool cannot do: kill a task that never checks its context, and
outlive a worker that crashes. Every test ends by checking /proc that no
process the daemon started survives it.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from drainpool.metrics import Metrics
from drainpool.pool import Pool, PoolConfig
from drainpool.procpool import KILL_AFTER_SECONDS
from drainpool.queue.base import RetryPolicy
from drainpool.queue.sqlite import SqliteQueue
from drainpool.tasks import TaskSpec, _resolve

from tests.support.daemon import Daemon, DaemonFactory, queue_stats
from tests.support.joblog import count, events
from tests.support.procs import (
    assert_nothing_left,
    children,
    descendants,
    marked,
    new_marker,
    read,
)
from tests.support.waiting import wait_until
from tests.test_e2e_jobs import dead_list
from tests.test_e2e_stop import enqueue_jobs, generation_counts

GRACE = 1.0


def started_pid(log: Path, job_id: str) -> int:
    """The pid a task logged at its start (`start JOB PID`)."""
    pids = [int(extra) for kind, job, extra in events(log) if kind == "start" and job == job_id]
    return pids[-1] if pids else 0


def running_pids(daemon: Daemon) -> dict[str, int]:
    """job id -> pid of the worker process running it, from the status API."""
    return {r["job_id"]: r["pid"] for r in daemon.status()["pools"][0]["running"]}


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["dies-at-sigterm", "needs-sigkill"])
def test_cpu_bound_task_that_never_checks_is_killed_at_the_deadline(
    factory: DaemonFactory, tmp_path: Path, ignores_sigterm: bool
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(
        pool={"workers": 2, "kind": "process"},
        shutdown={"grace_seconds": GRACE},
        tasks={"spin": "tests.support.tasks:spin"},
    )
    payload = {"log": str(log), "seconds": 3600, "ignore_sigterm": ignores_sigterm}
    enqueue_jobs(factory, config, [{"task": "spin", "payload": payload}])
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    pid = wait_until(lambda: started_pid(log, "1"), what="spin started")
    assert wait_until(lambda: running_pids(daemon).get("1")) == pid
    wait_until(lambda: len(children(daemon.pid)) == 2, what="one worker process per slot")
    seen = descendants(daemon.pid)
    assert pid in seen and seen[pid].ppid == daemon.pid, "the task runs in a child process"
    assert set(seen) | {daemon.pid} <= set(marked(marker)), "the marker scan sees them"

    daemon.signal(signal.SIGTERM)
    # A bound far below the task's hour: only killing its process ends the drain this early.
    assert daemon.wait_exit(timeout=GRACE + KILL_AFTER_SECONDS + 30) == 1
    text = daemon.log()
    assert "abandoned job 1 (spin)" in text
    assert re.search(rf"killed worker processes {pid}\b", text)
    assert ("ignored SIGTERM: SIGKILL" in text) == ignores_sigterm
    assert generation_counts(text)["abandoned"] == 1
    assert count(log, "done") == {}
    stats = queue_stats(factory, config)
    assert (stats["ready"], stats["leased"], stats["dead"]) == (1, 0, 0), "job back in the queue"
    assert_nothing_left(seen.values(), marker)


def test_reload_kills_a_task_that_never_checks_and_the_daemon_goes_on(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """What a thread pool cannot do at a reload: leave no stray behind a runaway task."""
    log = tmp_path / "jobs.log"

    def configure(workers: int) -> Path:
        return factory.config(
            pool={"workers": workers, "kind": "process"},
            shutdown={"grace_seconds": GRACE},
            reload={"watch": False},
            tasks={"spin": "tests.support.tasks:spin"},
        )

    config = configure(2)
    enqueue_jobs(factory, config, [{"task": "spin", "payload": {"log": str(log)}}])
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    first = wait_until(lambda: started_pid(log, "1"), what="spin started")
    seen = descendants(daemon.pid)
    configure(3)
    result = factory.cli("reload", "--pid", str(daemon.pid), config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    # Generation 2 runs the released job again, in a new process; the first one is gone.
    second = wait_until(lambda: started_pid(log, "1") != first and started_pid(log, "1"))
    assert read(first) is None, "killed and reaped"
    assert daemon.metric("drainpool_tasks_abandoned_total", task="spin") == 1
    assert daemon.metric("drainpool_stray_threads") == 0
    assert daemon.status()["state"] == "running"
    assert second in children(daemon.pid)
    seen |= descendants(daemon.pid)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 1  # the second run is abandoned at the stop's deadline
    assert_nothing_left(seen.values(), marker)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ({"how": "segv"}, "worker process died: killed by signal SIGSEGV"),
        ({"how": "exit", "code": 7}, "worker process died: exited with code 7"),
    ],
    ids=["segfault", "os._exit"],
)
def test_worker_that_dies_fails_its_job_and_is_replaced(
    factory: DaemonFactory, tmp_path: Path, how: dict, reason: str
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(
        pool={"workers": 2, "kind": "process"},
        queue={"max_attempts": 1},
        tasks={"crash": "tests.support.tasks:crash", "whoami": "tests.support.tasks:whoami"},
    )
    others = [{"task": "record", "payload": {"log": str(log)}} for _ in range(6)]
    enqueue_jobs(factory, config, [{"task": "crash", "payload": {"log": str(log), **how}}])
    enqueue_jobs(factory, config, others)
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    wait_until(lambda: dead_list(factory, config), what="crashed job dead")
    (dead,) = dead_list(factory, config)
    assert (dead["id"], dead["error"], dead["attempts"]) == ("1", reason, 1)
    crashed = started_pid(log, "1")
    assert re.search(
        rf"worker process {crashed} died running job 1 \(crash\).*new one", daemon.log()
    )
    # The other jobs are unaffected: each done exactly once.
    wait_until(lambda: len(count(log, "done")) == 6, what="other jobs done")
    assert set(count(log, "done").values()) == {1}
    # The dead worker was replaced: two live workers again, and new jobs run in them.
    wait_until(lambda: len(children(daemon.pid)) == 2, what="two worker processes")
    workers = children(daemon.pid)
    assert crashed not in workers
    enqueue_jobs(factory, config, [{"task": "whoami", "payload": {"log": str(log)}}])
    wait_until(lambda: any(e[0] == "pid" for e in events(log)), what="whoami ran")
    (ran_in,) = [int(pid) for kind, _, pid in events(log) if kind == "pid"]
    assert ran_in in workers
    assert daemon.status()["state"] == "running"

    seen = descendants(daemon.pid)
    daemon.terminate()
    assert_nothing_left(seen.values(), marker)


def test_cooperative_task_sees_the_event_across_the_process_boundary(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 2, "kind": "process"})
    enqueue_jobs(
        factory, config, [{"task": "record", "payload": {"log": str(log), "seconds": 3600}}]
    )
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    wait_until(lambda: count(log, "start"), what="record started")
    pid = wait_until(lambda: running_pids(daemon).get("1"))
    assert pid != daemon.pid
    seen = descendants(daemon.pid)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0  # ctx.sleep in the child woke: interrupted, nothing abandoned
    assert count(log, "interrupted") == {"1": 1}
    counts = generation_counts(daemon.log())
    assert (counts["interrupted"], counts["abandoned"]) == (1, 0)
    assert queue_stats(factory, config)["ready"] == 1
    assert_nothing_left(seen.values(), marker)


def test_switching_pool_kind_by_reload(factory: DaemonFactory, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    tasks = {"whoami": "tests.support.tasks:whoami"}

    def configure(kind: str) -> Path:
        return factory.config(
            pool={"workers": 2, "kind": kind}, reload={"watch": False}, tasks=tasks
        )

    def ran_in() -> tuple[int, int]:
        """Run one whoami job; (pid, parent pid) of the process that ran it."""
        before = len(events(log))
        enqueue_jobs(factory, config, [{"task": "whoami", "payload": {"log": str(log)}}])
        wait_until(lambda: len(events(log)) == before + 2, what="whoami ran")
        (_, _, pid), (_, _, parent) = events(log)[before:]
        return int(pid), int(parent)

    def reload() -> None:
        result = factory.cli("reload", "--pid", str(daemon.pid), config=config)
        assert result.returncode == 0, result.stdout + result.stderr

    config = configure("thread")
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    assert ran_in()[0] == daemon.pid
    assert children(daemon.pid) == {}

    configure("process")
    reload()
    pid, parent = ran_in()
    assert pid != daemon.pid and parent == daemon.pid
    wait_until(lambda: len(children(daemon.pid)) == 2, what="one worker process per slot")
    seen = descendants(daemon.pid)
    assert pid in seen

    configure("thread")
    reload()
    assert ran_in()[0] == daemon.pid
    # The process pool's drain closed its workers before generation 3 started.
    assert children(daemon.pid) == {}
    assert daemon.status()["pools"][0]["generation"] == 3
    daemon.terminate()
    assert_nothing_left(seen.values(), marker)


def test_in_process_outcomes_cross_as_json_with_the_childs_traceback(tmp_path: Path) -> None:
    """A process pool driven directly, on a real SQLite queue and real child processes."""
    queue = SqliteQueue(tmp_path / "q.db", retry=RetryPolicy(max_attempts=1))
    refs = {"fail": "drainpool.tasks.examples:fail", "odd": "tests.support.tasks:unjsonable"}
    tasks: dict[str, TaskSpec] = {name: _resolve(name, ref) for name, ref in refs.items()}
    metrics = Metrics()
    config = PoolConfig("default", 2, 5.0, 30.0, 0.05, "process", result_max_bytes=65536)
    pool = Pool(config, 1, tasks, queue, metrics)
    queue.enqueue("fail", {"message": "no disk"})
    odd = queue.enqueue("odd", {})
    pool.start()
    try:
        wait_until(lambda: pool.counts["failed"] == 1 and pool.counts["completed"] == 1)
        pids = wait_until(lambda: len(pool.snapshot()["processes"]) == 2 and pool.snapshot())
    finally:
        pool.begin_drain()
        wait_until(lambda: pool.drained, what="drained")
        pool.join()
    (dead,) = queue.dead_list(10)
    assert dead.error == "DemandedFailure: no disk"
    # The traceback is the child's own, from the task's module.
    assert "daemon/drainpool/tasks/examples.py" in dead.traceback and "in fail" in dead.traceback
    # The set JSON cannot hold: the job completed, the worker lived, the record says why.
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 1)
    record = queue.job(odd)
    assert record is not None and record.state == "completed" and not record.result_kept
    assert record.result_note.startswith("result not kept: not JSON: "), record.result_note
    assert record.worker is not None and record.worker.pool == "default"
    queue.close()
    assert pool.stray_threads() == 0
    assert [read(pid) for pid in pids["processes"]] == [None, None], "children reaped"


def test_abandon_returns_at_once_and_the_drain_waits_for_the_stubborn_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """abandon() runs on the supervisor's loop: it only sends SIGTERM; SIGKILL comes later."""
    log = tmp_path / "jobs.log"
    queue = SqliteQueue(tmp_path / "q.db")
    tasks = {"spin": _resolve("spin", "tests.support.tasks:spin")}
    pool = Pool(PoolConfig("default", 1, 0.2, 30.0, 0.05, "process"), 1, tasks, queue, Metrics())
    queue.enqueue("spin", {"log": str(log), "ignore_sigterm": True})
    pool.start()
    try:
        pid = wait_until(lambda: started_pid(log, "1"), what="spin started, ignoring SIGTERM")
        pool.begin_drain()
        assert [job.id for job in pool.abandon()] == ["1"]
        # The child ignores SIGTERM and the SIGKILL is KILL_AFTER_SECONDS away: had abandon()
        # waited for the kill, as it once did on the loop, the child would be gone by now.
        child_after_abandon = read(pid)
        drained_after_abandon = pool.drained
        wait_until(lambda: pool.drained, what="drained once the child is reaped")
    finally:
        pool.begin_drain()
        pool.abandon()
        wait_until(lambda: pool.drained, what="drained")
        pool.join()
        queue.close()
    assert child_after_abandon is not None and not child_after_abandon.zombie
    assert not drained_after_abandon, "the drain waits for the child it kills"
    assert read(pid) is None, "killed and reaped before the pool counted as drained"
    assert f"worker process {pid} ignored SIGTERM: SIGKILL" in caplog.text
    assert re.search(rf"killed worker processes {pid}\b", caplog.text)
    assert pool.stray_threads() == 0
    assert +pool.counts == {"abandoned": 1}
