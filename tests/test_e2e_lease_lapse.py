"""A job whose lease lapses while its own daemon still runs it is not run twice (issue 23).

The daemon is stopped (SIGSTOP) for longer than its lease while a job runs;
when it goes on (SIGCONT), its dispatcher finds that job due again. Before,
it fetched the job as new work: the job ran several times in one daemon, a
worker thread died on a KeyError, and the job ended dead although it had
completed. Now the daemon keeps the run in progress under the new lease.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.support.daemon import DaemonFactory, enqueue
from tests.support.joblog import count
from tests.support.waiting import wait_until

LEASE_SECONDS = 2
PAUSED_SECONDS = 4  # twice the lease: the job is due again when the daemon goes on


def test_a_lapsed_lease_of_a_running_job_is_kept_not_run_again(
    factory: DaemonFactory, tmp_path: Path, queue_url: str
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(
        pool={"workers": 4},
        queue={"url": queue_url, "lease_seconds": LEASE_SECONDS, "poll_interval_seconds": 0.2},
    )
    daemon = factory.start(config)
    job = enqueue(factory, config, "record", {"log": str(log), "seconds": 8})
    wait_until(lambda: count(log, "start").get(job) == 1, what="the job started")
    daemon.signal(signal.SIGSTOP)
    try:
        time.sleep(PAUSED_SECONDS)  # the setup (a paused daemon), not a check
    finally:
        daemon.signal(signal.SIGCONT)
    daemon.wait_log(rf"job {job} came back while this daemon still holds it")
    wait_until(lambda: count(log, "done").get(job) == 1, what="the job completed", timeout=60)
    shown = json.loads(factory.cli("job", "show", job, "--json", config=config).stdout)
    assert shown["state"] == "completed", shown
    assert count(log, "start") == {job: 1}, "run once, in one daemon"
    assert daemon.metric("drainpool_tasks_started_total", task="record") == 1
    assert daemon.metric("drainpool_tasks_completed_total", task="record") == 1
    assert "Traceback" not in daemon.log() and "KeyError" not in daemon.log()
    daemon.terminate()
