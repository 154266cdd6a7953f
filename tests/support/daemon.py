"""Run the real daemon as a subprocess, with a NOTIFY_SOCKET of the test's own.

Readiness is an event (the READY=1 datagram), never a sleep; output goes to a
file so a full pipe can never block the daemon; every process is killed by
pid at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.waiting import DEFAULT_TIMEOUT, wait_until

REPO = Path(__file__).resolve().parents[2]
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    """TOML text from {"pool": {"workers": 2}, "tasks": {...}} (tables one level deep)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        nested = {}
        for key, value in values.items():
            if isinstance(value, dict):
                nested[key] = value
            else:
                lines.append(f"{key} = {toml_value(value)}")
        for key, table in nested.items():
            lines.append(f"[{section}.{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def base_config(tmp: Path, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A config for tests: port 0, fast polls, the test tasks, a queue in `tmp`."""
    config: dict[str, dict[str, Any]] = {
        "pool": {"workers": 4},
        "shutdown": {"grace_seconds": 10.0},
        "reload": {"watch": True, "debounce_ms": 50},
        "queue": {
            "url": "sqlite:///queue.db",
            "lease_seconds": 30,
            "max_attempts": 3,
            "retry_backoff_seconds": 0.05,
            "poll_interval_seconds": 0.05,
        },
        "metrics": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "INFO"},
        "tasks": {
            "sleep": "drainpool.tasks.examples:sleep",
            "noop": "drainpool.tasks.examples:noop",
            "fail": "drainpool.tasks.examples:fail",
            "stubborn": "drainpool.tasks.examples:stubborn",
            "record": "tests.support.tasks:record",
            "stray": "tests.support.tasks:stray",
        },
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


class NotifyListener:
    """An AF_UNIX datagram socket that collects sd_notify messages."""

    def __init__(self, path: Path | str, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"drainpool-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def wait_for(
        self, key: str, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, str]:
        """Wait for the `count`-th message carrying `key`; return it."""

        def found() -> dict[str, str] | None:
            hits = [m for m in list(self.messages) if key in m]
            return hits[count - 1] if len(hits) >= count else None

        return wait_until(found, timeout, f"{key} #{count} on NOTIFY_SOCKET")

    def count(self, key: str) -> int:
        return sum(1 for m in list(self.messages) if key in m)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(1)


class Daemon:
    """One `python -m drainpool run` subprocess and ways to look at it."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),  # e.g. nsenter ... --: a command that execs the daemon
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
        self.notify = NotifyListener(workdir / f"notify-{time.monotonic_ns()}.sock")
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NOTIFY_SOCKET": self.notify.address,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        full_env.pop("DRAINPOOL_CONFIG", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "drainpool", "run", "--config", str(config)],
            cwd=workdir,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        self._port: int | None = None

    # -- life ---------------------------------------------------------------

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> Daemon:
        self.notify.wait_for("READY", 1, timeout)
        return self

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def reload_edited_config(self) -> None:
        """SIGHUP after an edit of the config file, and wait until the edit is in effect.

        With `reload.watch` on, the watcher reloads the edit too: of the two attempts
        one is "applied" and the other, later one "unchanged". Waiting for "applied"
        alone missed it when the second came before the test looked (seen in CI).
        """
        before = self.status()["reload"]["seq"]
        self.signal(signal.SIGHUP)

        def in_effect() -> bool:
            record = self.status()["reload"]
            assert record["result"] != "rejected", record
            return record["seq"] > before and record["result"] in ("applied", "unchanged")

        wait_until(in_effect, what="the edited config in effect")

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon {self.pid} did not exit within {timeout}s") from None

    def terminate(self) -> None:
        """SIGTERM, and expect the clean stop: exit 0, every job settled."""
        self.signal(signal.SIGTERM)
        assert self.wait_exit() == 0, self.log()

    def stop(self) -> None:
        """Kill by pid if still running; always release the files and socket."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
        self.notify.close()

    # -- looking in ------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> re.Match[str]:
        return wait_until(lambda: re.search(pattern, self.log()), timeout, f"log /{pattern}/")

    @property
    def port(self) -> int:
        if self._port is None:
            match = self.wait_log(r"metrics on https?://[^:]+:(\d+)/metrics")
            self._port = int(match.group(1))
        return self._port

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/api/status")
        assert code == 200, body
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        """The exposition as {'name{labels}': value}, labels as printed."""
        code, body = self.get("/metrics")
        assert code == 200
        samples = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        total = 0.0
        for key, value in self.metrics().items():
            sample, _, rest = key.partition("{")
            if sample != name:
                continue
            have = dict(LABEL.findall(rest))
            if all(have.get(k) == v for k, v in labels.items()):
                total += value
        return total


class DaemonFactory:
    """Starts daemons for one test and kills all of them at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Daemon] = []

    def config(self, name: str = "drainpool.toml", **overrides: dict[str, Any]) -> Path:
        path = self.tmp / name
        write_atomic(path, render_config(base_config(self.tmp, **overrides)))
        return path

    def start(
        self, config: Path, *, ready: bool = True, env: dict[str, str] | None = None
    ) -> Daemon:
        daemon = Daemon(config, self.tmp, env)
        self.started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    def cli(
        self, *args: str, config: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a `drainpool` command to completion (enqueue, queue stats, reload...)."""
        argv = [sys.executable, "-m", "drainpool", *args]
        if config is not None:
            argv += ["--config", str(config)]
        return subprocess.run(
            argv,
            cwd=self.tmp,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def close(self) -> None:
        for daemon in self.started:
            daemon.stop()


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, as editors do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def daemons(tmp: Path) -> Iterator[DaemonFactory]:
    factory = DaemonFactory(tmp)
    try:
        yield factory
    finally:
        factory.close()


def queue_stats(factory: DaemonFactory, config: Path) -> dict[str, Any]:
    result = factory.cli("queue", "stats", "--json", config=config)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def enqueue(
    factory: DaemonFactory, config: Path, task: str, payload: Any = None, *options: str
) -> str:
    """`drainpool enqueue TASK JSON [OPTIONS]` through the real command; the job's id."""
    done = factory.cli("enqueue", task, json.dumps(payload or {}), *options, config=config)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
