"""The unit under a real systemd 252: a Debian 12 container booted by systemd-nspawn.

First the harness itself, with a stand-in Type=notify service that speaks
through drainpool.systemd.Notifier (READY gating, watchdog, EXTEND_TIMEOUT_USEC);
then drainpool, installed from a wheel into /opt/drainpool/venv and run by
systemd/drainpool.service copied in unchanged.

Every wait polls a condition with a deadline. The one that compares against
the clock (the stop that outlives TimeoutStopSec) waits for the timeout to
have passed and then checks the state: a slow machine only makes it longer.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployfiles import PACKAGE, REPO, UNIT
from tests.support.nspawn import HOST_MOUNT, Container, Unavailable, booted, until, wheelhouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROBE_UNIT = """\
[Unit]
Description=Type=notify stand-in driven by drainpool.systemd.Notifier

[Service]
Type=notify
Environment=PYTHONPATH={mount}/probe
ExecStart=/usr/bin/python3 {mount}/probe/notify_probe.py
RuntimeDirectory=probe
WatchdogSec={watchdog}
TimeoutStopSec={stop_timeout}s
{extra}
"""
# Generous, so that a starved probe still answers SIGTERM well inside it.
PROBE_STOP_TIMEOUT = 6


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host directory mounted read-only at HOST_MOUNT inside the container."""
    stage = tmp_path_factory.mktemp("nspawn-stage")
    probe = stage / "probe"
    (probe / "drainpool").mkdir(parents=True)
    shutil.copy(PACKAGE / "systemd.py", probe / "drainpool" / "systemd.py")
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
    text = PROBE_UNIT.format(
        mount=HOST_MOUNT, watchdog=watchdog, stop_timeout=PROBE_STOP_TIMEOUT, extra=extra
    )
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
    unit = _install_probe(container, "probe-watchdog", watchdog="4s")
    pid = _run_probe(container, unit)

    def pings() -> int:
        out = container.run(["cat", "/run/probe/pings"], check=False).stdout.strip()
        return int(out or 0)

    # Four pings, one every 2 s, span one and a half WatchdogSec=4s periods.
    until(lambda: pings() >= 4, 120, "four watchdog pings")
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
    # Past TimeoutStopSec (with a second to spare) the unit is either still
    # draining (extended) or already killed (plain).
    until(
        lambda: time.monotonic() - stop_sent > PROBE_STOP_TIMEOUT + 1,
        PROBE_STOP_TIMEOUT + 10,
        "TimeoutStopSec to pass",
    )
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


# --- drainpool under systemd/drainpool.service --------------------------------------------

SERVICE = "drainpool.service"
VENV = "/opt/drainpool/venv"
DRAINPOOL = f"{VENV}/bin/drainpool"
CONFIG = "/etc/drainpool/drainpool.toml"
# The queue and metrics keep their defaults: sqlite:////var/lib/drainpool/queue.db
# (the unit's StateDirectory) and 127.0.0.1:9468 inside the container.
TEST_CONFIG = """\
[pool]
workers = {workers}

[shutdown]
grace_seconds = 5.0

[reload]
watch = {watch}

[tasks]
sleep = "drainpool.tasks.examples:sleep"
"""
# The container's own python3 fetches an endpoint: no curl in minbase.
HTTP_GET = """\
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:9468" + sys.argv[1], timeout=10) as r:
        print(r.status)
        sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""


def _config(workers: int = 2, watch: bool = False) -> str:
    return TEST_CONFIG.format(workers=workers, watch=str(watch).lower())


@pytest.fixture(scope="module")
def installed(container: Container, stage: Path) -> Container:
    """The project in /opt/drainpool/venv and the unit file, copied in unchanged."""
    wheels = stage / "wheels"
    wheels.mkdir()
    wheel = wheelhouse(REPO, wheels, stage.parent / "pip.log")
    container.run(["python3", "-m", "venv", VENV])
    pip = [f"{VENV}/bin/pip", "install", "--no-index", "--find-links", f"{HOST_MOUNT}/wheels"]
    container.run([*pip, f"{HOST_MOUNT}/wheels/{wheel.name}"], timeout=600)
    shutil.copy(UNIT, stage / SERVICE)
    container.run(["install", "--mode=644", f"{HOST_MOUNT}/{SERVICE}", "/etc/systemd/system/"])
    assert container.run(["cat", f"/etc/systemd/system/{SERVICE}"]).stdout == UNIT.read_text()
    container.run(["systemctl", "daemon-reload"])
    return container


@pytest.fixture
def box(installed: Container) -> Iterator[Container]:
    """A stopped unit, an empty state directory and the test config."""
    _reset(installed)
    installed.put(CONFIG, _config())
    yield installed
    _reset(installed)


def _reset(container: Container) -> None:
    container.run(["systemctl", "stop", SERVICE], check=False)
    container.run(["systemctl", "reset-failed", SERVICE], check=False)
    container.run(["rm", "-rf", "/var/lib/drainpool", "/var/lib/private/drainpool"])


def _get(container: Container, path: str) -> tuple[int, str]:
    out = container.run(["python3", "-c", HTTP_GET, path]).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def _metric(container: Container, sample: str) -> float | None:
    """The value of one exposition line, e.g. 'drainpool_pool_generation{pool="default"}'."""
    _, body = _get(container, "/metrics")
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def _drainpool(container: Container, *args: str) -> str:
    return container.run([DRAINPOOL, *args, "--config", CONFIG]).stdout


def _start(container: Container) -> str:
    container.run(["systemctl", "start", SERVICE])
    return container.show(SERVICE, "MainPID")["MainPID"]


def test_start_returns_after_ready_with_a_status_line(box: Container) -> None:
    pid = _start(box)
    # READY=1 comes only once the pool runs and the endpoint listens.
    assert _get(box, "/readyz")[0] == 200
    props = box.show(SERVICE, "ActiveState", "SubState", "StatusText")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert re.match(r"running\b.*generation 1\b.*\b2 workers\b.*\b0 in flight", props["StatusText"])
    # The hardened unit runs it as an unprivileged dynamic user.
    uids = box.run(["grep", "^Uid:", f"/proc/{pid}/status"]).stdout.split()[1:]
    assert "0" not in uids


def test_reload_applies_a_changed_config_in_the_same_process(box: Container) -> None:
    pid = _start(box)
    box.put(CONFIG, _config(workers=3))
    box.run(["systemctl", "reload", SERVICE])
    props = box.show(SERVICE, "ActiveState", "MainPID", "StatusText")
    assert (props["ActiveState"], props["MainPID"]) == ("active", pid)
    assert re.match(r"running\b.*generation 2\b.*\b3 workers\b", props["StatusText"])
    assert _metric(box, 'drainpool_pool_workers{pool="default"}') == 3
    assert _metric(box, 'drainpool_config_reloads_total{result="applied"}') == 1


def test_reload_of_an_invalid_config_fails_and_the_old_pool_runs_on(box: Container) -> None:
    pid = _start(box)
    box.put(CONFIG, _config(workers=0))
    cursor = box.cursor()
    result = box.run(["systemctl", "reload", SERVICE], check=False)
    assert result.returncode != 0
    # systemd records ExecReload's verdict, the daemon's log says why.
    journal = until(
        lambda: (text := box.journal(SERVICE, after=cursor)) and "status=78" in text and text,
        60,
        "the rejection in the journal",
    )
    assert re.search(r"drainpool\.toml\b.*\bworkers\b", journal), journal
    props = box.show(SERVICE, "ActiveState", "MainPID", "StatusText")
    assert (props["ActiveState"], props["MainPID"]) == ("active", pid)
    assert re.match(r"running\b.*generation 1\b.*\b2 workers\b", props["StatusText"])
    assert _get(box, "/readyz")[0] == 200
    assert _metric(box, 'drainpool_config_reloads_total{result="rejected"}') == 1


def test_an_edit_of_the_watched_file_reloads_without_systemctl(box: Container) -> None:
    box.put(CONFIG, _config(watch=True))
    pid = _start(box)
    box.put(CONFIG, _config(workers=4, watch=True))
    # RELOADING=1 then READY=1: the unit ends up active again, same process.
    until(
        lambda: re.match(
            r"running\b.*generation 2\b.*\b4 workers\b",
            box.show(SERVICE, "StatusText")["StatusText"],
        ),
        60,
        "the edit to be applied",
    )
    props = box.show(SERVICE, "ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": pid}


def test_stop_with_a_task_in_flight_drains_and_requeues_the_job(box: Container) -> None:
    _start(box)
    job = _drainpool(box, "enqueue", "sleep", json.dumps({"seconds": 600})).strip()
    assert job
    until(
        lambda: _metric(box, 'drainpool_tasks_in_flight{pool="default",task="sleep"}') == 1,
        60,
        "the sleep task to run",
    )
    box.run(["systemctl", "stop", SERVICE])
    props = box.show(SERVICE, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    stats = json.loads(_drainpool(box, "queue", "stats", "--json"))
    assert (stats["ready"], stats["leased"], stats["dead"]) == (1, 0, 0)


def test_an_invalid_config_at_start_fails_once_without_a_restart_loop(box: Container) -> None:
    box.put(CONFIG, _config(workers=0))
    assert box.run(["systemctl", "start", SERVICE], check=False).returncode != 0
    props = box.show(SERVICE, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    # A scheduled restart would show as activating/auto-restart instead.
    assert props == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }


def test_a_crash_is_restarted(box: Container) -> None:
    pid = _start(box)
    box.run(["systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", SERVICE])
    until(
        lambda: (
            box.show(SERVICE, "ActiveState", "NRestarts")
            == {"ActiveState": "active", "NRestarts": "1"}
        ),
        60,
        "Restart=on-failure to bring it back",
    )
    assert box.show(SERVICE, "MainPID")["MainPID"] not in ("0", pid)
    assert _get(box, "/readyz")[0] == 200


def test_the_supervisor_loop_feeds_the_watchdog(box: Container) -> None:
    _start(box)

    def last_ping() -> str:
        return box.show(SERVICE, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]

    # Every WATCHDOG=1 moves the timestamp. Two moves after the one seen at
    # start show pings that keep coming (one every WatchdogSec / 2), not one.
    seen = [last_ping()]
    for _ in range(2):
        seen.append(until(lambda: (now := last_ping()) != seen[-1] and now, 120, "a ping", 1.0))
    assert box.show(SERVICE, "ActiveState", "NRestarts") == {
        "ActiveState": "active",
        "NRestarts": "0",
    }
