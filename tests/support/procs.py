"""Looking at real processes through /proc: descendants, process groups, leftovers.

After the daemon exits, its children are re-parented, so "no child left" is
checked three ways: the processes seen below the daemon while it ran must be
gone (not even a zombie: the daemon reaps its own children, and this
machine's init does not reap orphans), nothing may still carry the test's
environment marker (everything the daemon starts inherits its environment),
and a command's process group must have no live member.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

MARK_VARIABLE = "DRAINPOOL_TEST_MARK"


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    state: str
    start: int  # clock ticks since boot: tells a pid from a reused one

    @property
    def zombie(self) -> bool:
        return self.state == "Z"


def read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parens
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[19]))


def table() -> dict[int, Proc]:
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := read(int(name))) is not None:
            procs[proc.pid] = proc
    return procs


def descendants(pid: int) -> dict[int, Proc]:
    """Every process below `pid` (children, their children...)."""
    procs = table()
    found: dict[int, Proc] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for proc in procs.values():
            if proc.ppid == parent and proc.pid not in found:
                found[proc.pid] = proc
                frontier.append(proc.pid)
    return found


def children(pid: int) -> dict[int, Proc]:
    return {p.pid: p for p in table().values() if p.ppid == pid}


def group(pgid: int) -> list[Proc]:
    """Members of a process group, zombies included."""
    return [p for p in table().values() if p.pgrp == pgid]


def still_there(procs: Iterable[Proc]) -> list[Proc]:
    """Those of `procs` that still exist in any state (same pid, same start time)."""
    left = []
    for proc in procs:
        now = read(proc.pid)
        if now is not None and now.start == proc.start:
            left.append(now)
    return left


def marked(marker: str) -> list[int]:
    """Live processes whose environment holds DRAINPOOL_TEST_MARK=marker."""
    needle = f"{MARK_VARIABLE}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or a kernel thread
            continue
        if needle in environ:
            found.append(int(name))
    return found


def new_marker() -> tuple[str, dict[str, str]]:
    """A marker unique to one test, and the environment that gives it to a daemon."""
    marker = os.urandom(8).hex()
    return marker, {MARK_VARIABLE: marker}


def assert_nothing_left(seen: Iterable[Proc], marker: str) -> None:
    """After the daemon exited: what ran below it is gone, reaped; nothing live carries `marker`."""
    left = still_there(seen)
    assert not left, f"processes left behind (a zombie means nobody reaped it): {left}"
    live = marked(marker)
    assert not live, f"processes started by the daemon still running: {live}"
