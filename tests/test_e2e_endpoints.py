"""The HTTP endpoint of the real daemon: /healthz, /readyz, TLS, and its port.

/readyz answers 503 while the pool drains (a stop or a reload) and 200 again
once the next generation runs; /healthz stays 200 through both, and turns 503
only when the supervisor's loop really stops turning, which the test causes
by giving the loop a config file that blocks when read (a FIFO nobody writes).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from drainpool.supervisor import STALL_SECONDS

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

GATE = {"gate": "tests.support.tasks:gate"}


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Prober:
    """Asks /healthz and /readyz over and over on a thread, and keeps every answer."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.answers: dict[str, list[int]] = {"/healthz": [], "/readyz": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path, codes in self.answers.items():
                with contextlib.suppress(OSError):  # refused once the daemon has exited
                    codes.append(get(self.base + path)[0])
            self._stop.wait(0.02)  # pacing, not a check

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def gate_job(factory: DaemonFactory, config: Path, release: Path) -> None:
    enqueue(factory, config, "gate", {"release": str(release)})


def wait_running(daemon: Daemon, task: str) -> None:
    wait_until(
        lambda: any(r["task"] == task for p in daemon.status()["pools"] for r in p["running"]),
        what=f"{task} running",
    )


def test_readyz_is_503_while_draining_and_healthz_stays_200(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    # A long grace: the gate task, which ignores the event, decides when each drain ends.
    sections = {"reload": {"watch": False}, "shutdown": {"grace_seconds": 120.0}, "tasks": GATE}
    config = factory.config(**sections)
    daemon = factory.start(config)
    release = tmp_path / "release"
    with Prober(daemon.port) as prober:
        assert daemon.get("/readyz") == (200, "ready\n")
        gate_job(factory, config, release)
        wait_running(daemon, "gate")
        write_atomic(config, render_config(base_config(tmp_path, **sections, pool={"workers": 5})))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: daemon.get("/readyz")[0] == 503, what="/readyz 503 in the reload")
        assert daemon.status()["state"] == "draining"
        assert daemon.get("/healthz") == (200, "ok\n")
        release.touch()
        wait_until(lambda: daemon.get("/readyz")[0] == 200, what="/readyz 200 after the reload")
        assert daemon.status()["pools"][0]["generation"] == 2

        release.unlink()
        gate_job(factory, config, release)
        wait_running(daemon, "gate")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: daemon.get("/readyz")[0] == 503, what="/readyz 503 in the stop")
        assert daemon.status()["state"] == "draining"
        assert daemon.get("/healthz") == (200, "ok\n")
        release.touch()
        assert daemon.wait_exit() == 0
    assert prober.answers["/healthz"] and set(prober.answers["/healthz"]) == {200}
    # The 503s are proven by the waits above; the prober, pacing itself, may miss a short
    # drain, so it only proves that /readyz never answered anything else.
    assert 200 in prober.answers["/readyz"] and set(prober.answers["/readyz"]) <= {200, 503}


def test_healthz_is_503_while_the_supervisor_loop_is_stuck(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    # A reload imports new task modules on the loop's own thread; one whose import blocks
    # (here on a FIFO without a writer, as on a hung network file system) stalls the loop.
    # The HTTP thread keeps answering. (A config path that is a FIFO no longer blocks:
    # it is refused before it is read; tests/test_e2e_config_attacks.py.)
    fifo = tmp_path / "import.fifo"
    os.mkfifo(fifo)
    (tmp_path / "stall_on_import.py").write_text(
        f"with open({str(fifo)!r}) as fifo:\n    fifo.read()\n\n\ndef task(payload):\n"
        "    return None\n"
    )
    config = factory.config(reload={"watch": False})
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    daemon = factory.start(config, env=env)
    stalling = base_config(tmp_path, reload={"watch": False})
    stalling["tasks"]["stall"] = "stall_on_import:task"
    write_atomic(config, render_config(stalling))
    daemon.signal(signal.SIGHUP)
    assert daemon.get("/healthz") == (200, "ok\n")
    wait_until(
        lambda: daemon.get("/healthz") == (503, "supervisor loop stalled\n"),
        timeout=STALL_SECONDS + 30,
        what="/healthz 503",
    )
    with open(fifo, "w") as writer:  # unblocks the import, and so the reload
        writer.write("")
    daemon.wait_log(r"reload applied")
    wait_until(lambda: daemon.get("/healthz")[0] == 200, what="/healthz 200 again")
    daemon.terminate()


def test_metrics_over_tls(factory: DaemonFactory, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = factory.config(metrics={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    daemon = factory.start(config)
    match = daemon.wait_log(r"metrics on (https://127\.0\.0\.1:\d+)/metrics")
    base = match.group(1)
    trusted = ssl.create_default_context(cafile=str(cert))  # checks the name too
    # A client that connects and never starts its handshake must not hold up the others.
    with socket.create_connection(("127.0.0.1", daemon.port)):
        code, body = get(f"{base}/metrics", trusted)
        assert code == 200
        assert "drainpool_build_info{" in body
        assert get(f"{base}/healthz", trusted) == (200, "ok\n")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"{base}/metrics")  # not trusted by default
    with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP gets no answer
        get(f"http://127.0.0.1:{daemon.port}/metrics")
    daemon.terminate()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def bindable(port: int) -> bool:
    """True if nothing listens on the port (SO_REUSEADDR, as any restarting server sets)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        probe.listen()
        return True


def test_endpoint_moves_on_reload_and_frees_its_ports(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    first = free_port()
    second = wait_until(lambda: (port := free_port()) != first and port, what="a second port")
    sections = {"reload": {"watch": False}}
    config = factory.config(**sections, metrics={"host": "127.0.0.1", "port": first})
    daemon = factory.start(config)
    assert daemon.port == first
    assert get(f"http://127.0.0.1:{first}/healthz") == (200, "ok\n")
    moved = base_config(tmp_path, **sections, metrics={"host": "127.0.0.1", "port": second})
    write_atomic(config, render_config(moved))
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(rf"metrics on http://127\.0\.0\.1:{second}/metrics")
    assert get(f"http://127.0.0.1:{second}/healthz") == (200, "ok\n")
    status = json.loads(get(f"http://127.0.0.1:{second}/api/status")[1])
    assert status["pools"][0]["generation"] == 1, "a new address must not restart the pool"
    assert refused(first) and bindable(first)  # the old server is gone, in the same process
    daemon.terminate()
    assert refused(second) and bindable(second)


def test_unknown_path_is_404(factory: DaemonFactory) -> None:
    daemon = factory.start(factory.config())
    assert daemon.get("/nothing-here") == (404, "not found\n")


def test_readyz_is_503_while_the_queue_is_unreachable(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = factory.start(factory.config())
    assert daemon.get("/readyz")[0] == 200
    database = tmp_path / "queue.db"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{database}{suffix}", tmp_path / f"moved{suffix}")
    database.mkdir()  # a directory where the database was: every open fails until it goes
    wait_until(lambda: daemon.get("/readyz") == (503, "not ready\n"), what="/readyz 503")
    assert daemon.get("/healthz") == (200, "ok\n")  # the daemon itself is fine: no restart
    status = daemon.status()
    assert status["queue"] is None and "queue.db" in status["queue_problem"]
    assert "drainpool_queue_jobs" not in daemon.get("/metrics")[1]
    shown = factory.cli("status", "--pid", str(daemon.pid))
    assert re.search(r"^queue        unavailable: .*queue\.db", shown.stdout, re.M), shown
    # The daemon never creates an empty database in place of a lost one (README, Queue):
    # the fault clears when the operator puts the file back.
    database.rmdir()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(tmp_path / f"moved{suffix}", f"{database}{suffix}")
    wait_until(lambda: daemon.get("/readyz")[0] == 200, what="/readyz 200 again")
    assert daemon.status()["queue"]["ready"] == 0
