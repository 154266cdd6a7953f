"""Proof that nothing is lost: thousands of jobs through reloads, stops and kill -9,
on SQLite, Redis and PostgreSQL.

The run (tests/support/chaos.py) is bounded for CI; set DRAINPOOL_CHAOS_JOBS,
DRAINPOOL_CHAOS_SECONDS and DRAINPOOL_CHAOS_SEED for a longer one or a replay
(bench/chaos.py runs the long mode).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.support.chaos import ChaosResult, run_chaos
from tests.support.chaos_verify import verify
from tests.support.daemon import DaemonFactory
from tests.support.postgres_server import postgres_servers
from tests.support.redis_server import redis_servers


def chaos_parameters(jobs: int = 2000, seconds: float = 40) -> tuple[int, float, int]:
    """CI's bounded size unless the environment asks for another (or a replay)."""
    jobs = int(os.environ.get("DRAINPOOL_CHAOS_JOBS", jobs))
    seconds = float(os.environ.get("DRAINPOOL_CHAOS_SECONDS", seconds))
    seed = int(os.environ.get("DRAINPOOL_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    return jobs, seconds, seed


def check(result: ChaosResult) -> None:
    problems = verify(result)
    assert not problems, f"{result.summary()}\n" + "\n".join(problems[:50])
    # The run did what it is for: reloads, stops and kills all happened.
    assert {"term", "kill"} <= {lt.ended for lt in result.lifetimes}, result.summary()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_sqlite_nothing_lost(factory: DaemonFactory, tmp_path: Path) -> None:
    """Mixed jobs under a seeded schedule of reloads, bad configs, SIGTERM and kill -9.

    What must hold at the end (each is one check in tests/support/chaos_verify.py):

    - Nothing lost: the queue holds nothing ready, delayed or leased, and every
      job number either logged `done` or is in the dead-letter list.
    - Dead only for a reason: a doomed job (it fails every attempt) dies with
      its own error after exactly max_attempts attempts; any job may also die
      as "lease expired", but only if some daemon was killed (each kill -9
      leaves the jobs it held leased, and an expired lease counts an attempt).
    - Completed twice only where explained. A `done` line is unexplained
      unless its lifetime ended by kill -9 (the task finished but the ack may
      not have been committed) or that lifetime's daemon logged
      `abandoned job ID` for it (the late result of an abandoned task is
      logged by the task but ignored by the daemon). A job may have at most
      one unexplained `done`, and a dead job none. Interrupted, cancelled and
      failed runs are re-deliveries, not completions, and are allowed.
    - One end per attempt: a (job, attempt) pair logs `done` or `failed` at
      most once, unless the job was abandoned (an abandoned attempt is
      released, so it is delivered again under the same number).
    - The daemon's own counts agree with the log, per lifetime. The task log
      is split into lifetimes by a marker line the test writes before each
      start (the previous daemon has exited by then, so no line can land on
      the wrong side). For a lifetime that ended by SIGTERM, the daemon logged
      `pool P generation N ended: completed a, failed b, interrupted c, ...`
      for every generation; summed, start lines == a + b + c + abandoned, and
      done/failed/interrupted lines equal a/b/c, except that abandoned runs
      may add lines the daemon does not count (at most one each). A killed
      lifetime logged only the generations that ended before the kill, so
      its starts are at least their outcomes. The last daemon's Prometheus
      counters, read once the queue is empty, agree per task the same way.
    - Exit codes: 0 or 1 for a stop (1 only if something was abandoned), 0
      for the final stop of an idle daemon; no traceback in any daemon log.
    """
    jobs, seconds, seed = chaos_parameters()
    check(run_chaos(factory, tmp_path, jobs=jobs, seconds=seconds, seed=seed))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_redis_nothing_lost(factory: DaemonFactory, tmp_path: Path) -> None:
    """The same run and the same checks with the queue in a real redis-server.

    Smaller by default (CI time); the same environment variables size it.
    """
    jobs, seconds, seed = chaos_parameters(jobs=1000, seconds=25)
    with redis_servers(tmp_path / "redis") as start_redis:
        url = start_redis().url
        check(run_chaos(factory, tmp_path, jobs=jobs, seconds=seconds, seed=seed, queue_url=url))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_postgres_nothing_lost(factory: DaemonFactory, tmp_path: Path) -> None:
    """The same run and the same checks with the queue in a real PostgreSQL cluster.

    Sized as the Redis run; the same environment variables size it.
    """
    jobs, seconds, seed = chaos_parameters(jobs=1000, seconds=25)
    with postgres_servers(tmp_path / "postgres") as start_postgres:
        url = start_postgres().url()
        check(run_chaos(factory, tmp_path, jobs=jobs, seconds=seconds, seed=seed, queue_url=url))
