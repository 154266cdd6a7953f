"""Checks of a config against the world outside it: the file itself, and the files
and host the metrics endpoint needs.

A config path may be anything an operator (or an attacker with write access to
its directory) points it at: a FIFO, /dev/zero, a directory. Reading one of
those with read_text() blocks the supervisor loop or reads until memory runs
out (issue 23), so the file is opened without blocking and checked before a
byte is read. The metrics checks run at every load, so check-config and a
reload reject what the endpoint could never bind, instead of the daemon
finding out at start or in the middle of a reload.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from pathlib import Path

MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KiB; anything near this is a mistake


class UnreadableConfig(Exception):
    """The path is not a config file that can be read; str() is the reason."""


def read_config_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The file's text; UnreadableConfig when it is not a regular file or too large.

    O_NONBLOCK makes the open of a FIFO return at once, and fstat (on the opened
    descriptor, so a symlink swapped in between changes nothing) decides before
    any read; at most limit + 1 bytes are read, in case the file grew since.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableConfig(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise UnreadableConfig(f"larger than {limit} bytes ({info.st_size} bytes)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnreadableConfig(f"larger than {limit} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def metrics_problems(
    host: str, tls_cert_file: Path | None, tls_key_file: Path | None
) -> list[tuple[str, str]]:
    """(key, problem) for each metrics setting the endpoint could not use."""
    problems = []
    for key, path in (("tls_cert_file", tls_cert_file), ("tls_key_file", tls_key_file)):
        if path is not None and not os.access(path, os.R_OK):
            why = "file not found" if not path.exists() else "file not readable"
            problems.append((key, f"{why}: {path}"))
    if not _is_address(host):
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            problems.append(("host", f"cannot resolve {host!r}: {exc}"))
    return problems


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
