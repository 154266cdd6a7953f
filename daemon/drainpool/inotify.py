"""A blocking inotify reader: the config watcher sleeps until the kernel has news.

watchfiles wakes every `step` (20 ms: 49 wake-ups a second, issue 21) to look
at what its own inotify thread gathered and at its stop event. Reading the
inotify descriptor ourselves, with select() on it and on a stop socket, costs
nothing while nothing changes. Linux only: `available()` says whether it can
be used, and the watcher falls back to watchfiles where it cannot.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

from drainpool import libc
from drainpool.queue.wakeups import Interrupter

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
DIRECTORY_EVENTS = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
) | (IN_DELETE_SELF | IN_MOVE_SELF)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class DirectoryWatch:
    """inotify on a few directories; `changes()` blocks until names change in them."""

    def __init__(self, directories: Iterable[Path]) -> None:
        init, add_watch = libc.function("inotify_init1"), libc.function("inotify_add_watch")
        if init is None or add_watch is None:
            raise OSError("inotify is not available here")
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(libc.last_errno(), "inotify_init1 failed")
        self._fd = fd
        self._interrupter = Interrupter()
        try:
            for directory in directories:
                if add_watch(fd, os.fsencode(directory), DIRECTORY_EVENTS) < 0:
                    errno = libc.last_errno()
                    raise OSError(errno, f"cannot watch {directory}: {os.strerror(errno)}")
        except BaseException:
            self.release()
            raise

    def changes(self) -> list[str] | None:
        """Names changed in the watched directories, once some are; None once stopped.

        Raises OSError when a watched directory itself went (deleted or moved).
        """
        if not self._interrupter.select([self._fd], timeout=None):
            return None
        names: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 65_536)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    raise OSError("a watched directory was deleted or moved")
                names.append(os.fsdecode(name))

    def stop(self) -> None:
        """Ends a `changes()` in progress on another thread."""
        self._interrupter.interrupt()

    def release(self) -> None:
        os.close(self._fd)
        self._interrupter.release()
