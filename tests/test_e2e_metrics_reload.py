"""A metrics change that cannot be served is a rejected reload; at start it is exit 78.

Issue 23, items 4 and 10: missing TLS files, a port another process holds and a
host that does not resolve, against the real daemon, real SIGHUPs and the real
`drainpool reload` command. The old endpoint must keep serving, the daemon must
never fall back to an address it never bound, and the error names the key.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonFactory
from tests.support.net import free_port
from tests.support.tls import self_signed
from tests.support.waiting import wait_until

QUIET = {"reload": {"watch": False}}  # reloads only when the test says so


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process (this test) listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def reload(factory: DaemonFactory, daemon: Daemon) -> subprocess.CompletedProcess[str]:
    return factory.cli("reload", "--pid", str(daemon.pid), "--timeout", "30")


def serves(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return conn.recv(64).split(b" ")[1] == b"200"


def test_unservable_metrics_changes_are_rejected_and_the_old_endpoint_serves(
    factory: DaemonFactory, tmp_path: Path, held_port: int
) -> None:
    port = free_port()
    config = factory.config(**QUIET, metrics={"port": port})
    daemon = factory.start(config)
    missing = {"port": port, "tls_cert_file": str(tmp_path / "no-cert.pem")}
    for metrics, key in (
        (missing, "metrics.tls_cert_file"),
        ({"port": held_port}, "metrics.port"),
        (missing, "metrics.tls_cert_file"),  # after a refused move: still the first port
        ({"port": port, "host": "bogus.invalid"}, "metrics.host"),
    ):
        factory.config(**QUIET, metrics=metrics)
        result = reload(factory, daemon)
        assert result.returncode == 78, (metrics, result.stdout, result.stderr, daemon.log())
        assert f"rejected: {key}" in result.stderr or f": {key}:" in result.stderr, result.stderr
        assert serves(port), "the old endpoint must keep serving"
        assert daemon.status()["reload"]["result"] == "rejected"
    assert daemon.proc.poll() is None
    assert "cannot start" not in daemon.log()
    daemon.terminate()


def test_metrics_moves_bind_the_new_address_first_and_tls_keeps_the_port(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(**QUIET)  # port 0: any free port
    daemon = factory.start(config)
    first = daemon.port
    cert, key = self_signed(tmp_path)
    factory.config(**QUIET, metrics={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    result = reload(factory, daemon)
    assert result.returncode == 0 and "reload applied" in result.stdout, result.stderr
    # Same address (port 0): the listening socket is handed over, so the port stays.
    daemon.wait_log(rf"metrics on https://127\.0\.0\.1:{first}/metrics")
    second = free_port()
    factory.config(**QUIET, metrics={"port": second})
    result = factory.cli("reload", "--pid", str(daemon.pid))
    assert result.returncode == 0, result.stderr
    assert serves(second)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first), timeout=5).close()
    daemon.terminate()


@pytest.mark.parametrize("problem", ["port_in_use", "tls_cert_missing", "host_unresolvable"])
def test_metrics_problems_at_start_exit_78_naming_the_key(
    factory: DaemonFactory, tmp_path: Path, held_port: int, problem: str
) -> None:
    metrics, key, named = {
        "port_in_use": ({"port": held_port}, "metrics.port", f"127.0.0.1:{held_port}"),
        "tls_cert_missing": (
            {"tls_cert_file": str(tmp_path / "gone.pem")},
            "metrics.tls_cert_file",
            str(tmp_path / "gone.pem"),
        ),
        "host_unresolvable": ({"host": "bogus.invalid"}, "metrics.host", "bogus.invalid"),
    }[problem]
    config = factory.config(metrics=metrics)
    daemon = factory.start(config, ready=False)
    assert daemon.wait_exit() == 78, daemon.log()
    lines = [line for line in daemon.log().splitlines() if key in line]
    assert len(lines) == 1 and named in lines[0], daemon.log()
    assert "Traceback" not in daemon.log()
    if problem != "port_in_use":  # check-config finds it without binding anything
        checked = factory.cli("check-config", config=config)
        assert checked.returncode == 78 and key in checked.stderr and named in checked.stderr
    wait_until(lambda: daemon.notify.count("READY") == 0, what="no READY=1")
