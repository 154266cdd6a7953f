"""`drainpool status` against a real daemon: the table, --json, --watch on a terminal."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import (
    REPO,
    Daemon,
    DaemonFactory,
    base_config,
    enqueue,
    render_config,
    write_atomic,
)
from tests.support.net import free_port
from tests.support.tls import self_signed
from tests.support.waiting import wait_until

CLEAR = b"\033[H\033[J"  # cursor home, clear screen: how --watch redraws on a terminal


def reload(daemon: Daemon, config: Path, text: str) -> dict[str, Any]:
    seq = daemon.status()["reload"]["seq"]
    write_atomic(config, text)
    daemon.signal(signal.SIGHUP)
    return wait_until(
        lambda: (s := daemon.status())["reload"]["seq"] > seq and s["state"] == "running" and s,
        what="the reload's result",
    )


def status_lines(factory: DaemonFactory, *args: str, config: Path | None = None) -> list[str]:
    done = factory.cli("status", *args, config=config)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_status_table_of_a_live_daemon(factory: DaemonFactory, tmp_path: Path) -> None:
    sections: dict[str, dict[str, Any]] = {
        "reload": {"watch": False},
        "queue": {"max_attempts": 1},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }
    config = factory.config(**sections)
    daemon = factory.start(config)
    enqueue(factory, config, "fail")
    enqueue(factory, config, "noop", {}, "--delay", "3600")
    for _ in range(2):
        enqueue(factory, config, "sleep", {"seconds": 3600})
    wait_until(lambda: daemon.status()["queue"]["dead"] == 1, what="the failed job dead")
    reload(daemon, config, render_config(base_config(tmp_path, **sections, pool={"workers": 3})))
    wait_until(lambda: len(daemon.status()["pools"][0]["running"]) == 2, what="2 sleeps rerun")

    table = status_lines(factory, config=config)  # found through the config's address
    assert table[:4] == [
        "state        running",
        "pool         default: generation 2, 3 workers, 2 in flight",
        "  in flight  sleep: 2",
        "queue        ready 0, delayed 1, leased 2, dead 1",
    ]
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"last reload  applied \(sighup, {when}\)", table[4])
    assert len(table) == 5
    assert status_lines(factory, "--pid", str(daemon.pid)) == table  # found through /proc

    as_json = json.loads("\n".join(status_lines(factory, "--json", config=config)))
    assert as_json["pid"] == daemon.pid
    assert as_json["queue"] == {
        "ready": 0,
        "delayed": 1,
        "leased": 2,
        "dead": 1,
        "oldest_ready_age_seconds": None,
    }

    reload(daemon, config, "[pool]\nworkers = 0\n")  # out of range: rejected, pool untouched
    table = status_lines(factory, "--pid", str(daemon.pid))
    assert table[1] == "pool         default: generation 2, 3 workers, 2 in flight"
    assert re.fullmatch(r"last reload  rejected \(sighup, [^)]+\): .*pool\.workers.*", table[-1])


def test_status_finds_a_tls_endpoint_by_pid(factory: DaemonFactory, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    daemon = factory.start(
        factory.config(metrics={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    )
    table = status_lines(factory, "--pid", str(daemon.pid))
    assert table[0] == "state        running"


def test_status_of_a_process_that_is_no_daemon(factory: DaemonFactory) -> None:
    done = factory.cli("status", "--pid", str(os.getpid()))  # pytest listens on nothing
    assert done.returncode == 1
    assert f"pid {os.getpid()} serves no drainpool endpoint" in done.stderr


class Terminal:
    """A command whose output goes to a pseudo-terminal; collects what it prints."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        self.output = b""

    def read(self) -> bytes:
        """What arrived so far (waits a moment for more, as the pacing of a poll)."""
        ready, _, _ = select.select([self.master], [], [], 0.1)
        if ready:
            with contextlib.suppress(OSError):  # EIO once the command has exited
                self.output += os.read(self.master, 65536)
        return self.output

    def frames(self) -> list[str]:
        return [frame.decode() for frame in self.read().split(CLEAR)[1:]]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def test_status_watch_redraws_in_place_on_a_terminal(factory: DaemonFactory) -> None:
    config = factory.config()
    daemon = factory.start(config)
    argv = [sys.executable, "-m", "drainpool", "status", "--pid", str(daemon.pid), "--watch"]
    terminal = Terminal(argv, factory.tmp)
    try:
        wait_until(lambda: terminal.frames(), what="the first frame")
        first = terminal.frames()[0].splitlines()
        assert first[:2] == [
            "state        running",
            "pool         default: generation 1, 4 workers, 0 in flight",
        ]
        enqueue(factory, config, "sleep", {"seconds": 3600})
        # A later frame, drawn over the first, shows the new job.
        wait_until(
            lambda: "  in flight  sleep: 1" in terminal.frames()[-1], what="a frame with the job"
        )
        assert len(terminal.frames()) >= 2
        terminal.proc.send_signal(signal.SIGINT)  # Ctrl-C: a quiet exit, no traceback
        assert terminal.proc.wait(10) == 130
        assert b"Traceback" not in terminal.read()
    finally:
        terminal.close()
