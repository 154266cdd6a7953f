"""Tasks that push the daemon against its resource limits, for tests/test_limits.py."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path
from typing import Any

from drainpool import TaskContext

_kept: list[bytes] = []  # what `leak` allocates stays referenced: a real leak


def exhaust(ctx: TaskContext, payload: dict[str, Any]) -> int:
    """Open /dev/null until EMFILE, hold every descriptor until `release` exists, close them.

    Signalling needs no descriptor: `holding` is a directory made with mkdir,
    and the release is seen with stat, so both work while the process is out
    of descriptors.
    """
    fds: list[int] = []
    try:
        while True:
            try:
                fds.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
            if len(fds) > 100_000:
                raise RuntimeError("no descriptor limit in force")
        os.mkdir(payload["holding"])
        while not os.path.exists(payload["release"]):
            ctx.sleep(0.02)
    finally:
        for fd in fds:
            os.close(fd)
    return len(fds)


def leak(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Allocate 16 MiB blocks and keep them, until the memory limit stops it.

    It limits its own address space first (current size + `limit_mib`), so the
    machine is never at risk; it refuses to do that inside the daemon's process,
    which is only right when process mode runs it in a child.
    """
    if os.getpid() == payload["daemon_pid"]:
        raise RuntimeError("refusing to leak inside the daemon: not running in a child process")
    size_kib = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            size_kib = int(line.split()[1])
    limit = (size_kib + payload["limit_mib"] * 1024) * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    while True:
        _kept.append(bytes(16 << 20))
        ctx.check()


def whoami(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Write this task's pid into `path` (the daemon's own pid means thread mode)."""
    Path(payload["path"]).write_text(str(os.getpid()))
