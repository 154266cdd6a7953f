"""A file's (device, inode), read without asking for its times: statx(2) for the inode only.

Why not os.stat: since Linux 6.13, a stat that reads a file's mtime or ctime
marks the inode (multigrain timestamps), and the next write to the file must
then stamp a fine-grained time, which dirties the inode. The SQLite queue
checks its -wal file's identity around every transaction (issue 23), and each
commit then paid for it: about 50 µs per enqueue on ext4 here, a tenth of a
producer's time in issue 21's 1,000-job burst (bench/RESULTS.md, "Session 31").
statx asked for STATX_INO alone leaves the mark unset, at the cost of a stat.

Bound through drainpool.libc (no ctypes import: idle memory). Where there is
no glibc statx, or the kernel refuses it (ENOSYS, a seccomp filter's EPERM),
os.stat is used from then on.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from drainpool import libc

_AT_FDCWD = -100
_STATX_INO = 0x100
_STATX_SIZE = 256  # sizeof(struct statx)
_INO_AT, _DEV_AT = 32, 136  # offsets of stx_ino (u64) and stx_dev_major, stx_dev_minor (u32)
_UNSUPPORTED = (errno.ENOSYS, errno.EPERM)

Identity = tuple[int, int]


def _by_stat(path: str) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_statx: Callable[..., int] | None = libc.function("statx")


def identity(path: str) -> Identity | None:
    """(st_dev, st_ino) of `path`, as os.stat gives them; None if it cannot be reached."""
    global _statx
    if _statx is None:
        return _by_stat(path)
    buf = libc.buffer(_STATX_SIZE)  # one per call: threads may call at once
    if _statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_INO, buf) != 0:
        if libc.last_errno() in _UNSUPPORTED:
            _statx = None
            return _by_stat(path)
        return None
    (ino,) = struct.unpack_from("=Q", buf, _INO_AT)
    major, minor = struct.unpack_from("=II", buf, _DEV_AT)
    return (os.makedev(major, minor), ino)
