"""Logs of the real daemon: text by default (for journald), or one JSON object per line.

Task records carry the job id and task name in both formats, and the SIGUSR1
state dump is one record: readable lines in text, one object in JSON.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

from tests.support.daemon import (
    Daemon,
    DaemonFactory,
    base_config,
    enqueue,
    render_config,
    write_atomic,
)
from tests.support.statedump import dump_now
from tests.support.waiting import wait_until

SECTIONS: dict[str, dict[str, Any]] = {
    "reload": {"watch": False},
    "queue": {"max_attempts": 1},
    "tasks": {"say": "tests.support.tasks:say"},
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def start_jobs(factory: DaemonFactory, config: Path, daemon: Daemon) -> dict[str, str]:
    """A task that logs, one that fails, and one that keeps running; their job ids."""
    ids = {
        "say": enqueue(factory, config, "say", {"text": "hello"}),
        "fail": enqueue(factory, config, "fail", {"message": "on purpose"}),
        "sleep": enqueue(factory, config, "sleep", {"seconds": 3600}),
    }
    wait_until(lambda: daemon.status()["queue"]["dead"] == 1, what="the failed job dead")
    wait_until(lambda: daemon.status()["pools"][0]["running"], what="sleep running")
    return ids


def json_records(daemon: Daemon) -> list[dict[str, Any]]:
    """Every line of the daemon's output, each of which must be one JSON object."""
    records = []
    for line in daemon.log().splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        assert ISO_UTC.match(record["time"]), record["time"]
        records.append(record)
    return records


def test_json_logs_one_object_per_line_with_job_and_task(factory: DaemonFactory) -> None:
    config = factory.config(**SECTIONS, log={"format": "json"})
    daemon = factory.start(config)
    ids = start_jobs(factory, config, daemon)
    daemon.signal(signal.SIGUSR1)
    wait_until(
        lambda: any(r["message"].startswith("state dump:") for r in json_records(daemon)),
        what="the state dump",
    )
    records = json_records(daemon)
    said = [r for r in records if r["message"] == "task says hello"]
    assert said == [
        {
            "time": said[0]["time"],
            "level": "INFO",
            "logger": "drainpool.task.say",
            "message": "task says hello",
            "job_id": ids["say"],
            "task": "say",
        }
    ]
    [failed] = [r for r in records if r["level"] == "WARNING" and "failed" in r["message"]]
    assert (failed["job_id"], failed["task"]) == (ids["fail"], "fail")
    assert "DemandedFailure: on purpose" in failed["message"]
    [dump] = [r for r in records if r["message"].startswith("state dump:")]
    lines = dump["message"].splitlines()
    assert len(lines) > 5, "the dump's lines stay inside one JSON object"
    assert any(f"job {ids['sleep']} task sleep attempt 1 running" in line for line in lines)
    assert "  thread MainThread:" in lines
    assert "job_id" not in dump  # the supervisor's record is about no single job
    daemon.terminate()
    assert json_records(daemon)[-1]["message"].startswith("shutdown drain finished")


def test_text_logs_by_default_and_a_reload_can_switch_to_json(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(**SECTIONS)
    daemon = factory.start(config)
    ids = start_jobs(factory, config, daemon)
    log = daemon.log()
    assert re.search(
        rf"^\S+ \S+ INFO drainpool\.task\.say: task says hello \[job {ids['say']} say\]$",
        log,
        re.M,
    )
    assert re.search(rf"WARNING drainpool\.task\.fail: job {ids['fail']} failed .*\]$", log, re.M)
    dump = dump_now(daemon).splitlines()
    assert re.match(r"state dump: running: generation 1, 4 workers, 1 in flight$", dump[0])
    running = rf"  pool default g1: job {ids['sleep']} task sleep attempt 1 running .+"
    assert any(re.fullmatch(running, line) for line in dump)
    assert "  thread MainThread:" in dump
    # The format is applied by a reload without restarting the pool: sleep runs on.
    lines_before = len(daemon.log().splitlines())
    write_atomic(config, render_config(base_config(tmp_path, **SECTIONS, log={"format": "json"})))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reload applied" in daemon.log(), what="reload applied")
    after = [json.loads(line) for line in daemon.log().splitlines()[lines_before:]]
    assert any(r["message"].startswith("reload applied") for r in after)
    status = daemon.status()
    assert status["pools"][0]["generation"] == 1
    assert [r["job_id"] for r in status["pools"][0]["running"]] == [ids["sleep"]]
