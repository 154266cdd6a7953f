"""The wheel holds one top-level package, drainpool, and builds without a warning (issue 17).

The build runs as a user's would: pip with build isolation, so it uses the
setuptools that pyproject.toml pins, not the one in the test environment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.daemon import REPO, base_config, render_config

# What a setuptools or pip warning looks like in the build's verbose output: a
# warning class (SetuptoolsDeprecationWarning, _BetaConfiguration...) or the
# PEP 639 notices. Not distutils' "warning: byte-compiling is disabled", which
# only says that PYTHONDONTWRITEBYTECODE is set.
BUILD_WARNING = re.compile(r"[A-Z_]\w*Warning\b|_BetaConfiguration|License classifiers|[Dd]eprecat")
# What .gitignore keeps out, so a working tree copies as a clean checkout would: the bench's
# scratch folder may hold a running daemon's doorbell socket, which copytree cannot copy.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".work"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built from a copy of the tree (a build writes into its source), and the log."""
    work = tmp_path_factory.mktemp("build")
    tree = work / "tree"
    shutil.copytree(REPO, tree, ignore=NOT_SOURCE)
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(work / "dist"), "."],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    [wheel] = (work / "dist").glob("drainpool-*.whl")
    return wheel, log


def test_the_wheel_holds_drainpool_and_its_dist_info_only(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {entry for entry in top_level if entry.endswith(".dist-info")}
    assert top_level - dist_info == {"drainpool"}, top_level
    assert len(dist_info) == 1, dist_info
    assert not any(name.startswith("daemon") for name in names)
    assert "drainpool/py.typed" in names
    assert "drainpool/console/index.html" in names
    assert {"console.css", "console.js"} <= {
        name.rsplit("/", 1)[1] for name in names if name.startswith("drainpool/console/")
    }


def test_the_metadata_names_the_license_by_spdx_and_ships_its_file(
    built: tuple[Path, str],
) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().partition("\n\n")[0].splitlines()
        licenses = [n for n in archive.namelist() if ".dist-info/licenses/" in n]
        shipped = archive.read(licenses[0]).decode() if licenses else ""
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    assert not any(h.startswith(("License:", "Classifier: License")) for h in headers), headers
    assert [name.rsplit("/", 1)[1] for name in licenses] == ["LICENSE"]
    assert shipped == (REPO / "LICENSE").read_text()


def test_the_build_prints_no_warning(built: tuple[Path, str]) -> None:
    _, log = built
    warnings = [line for line in log.splitlines() if BUILD_WARNING.search(line)]
    assert not warnings, "\n".join(warnings)


def test_a_task_in_the_old_daemon_package_is_refused_with_the_new_name(tmp_path: Path) -> None:
    config = tmp_path / "drainpool.toml"
    config.write_text(
        render_config(base_config(tmp_path, tasks={"sleep": "daemon.tasks.examples:sleep"}))
    )
    drainpool = Path(sys.executable).with_name("drainpool")  # the installed entry point
    run = subprocess.run(
        [str(drainpool), "check-config", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 78, run.stdout + run.stderr
    problems = [line for line in run.stderr.splitlines() if "daemon.tasks.examples" in line]
    assert len(problems) == 1, run.stderr
    assert "'drainpool.tasks.examples:sleep'" in problems[0], problems
    assert str(config) in problems[0] or config.name in problems[0], problems
