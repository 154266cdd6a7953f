"""drainpool.queue.file_identity: a file's (device, inode) as os.stat gives it, on real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from drainpool.queue import file_identity


def stat_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


@pytest.mark.parametrize("through", ["statx", "stat"])
def test_identity_is_stats_and_follows_a_replaced_file(
    tmp_path: Path, through: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if through == "stat":
        monkeypatch.setattr(file_identity, "_statx", None)  # as where libc has no statx
    path = tmp_path / "queue.db-wal"
    path.write_bytes(b"x")
    first = file_identity.identity(str(path))
    assert first == stat_identity(path)
    other = tmp_path / "other"
    other.write_bytes(b"y")
    os.replace(other, path)  # replaced under the same name: another inode
    assert file_identity.identity(str(path)) == stat_identity(path) != first
    path.unlink()
    assert file_identity.identity(str(path)) is None
    assert file_identity.identity(str(tmp_path / "no-such-dir" / "file")) is None


def test_identity_reads_a_directory_and_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    assert file_identity.identity(str(deep)) == stat_identity(deep)


LEAN = """
import sys
from drainpool.queue.sqlite import SqliteQueue

queue = SqliteQueue(sys.argv[1])
queue.enqueue("t", 1)
assert queue.fetch(1, ["t"], 60.0)
queue.close()
print("ctypes" in sys.modules)
"""


def test_the_queue_checks_its_files_without_importing_ctypes(tmp_path: Path) -> None:
    """statx is bound through drainpool.libc: ctypes would cost the daemon ~0.2 MB idle."""
    done = subprocess.run(
        [sys.executable, "-c", LEAN, str(tmp_path / "queue.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
