"""The few C library calls the daemon makes (mallopt, inotify, statx), bound without ctypes.

Why not ctypes: importing it costs the idle daemon about 0.2 MB for its types
and helpers (`python -c 'import ctypes'` 10,196 kB resident against 9,984 kB for
`import _ctypes`, issue 17), and the calls here need none of them. _ctypes, its
C half, binds a symbol just as well given a return type; the arguments are
Python ints and bytes, which it passes as C ints and char pointers, and a
`buffer` for what a call writes out.

Only libc.so.6 is looked in (glibc): where it is absent (musl, not Linux),
`function` answers None and each caller falls back or does without.
"""

from __future__ import annotations

import _ctypes
import os
from collections.abc import Callable
from typing import Any


class _CInt(_ctypes._SimpleCData):
    _type_ = "i"


class _IntFunction(_ctypes.CFuncPtr):
    """A C function returning int whose errno is kept for `last_errno()`."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _CChar(_ctypes._SimpleCData):
    _type_ = "c"


_buffer_types: dict[int, Any] = {}


def buffer(size: int) -> Any:
    """`size` zeroed bytes for a call to write into (passed as a pointer); struct reads them."""
    kind = _buffer_types.get(size)
    if kind is None:
        kind = type(f"_Char{size}", (_ctypes.Array,), {"_type_": _CChar, "_length_": size})
        _buffer_types[size] = kind
    return kind()


class _Library:
    """What _ctypes reads a symbol from: an object holding a dlopen handle, as CDLL does."""

    def __init__(self, name: str) -> None:
        self._handle = _ctypes.dlopen(name, os.RTLD_NOW)


_library: Any = None


def function(name: str) -> Callable[..., int] | None:
    """libc's `name`, taking ints and bytes and returning an int; None where there is none."""
    global _library
    try:
        if _library is None:
            _library = _Library("libc.so.6")  # already loaded: dlopen only counts a reference
        bound: Callable[..., int] = _IntFunction((name, _library))
    except (AttributeError, OSError):  # no such symbol, or no glibc
        return None
    return bound


def last_errno() -> int:
    """errno as the last call through `function` on this thread left it."""
    return int(_ctypes.get_errno())
