"""Two glibc malloc arenas for the daemon, not one per thread (idle memory, issue 17).

glibc hands a thread that allocates while another holds the main arena an arena
of its own, up to eight per core, and each keeps pages it touched. A daemon has
a dozen threads or more (the workers, a dispatcher, the HTTP server, the
watcher), yet Python's own small objects come from its allocator under the GIL:
the arenas only serve what C code allocates outside it (sqlite3, sockets), where
two are plenty. Measured on the demo config: 0.3-0.45 MB less resident at idle
(bench/RESULTS.md, "Session 30").

MALLOC_ARENA_MAX in the environment wins (glibc read it at start, and it is left
alone); where the C library is not glibc (musl), nothing is done.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from drainpool import libc

ARENAS = 2
_M_ARENA_MAX = -8  # <malloc.h>


def cap_arenas(environ: Mapping[str, str] = os.environ) -> bool:
    """Cap glibc's arenas at ARENAS, before the daemon starts its threads; True if capped."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    mallopt = libc.function("mallopt")
    return mallopt is not None and mallopt(_M_ARENA_MAX, ARENAS) == 1
