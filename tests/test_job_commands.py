"""`drainpool job show|wait|list` as a separate process, on SQLite and on Redis (issue 18).

The daemon runs the jobs; every look at them is the real command run beside it,
as a producer's script would, and each exit code is checked. A completed
record's result needs the pool to pass the task's return value at its ack.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonFactory, enqueue
from tests.support.joblog import events
from tests.support.waiting import wait_until

NOT_FOUND = "drainpool: no job {} (never enqueued, or its record expired after retention_seconds)\n"
TASKS = {"whoami": "tests.support.tasks:whoami"}


def job(factory: DaemonFactory, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return factory.cli("job", *args, config=config)


def show(factory: DaemonFactory, config: Path, job_id: str) -> dict[str, Any]:
    done = job(factory, config, "show", job_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def listed(factory: DaemonFactory, config: Path, *options: str) -> list[str]:
    done = job(factory, config, "list", "--json", *options)
    assert done.returncode == 0, done.stderr
    return [record["id"] for record in json.loads(done.stdout)]


def test_show_wait_and_list_a_completed_a_dead_and_a_delayed_job(
    factory: DaemonFactory, queue_url: str
) -> None:
    config = factory.config(queue={"url": queue_url, "max_attempts": 2})
    daemon = factory.start(config)
    done_id = enqueue(factory, config, "sleep", {"seconds": 0.05})
    dead_id = enqueue(factory, config, "fail", {"message": "disk on fire"})
    later_id = enqueue(factory, config, "sleep", {}, "--delay", "3600")

    waited = job(factory, config, "wait", done_id, "--timeout", "60")
    assert (waited.returncode, waited.stderr) == (0, "")
    record = show(factory, config, done_id)
    assert (record["state"], record["task"], record["attempts"]) == ("completed", "sleep", 1)
    assert record["payload"] == {"seconds": 0.05}
    assert (record["worker"]["host"], record["worker"]["pid"]) == (socket.gethostname(), daemon.pid)
    assert record["enqueued_at"] <= record["started_at"] <= record["finished_at"]
    text = job(factory, config, "show", done_id)
    assert text.returncode == 0
    assert "state       completed" in text.stdout.splitlines()
    assert f"worker      {socket.gethostname()} pid {daemon.pid}" in text.stdout

    died = job(factory, config, "wait", dead_id, "--timeout", "60")
    assert died.returncode == 3, died.stderr
    assert died.stdout == ""
    assert f"job {dead_id} is dead: DemandedFailure: disk on fire" in died.stderr
    record = show(factory, config, dead_id)
    assert (record["state"], record["attempts"]) == ("dead", 2)
    assert record["error"] == "DemandedFailure: disk on fire"
    assert "Traceback" in record["traceback"] and "examples.py" in record["traceback"]

    late = job(factory, config, "wait", later_id, "--timeout", "0.3")
    assert late.returncode == 5, late.stderr
    assert f"job {later_id} is still delayed after 0.3 s" in late.stderr
    assert show(factory, config, later_id)["state"] == "delayed"

    assert listed(factory, config) == [later_id, dead_id, done_id]  # newest first
    assert listed(factory, config, "--state", "dead") == [dead_id]
    assert listed(factory, config, "--task", "sleep") == [later_id, done_id]
    assert listed(factory, config, "--limit", "1") == [later_id]
    assert listed(factory, config, "--task", "nothing-by-this-name") == []
    table = job(factory, config, "list").stdout.splitlines()
    assert table[0].split() == ["ID", "STATE", "TASK", "ATTEMPTS", "ENQUEUED", "WORKER", "ERROR"]
    assert [line.split()[:3] for line in table[1:]] == [
        [later_id, "delayed", "sleep"],
        [dead_id, "dead", "fail"],
        [done_id, "completed", "sleep"],
    ]
    assert table[2].endswith("DemandedFailure: disk on fire")

    for action in ("show", "wait"):
        missing = job(factory, config, action, "987654")
        assert (missing.returncode, missing.stdout) == (1, "")
        assert missing.stderr == NOT_FOUND.format("987654")
    daemon.terminate()
    # Last, so that everything above is checked before the pool passes results at the ack.
    done_record = show(factory, config, done_id)
    assert json.loads(waited.stdout) == {"slept": 0.05}  # pool wiring: the result at the ack
    assert done_record["worker"]["pool"] == "default"  # pool wiring: the pool's name at fetch
    assert done_record["result"] == {"slept": 0.05}  # pool wiring
    assert done_record["result_kept"] is True  # pool wiring


USAGE_ERRORS = [
    (("list", "--limit", "0"), "argument --limit"),
    (("list", "--limit", "10001"), "argument --limit"),
    (("list", "--limit", "many"), "argument --limit"),
    (("list", "--state", "finished"), "argument --state"),
    (("wait", "1", "--timeout", "-1"), "argument --timeout"),
    (("wait", "1", "--timeout", "nan"), "argument --timeout"),
    (("wait", "1", "--timeout", "soon"), "argument --timeout"),
    (("show",), "ID"),
    ((), "usage: drainpool job"),
]


def test_bad_options_are_usage_errors_naming_the_option(factory: DaemonFactory) -> None:
    config = factory.config()
    enqueue(factory, config, "sleep", {})
    for args, named in USAGE_ERRORS:
        done = job(factory, config, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert named in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert listed(factory, config, "--limit", "10000") == ["1"]  # the bounds themselves are fine


def test_a_record_that_cannot_be_decoded_is_shown_with_the_reason(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config()
    job_id = enqueue(factory, config, "sleep", {}, "--delay", "3600")
    with sqlite3.connect(tmp_path / "queue.db") as conn:  # as a foreign writer would leave it
        conn.execute(
            "UPDATE jobs SET payload = '{not json', result = '[1,' WHERE id = ?", (job_id,)
        )
    conn.close()
    text = job(factory, config, "show", job_id)
    assert text.returncode == 0, text.stderr
    assert "payload     {not json (payload is not valid JSON: " in text.stdout
    assert "result      [1," in text.stdout
    assert "result note result not readable: is not valid JSON: " in text.stdout
    record = show(factory, config, job_id)
    assert record["payload"] == "{not json"
    assert record["payload_error"].startswith("payload is not valid JSON")
    assert (record["result"], record["result_kept"]) == ("[1,", False)
    assert listed(factory, config) == [job_id]


def test_records_survive_a_kill_9_and_the_job_completes_after_its_lease(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(queue={"url": queue_url, "lease_seconds": 2})
    first = factory.start(config)
    quick = enqueue(factory, config, "sleep", {"seconds": 0})
    assert job(factory, config, "wait", quick, "--timeout", "60").returncode == 0
    slow = enqueue(factory, config, "record", {"log": str(log), "seconds": 30})
    wait_until(lambda: ("start", slow, "1") in events(log), what="the slow job started")
    running = show(factory, config, slow)
    assert (running["state"], running["attempts"]) == ("running", 1)
    assert running["worker"]["pid"] == first.pid

    first.signal(signal.SIGKILL)
    first.wait_exit()
    # The next daemon runs the long job fast once its lease has run out.
    second = factory.start(config, env={"TEST_TIME_SCALE": "0.01"})
    assert show(factory, config, quick)["state"] == "completed"  # kept across the kill
    waited = job(factory, config, "wait", slow, "--timeout", "120")
    assert waited.returncode == 0, waited.stderr
    record = show(factory, config, slow)
    assert (record["state"], record["attempts"]) == ("completed", 2)
    assert record["worker"]["pid"] == second.pid
    assert record["started_at"] == running["started_at"]  # the first start is kept
    assert ("done", slow, "2") in events(log)

    second.terminate()  # and after a clean stop, with no daemon running, still there
    assert [show(factory, config, i)["state"] for i in (quick, slow)] == ["completed"] * 2
    assert show(factory, config, quick)["worker"]["pid"] == first.pid
    assert json.loads(waited.stdout) == "ok"  # pool wiring: the result at the ack


def test_two_daemons_on_one_queue_each_record_names_the_one_that_ran_it(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    # One worker and no reserve each: a busy daemon leases nothing more.
    config = factory.config(
        queue={"url": queue_url}, pool={"workers": 1, "prefetch": 0}, tasks=TASKS
    )
    daemons = {d.pid: d for d in (factory.start(config), factory.start(config))}
    busy = enqueue(factory, config, "record", {"log": str(log), "seconds": 60})
    wait_until(lambda: ("start", busy, "1") in events(log), what="one daemon busy")
    busy_pid = show(factory, config, busy)["worker"]["pid"]
    assert busy_pid in daemons

    other = enqueue(factory, config, "whoami", {"log": str(log)})
    assert job(factory, config, "wait", other, "--timeout", "60").returncode == 0
    ran_on = [int(e[2]) for e in events(log) if e[:2] == ("pid", other)]
    record = show(factory, config, other)
    assert [record["worker"]["pid"]] == ran_on
    assert {busy_pid, record["worker"]["pid"]} == set(daemons)
    for daemon in daemons.values():
        daemon.terminate()
    assert record["result"] == record["worker"]["pid"]  # whoami returns it: pool wiring


def test_the_queue_keys_on_records_reach_the_daemons_queue(
    factory: DaemonFactory, queue_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    queue = {"url": queue_url, "retention_seconds": 3600, "result_max_bytes": 5}
    config = factory.config(queue=queue)
    daemon = factory.start(config)
    small = enqueue(factory, config, "sleep", {"seconds": 0})
    waited = job(factory, config, "wait", small, "--timeout", "60")
    assert (waited.returncode, waited.stdout) == (0, "null\n")
    record = show(factory, config, small)
    assert (record["state"], record["result_kept"]) == ("completed", False)

    # retention_seconds = 0: a completed job's record goes at its ack (a reload reopens the queue).
    factory.config(queue={**queue, "retention_seconds": 0})
    daemon.reload_edited_config()
    gone = enqueue(factory, config, "record", {"log": str(log)})
    wait_until(lambda: ("done", gone, "1") in events(log), what="the job ran")
    wait_until(
        lambda: job(factory, config, "show", gone).stderr == NOT_FOUND.format(gone),
        what="the record removed at the ack",
    )
    assert show(factory, config, small)["state"] == "completed"  # acked before: kept
    daemon.terminate()
    # {"slept":0.0} is 13 bytes: over the cap, so not kept, and the record says why.
    assert record["result_note"] == "result not kept: 13 B > 5 B"  # pool wiring
    assert "result not kept: 13 B > 5 B" in waited.stderr  # pool wiring
