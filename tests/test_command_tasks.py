"""Command tasks against the real daemon: real programs, real signals, real process groups."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from tests.support.daemon import (
    Daemon,
    DaemonFactory,
    base_config,
    queue_stats,
    render_config,
    write_atomic,
)
from tests.support.procs import assert_nothing_left, descendants, group, new_marker, read
from tests.support.waiting import wait_until
from tests.test_e2e_jobs import dead_list
from tests.test_e2e_stop import enqueue_jobs, generation_counts

# Writes its arguments (after the output path) to that path as JSON.
RECORD_ARGV = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


def command_pid(daemon: Daemon, job_id: str = "1") -> int:
    """The pid (and process group id) the daemon logged when it started the job's command."""
    match = daemon.wait_log(rf"command started, pid (\d+): .*\[job {job_id} ")
    return int(match.group(1))


def live(pgid: int) -> list[int]:
    return [p.pid for p in group(pgid) if not p.zombie]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_sleep_60_is_interrupted_by_sigterm(
    factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    config = factory.config(
        pool={"workers": 2, "kind": kind}, tasks={"nap": {"command": ["sleep", "{seconds}"]}}
    )
    enqueue_jobs(factory, config, [{"task": "nap", "payload": {"seconds": 60}}])
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    pid = command_pid(daemon)
    proc = read(pid)
    assert proc is not None and proc.pgrp == pid, "the command leads its own process group"
    assert proc.ppid == daemon.pid, "commands run from the daemon, in either kind of pool"
    seen = descendants(daemon.pid)
    daemon.terminate()
    counts = generation_counts(daemon.log())
    assert (counts["interrupted"], counts["abandoned"]) == (1, 0)
    assert queue_stats(factory, config)["ready"] == 1
    assert group(pid) == [], "the process group is gone"
    assert_nothing_left(seen.values(), marker)


def test_command_ignoring_sigterm_is_killed_at_the_deadline(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    # sh ignores TERM and so does its child (an ignored signal survives fork and exec).
    script = "trap '' TERM; sleep 600 & wait"
    config = factory.config(
        pool={"workers": 2},
        shutdown={"grace_seconds": 1.0},
        tasks={"hold": {"command": ["sh", "-c", script]}},
    )
    enqueue_jobs(factory, config, [{"task": "hold", "payload": {}}])
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    pid = command_pid(daemon)
    wait_until(lambda: len(live(pid)) == 2, what="sh and its sleep in the group")
    leader = read(pid)
    assert leader is not None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 1  # still running at the deadline: abandoned, then killed
    text = daemon.log()
    assert "abandoned job 1 (hold)" in text
    assert generation_counts(text)["interrupted"] == 0
    assert queue_stats(factory, config)["ready"] == 1
    # The leader was reaped by the daemon; the orphaned sleep may linger only as a zombie
    # of init (which does not reap on this machine), never alive.
    assert live(pid) == []
    assert_nothing_left([leader], marker)


def test_failing_command_keeps_its_stderr_in_the_dead_letter(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    script = 'echo "opening $1"; echo "cannot open $1" >&2; exit 3'
    config = factory.config(
        queue={"max_attempts": 1},
        tasks={"open": {"command": ["sh", "-c", script, "sh", "{path}"]}},
    )
    enqueue_jobs(factory, config, [{"task": "open", "payload": {"path": "/nonexistent/a b"}}])
    daemon = factory.start(config)
    wait_until(lambda: dead_list(factory, config), what="job dead")
    (dead,) = dead_list(factory, config)
    assert dead["error"] == "sh exited with code 3; stderr: cannot open /nonexistent/a b"
    assert dead["traceback"] == "cannot open /nonexistent/a b"
    # Both streams went to the log, line by line, with the job's id.
    daemon.wait_log(r"stdout: opening /nonexistent/a b \[job 1 open\]")
    daemon.wait_log(r"stderr: cannot open /nonexistent/a b \[job 1 open\]")
    daemon.terminate()


def test_command_over_its_timeout_fails(factory: DaemonFactory, tmp_path: Path) -> None:
    config = factory.config(
        queue={"max_attempts": 1},
        tasks={"slow": {"command": ["sleep", "60"], "timeout_seconds": 0.5}},
    )
    enqueue_jobs(factory, config, [{"task": "slow", "payload": {}}])
    daemon = factory.start(config)
    pid = command_pid(daemon)
    wait_until(lambda: dead_list(factory, config), what="job dead")
    assert dead_list(factory, config)[0]["error"] == "sleep timed out after 0.5s"
    assert group(pid) == []
    daemon.terminate()


def test_injection_attempts_in_a_payload_are_one_literal_argument(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    canary = tmp_path / "canary"
    hostile = [
        f'"; rm -rf {victim}; echo "',  # the example, aimed at a folder of the test's own
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"x' ; touch {canary} #",
        f"a\nb && touch {canary}",
        f"| touch {canary}",
    ]
    config = factory.config(
        tasks={"argv": {"command": [sys.executable, "-c", RECORD_ARGV, "{out}", "{value}"]}}
    )
    outs = [tmp_path / f"argv-{i}.json" for i in range(len(hostile))]
    jobs = [
        {"task": "argv", "payload": {"out": str(out), "value": value}}
        for out, value in zip(outs, hostile, strict=True)
    ]
    enqueue_jobs(factory, config, jobs)
    daemon = factory.start(config)
    wait_until(lambda: all(out.exists() and out.read_text() for out in outs), what="all ran")
    for out, value in zip(outs, hostile, strict=True):
        assert json.loads(out.read_text()) == [value]
    assert victim.is_dir() and not canary.exists()
    daemon.terminate()


def test_payload_that_cannot_fit_goes_to_the_dead_letters_at_once(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(
        queue={"max_attempts": 3}, tasks={"nap": {"command": ["sleep", "{seconds}"]}}
    )
    payloads = [{}, {"seconds": 1, "extra": "x"}, {"seconds": [1]}, {"seconds": "--help"}, [1]]
    enqueue_jobs(factory, config, [{"task": "nap", "payload": p} for p in payloads])
    daemon = factory.start(config)
    wait_until(lambda: len(dead_list(factory, config)) == 5, what="all dead")
    dead = {d["id"]: d for d in dead_list(factory, config)}
    assert {d["attempts"] for d in dead.values()} == {1}, "never retried"
    prefix = "payload does not fit the command: "
    assert dead["1"]["error"] == prefix + "missing field 'seconds'"
    assert dead["2"]["error"] == prefix + "unexpected field 'extra'"
    assert dead["3"]["error"] == prefix + "field 'seconds' must be a string or a number"
    assert dead["4"]["error"].startswith(prefix + "field 'seconds' starts with '-'")
    assert dead["5"]["error"] == prefix + "the payload must be a JSON object, not list"
    daemon.terminate()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["{program}", "x"], "the program (first argument) cannot be a placeholder"),
        (["no-such-program-drainpool"], "program 'no-such-program-drainpool' is not found"),
        (["echo", "{a.b}"], "placeholders are plain names like {input}"),
        (["echo", "{a"], "expected '}' before end of string"),
    ],
)
def test_bad_command_templates_are_config_errors(
    factory: DaemonFactory, command: list[str], message: str
) -> None:
    config = factory.config(tasks={"bad": {"command": command}})
    result = factory.cli("check-config", config=config)
    assert result.returncode == 78
    assert "tasks.bad" in result.stderr and message in result.stderr, result.stderr


def test_command_gets_its_env_and_cwd_but_not_the_daemons_notify_socket(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    # {{ and }} are literal braces in a template: the shell sees ${NOTIFY_SOCKET:-none}.
    script = 'echo "$GREETING ${{NOTIFY_SOCKET:-none}} $(pwd)"'
    config = tmp_path / "drainpool.toml"
    text = render_config(base_config(tmp_path))
    text += f"[tasks.show]\ncommand = {json.dumps(['sh', '-c', script])}\n"
    text += f'cwd = "{workdir}"\nenv = {{ GREETING = "hello" }}\n'
    write_atomic(config, text)
    enqueue_jobs(factory, config, [{"task": "show", "payload": {}}])
    daemon = factory.start(config)
    assert daemon.notify.count("READY") == 1  # the daemon itself has a NOTIFY_SOCKET
    daemon.wait_log(rf"stdout: hello none {workdir} \[job 1 show\]")
    daemon.terminate()
