"""The thread-leak guard in conftest.py can fail: run it on a test that leaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import REPO

GUARDED_CONFTEST = """
import tests.conftest as guard
from tests.conftest import no_leaked_threads  # the autouse guard under test

guard.LEAK_GRACE_SECONDS = 2.0
"""

TESTS = """
import threading

never = threading.Event()


def test_leaves_a_daemon_thread_running():
    threading.Thread(target=never.wait, name="left-running", daemon=True).start()


def test_a_thread_on_its_way_out_is_waited_for():
    threading.Timer(0.05, lambda: None).start()
"""


def test_a_daemon_thread_left_running_fails_its_test(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(GUARDED_CONFTEST)
    (tmp_path / "test_inner.py").write_text(TESTS)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "2 passed, 1 error" in out, out  # the leaker passed, then its teardown failed
    assert "ERROR at teardown of test_leaves_a_daemon_thread_running" in out, out
    assert "left-running" in out and "daemon" in out, out
