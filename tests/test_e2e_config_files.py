"""A config path that is not a config file, and environment overrides that are wrong.

Issue 23, items 6 and 12. The supervisor reads its config on its own loop, so a
FIFO, /dev/zero or a directory swapped in under the config's name must be
refused (one line, exit 78 from `drainpool reload`) without blocking the loop or
exhausting memory; an override with a problem names the variable, not a line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from drainpool.configchecks import MAX_CONFIG_BYTES

from tests.support.daemon import REPO, DaemonFactory, base_config, render_config

QUIET = {"reload": {"watch": False}}


def swap_link(link: Path, target: Path) -> None:
    """Point the symlink `link` at `target` in one rename, as a ConfigMap update does."""
    new = link.with_name(f".{link.name}.new")
    new.symlink_to(target)
    os.replace(new, link)


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`drainpool check-config` with a deadline: a blocking read fails the test, not hangs it."""
    return subprocess.run(
        [sys.executable, "-m", "drainpool", "check-config", "--config", str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_config_swapped_for_a_fifo_a_device_or_a_directory_is_a_rejected_reload(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    real = factory.config("real.toml", **QUIET)
    link = tmp_path / "drainpool.toml"
    link.symlink_to(real)
    daemon = factory.start(link)
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    huge.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    for target, why in (
        (fifo, "not a regular file (a FIFO)"),
        (Path("/dev/zero"), "not a regular file (a character device)"),
        (tmp_path, "not a regular file (a directory)"),
        (huge, f"larger than {MAX_CONFIG_BYTES} bytes"),
    ):
        swap_link(link, target)
        result = factory.cli("reload", "--pid", str(daemon.pid), "--timeout", "30")
        assert result.returncode == 78, (target, result.stderr, daemon.log())
        assert why in result.stderr and str(link) in result.stderr
        assert daemon.get("/healthz") == (200, "ok\n")
        checked = check_config(link)
        assert checked.returncode == 78 and why in checked.stderr, checked.stderr
        assert len(checked.stderr.splitlines()) == 1
    swap_link(link, real)
    assert factory.cli("reload", "--pid", str(daemon.pid)).returncode == 0
    daemon.terminate()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DRAINPOOL_POOL__WORKERS__X", "1"), ("drainpool_pool__workers", "abc")],
)
def test_a_bad_environment_override_names_the_variable(
    factory: DaemonFactory, tmp_path: Path, variable: str, value: str
) -> None:
    config = factory.config()
    checked = check_config(config, {variable: value})
    assert checked.returncode == 78
    named = f"drainpool: config error: environment {variable}: pool.workers"
    assert checked.stderr.startswith(named), checked.stderr
    assert str(config) not in checked.stderr, "the file is not at fault"
    daemon = factory.start(config, ready=False, env={variable: value})
    assert daemon.wait_exit() == 78
    assert f"environment {variable}: pool.workers" in daemon.log()


def test_a_text_config_within_the_limit_still_loads(tmp_path: Path) -> None:
    config = tmp_path / "drainpool.toml"
    text = render_config(base_config(tmp_path))
    config.write_text(text + "# " + "x" * (MAX_CONFIG_BYTES - len(text) - 3) + "\n")
    assert config.stat().st_size == MAX_CONFIG_BYTES
    assert check_config(config).returncode == 0
