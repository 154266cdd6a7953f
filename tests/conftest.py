"""Shared fixtures: a daemon factory per test, and a guard against leaked threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonFactory, daemons


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Starts real daemons in tmp_path; kills every one of them by pid at the end."""
    with daemons(tmp_path) as f:
        yield f


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running in the test process."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"leaked threads: {leaked}"
