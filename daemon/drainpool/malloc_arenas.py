"""Two glibc malloc arenas for the daemon, not one per thread (idle memory, issue 17).

glibc hands a thread that allocates while another holds the main arena an arena
of its own, up to eight per core, and each keeps pages it touched. A daemon has
a dozen threads or more (the workers, a dispatcher, the HTTP server, the
watcher), yet Python's own small objects come from its allocator under the GIL:
the arenas only serve what C code allocates outside it (sqlite3, sockets), where
two are plenty. Measured on the demo config: 0.3-0.45 MB less resident at idle
(bench/RESULTS.md, "Session 30").

The call goes through _ctypes, the C half of ctypes, with the two types it
needs: importing ctypes itself would cost about 0.2 MB of the 0.3-0.45 saved.

MALLOC_ARENA_MAX in the environment wins (glibc read it at start, and it is left
alone); where the C library is not glibc (musl: no libc.so.6), nothing is done.
"""

from __future__ import annotations

import _ctypes
import os
from collections.abc import Mapping
from typing import Any

ARENAS = 2
_M_ARENA_MAX = -8  # <malloc.h>


class _CInt(_ctypes._SimpleCData):
    _type_ = "i"


class _CFunction(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL
    _restype_ = _CInt


class _Library:
    """What _CFunction reads a symbol from: a dlopen handle, as in ctypes's CDLL."""

    def __init__(self, name: str) -> None:
        self._handle = _ctypes.dlopen(name, os.RTLD_NOW)


def cap_arenas(environ: Mapping[str, str] = os.environ) -> bool:
    """Cap glibc's arenas at ARENAS, before the daemon starts its threads; True if capped."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        libc: Any = _Library("libc.so.6")  # already loaded: dlopen only counts a reference
        mallopt = _CFunction(("mallopt", libc))
    except (AttributeError, OSError):
        return False  # not glibc
    return bool(mallopt(_M_ARENA_MAX, ARENAS) == 1)
