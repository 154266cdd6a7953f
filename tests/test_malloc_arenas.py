"""Idle memory: glibc arenas capped unless MALLOC_ARENA_MAX wins; a lean start (issue 17)."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from drainpool.inotify import DirectoryWatch

PROBE = "from drainpool.malloc_arenas import cap_arenas; print(cap_arenas())"

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's"
)


def probe(**extra: str) -> str:
    """What cap_arenas answers in a fresh interpreter (never in the test process itself)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | extra
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@glibc_only
def test_arenas_are_capped_on_glibc() -> None:
    assert probe() == "True"


def test_the_environment_wins() -> None:
    assert probe(MALLOC_ARENA_MAX="8") == "False"


LEAN_START = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from drainpool.httpserver import Endpoints, HttpServer
from drainpool.inotify import DirectoryWatch
from drainpool.malloc_arenas import cap_arenas

cap_arenas()
DirectoryWatch([Path(sys.argv[1])]).release()
server = HttpServer(
    "127.0.0.1", 0, Endpoints(CollectorRegistry(), lambda: True, lambda: True, lambda: {})
)
server.start()
server.stop()
print(" ".join(m for m in ("ctypes", "encodings.idna", "stringprep") if m in sys.modules))
"""


def test_start_loads_neither_ctypes_nor_the_idna_tables(tmp_path: Path) -> None:
    """Capping the arenas, watching the config and binding the HTTP server cost no
    idle memory of their own.

    ctypes would cost about 0.2 MB (drainpool.libc binds libc through _ctypes), and
    HTTPServer's own bind does a reverse DNS lookup that loads the idna codec and its
    stringprep tables (about 0.2 MB more).
    """
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", LEAN_START, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_a_failed_libc_call_reports_its_errno(tmp_path: Path) -> None:
    """inotify_add_watch on a missing directory: the OSError carries the call's own errno."""
    with pytest.raises(OSError) as raised:
        DirectoryWatch([tmp_path / "missing"])
    assert raised.value.errno == errno.ENOENT
    assert "missing" in str(raised.value)
