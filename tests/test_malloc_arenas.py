"""The daemon caps glibc's malloc arenas unless MALLOC_ARENA_MAX says otherwise (issue 17)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

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
