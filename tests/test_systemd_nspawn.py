"""The unit under a real systemd 252: a Debian 12 container booted by systemd-nspawn.

First the harness itself, with a stand-in Type=notify service that speaks
through daemon.systemd.Notifier (READY gating, watchdog, EXTEND_TIMEOUT_USEC);
then drainpool, installed from a wheel into /opt/drainpool/venv and run by
systemd/drainpool.service copied in unchanged.

Every wait polls a condition with a deadline. The one that compares against
the clock (the stop that outlives TimeoutStopSec) waits for the timeout to
have passed and then checks the state: a slow machine only makes it longer.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployfiles import REPO
from tests.support.nspawn import HOST_MOUNT, Container, Unavailable, booted, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROBE_UNIT = """\
[Unit]
Description=Type=notify stand-in driven by daemon.systemd.Notifier

[Service]
Type=notify
Environment=PYTHONPATH={mount}/probe
ExecStart=/usr/bin/python3 {mount}/probe/notify_probe.py
RuntimeDirectory=probe
WatchdogSec={watchdog}
TimeoutStopSec=3s
{extra}
"""


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host directory mounted read-only at HOST_MOUNT inside the container."""
    stage = tmp_path_factory.mktemp("nspawn-stage")
    probe = stage / "probe"
    (probe / "daemon").mkdir(parents=True)
    shutil.copy(REPO / "daemon" / "systemd.py", probe / "daemon" / "systemd.py")
    shutil.copy(REPO / "tests" / "support" / "notify_probe.py", probe / "notify_probe.py")
    return stage


@pytest.fixture(scope="module")
def container(stage: Path) -> Iterator[Container]:
    log = stage.parent / "nspawn.log"
    try:
        with booted(stage, log) as box:
            yield box
    except Unavailable as exc:
        pytest.skip(f"no systemd-nspawn container here: {exc}")


def _install_probe(container: Container, name: str, watchdog: str = "0", extra: str = "") -> str:
    unit = f"{name}.service"
    text = PROBE_UNIT.format(mount=HOST_MOUNT, watchdog=watchdog, extra=extra)
    container.put(f"/etc/systemd/system/{unit}", text)
    container.run(["systemctl", "daemon-reload"])
    return unit


def _run_probe(container: Container, unit: str) -> str:
    """Start the probe, let it send READY=1, and return its main pid."""
    container.run(["systemctl", "start", "--no-block", unit])
    until(
        lambda: container.run(["test", "-d", "/run/probe"], check=False).returncode == 0,
        60,
        f"{unit}'s runtime directory",
    )
    container.run(["touch", "/run/probe/go"])
    until(lambda: container.show(unit, "ActiveState")["ActiveState"] == "active", 60, "active")
    return container.show(unit, "MainPID")["MainPID"]


# --- the harness, with a stand-in service ------------------------------------------------


def test_the_container_runs_systemd_252_as_pid_1(container: Container) -> None:
    assert container.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    state = container.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded"), container.run(["systemctl", "--failed"]).stdout
    version = container.run(["systemctl", "--version"]).stdout.split()[1]
    assert version == "252"


def test_start_returns_only_after_ready(container: Container, tmp_path: Path) -> None:
    unit = _install_probe(container, "probe-ready")
    starter = container.popen(["systemctl", "start", unit], tmp_path / "start.out")
    try:
        until(
            lambda: container.show(unit, "ActiveState")["ActiveState"] == "activating",
            60,
            "the probe to be activating",
        )
        # The probe has not sent READY=1 (it waits for `go`): start cannot be done.
        assert starter.poll() is None
        assert container.show(unit, "ActiveState")["ActiveState"] == "activating"
        container.run(["touch", "/run/probe/go"])
        assert starter.wait(timeout=60) == 0
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    props = container.show(unit, "ActiveState", "StatusText", "MainPID")
    assert props["ActiveState"] == "active"
    assert props["StatusText"] == f"probe running as pid {props['MainPID']}"
    container.run(["systemctl", "stop", unit])
    props = container.show(unit, "ActiveState", "Result")
    assert props == {"ActiveState": "inactive", "Result": "success"}


def test_the_watchdog_is_fed_by_the_loop_and_bites_when_it_hangs(container: Container) -> None:
    unit = _install_probe(container, "probe-watchdog", watchdog="2s")
    pid = _run_probe(container, unit)

    def pings() -> int:
        out = container.run(["cat", "/run/probe/pings"], check=False).stdout.strip()
        return int(out or 0)

    # Five pings at 1 s intervals span two whole WatchdogSec=2s periods.
    until(lambda: pings() >= 5, 120, "five watchdog pings")
    props = container.show(unit, "ActiveState", "MainPID", "NRestarts")
    assert props == {"ActiveState": "active", "MainPID": pid, "NRestarts": "0"}

    container.run(["systemctl", "kill", "--kill-who=main", "--signal=SIGUSR1", unit])
    until(lambda: container.show(unit, "Result")["Result"] == "watchdog", 120, "the watchdog")
    container.run(["systemctl", "reset-failed", unit], check=False)


@pytest.mark.parametrize(
    ("extend", "result"), [(None, "timeout"), ("60", "success")], ids=["plain", "extended"]
)
def test_extend_timeout_lets_a_drain_outlive_timeout_stop_sec(
    container: Container, extend: str | None, result: str
) -> None:
    extra = "Environment=PROBE_HOLD=1" + (f"\nEnvironment=PROBE_EXTEND={extend}" if extend else "")
    unit = _install_probe(container, f"probe-stop-{result}", extra=extra)
    _run_probe(container, unit)

    container.run(["systemctl", "stop", "--no-block", unit])
    stop_sent = time.monotonic()
    until(
        lambda: container.show(unit, "StatusText")["StatusText"] == "probe stopping",
        60,
        "STOPPING=1 to arrive",
    )
    # Past TimeoutStopSec=3s (with a second to spare) the unit is either still
    # draining (extended) or already killed (plain).
    until(lambda: time.monotonic() - stop_sent > 4.0, 10, "TimeoutStopSec to pass")
    state = container.show(unit, "ActiveState")["ActiveState"]
    if extend:
        assert state == "deactivating"
        container.run(["touch", "/run/probe/exit"])
    until(
        lambda: container.show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed"),
        120,
        "the probe to stop",
    )
    assert container.show(unit, "Result")["Result"] == result
    container.run(["systemctl", "reset-failed", unit], check=False)
