"""The queue URL schemes and the backend that opens each: the one list (issue 17, item 3).

The protocol (queue.base), the package's `from_url` and the config's validation
(settings) all ask this module, so none of them names a backend. A backend is
named by module path and imported only when a URL of its scheme is opened or
checked: producers on SQLite never need the optional redis extra. A new backend
is one more `Backend` entry here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drainpool.queue.base import QueueError, RetryPolicy, redact_url
from drainpool.queue.records import RESULT_MAX_BYTES, RETENTION_SECONDS

if TYPE_CHECKING:
    from drainpool.queue.base import Queue

# queue.schema (PostgreSQL): a plain lower-case identifier, quoted into SQL text, never bound.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def schema_name_problem(name: str) -> str | None:
    """Why `name` cannot be queue.schema, or None: the config's check and the backend's."""
    if SCHEMA_NAME.fullmatch(name):
        return None
    return (
        f"{name!r} is not a plain lower-case identifier"
        " (letters, digits, _; at most 63; not starting with a digit)"
    )


@dataclass(frozen=True, eq=False)  # one instance per backend: identity is equality
class Backend:
    """How the URLs that start with one of `prefixes` are opened."""

    prefixes: tuple[str, ...]
    module: str  # imported lazily, by path
    class_name: str  # its `from_url(url, *, retry, ...)` opens the queue
    local_file: bool  # takes `base_dir` and `durable_commits` (a file on this host)
    # Whether checking a URL builds the queue object and discards it: true for a
    # client that connects lazily (its options are parsed without a round trip),
    # false for a file that opening would create (its path is checked at start).
    check_by_building: bool
    # A database server: takes `schema` (queue.schema) and `durable_commits`.
    database_server: bool = False


BACKENDS: tuple[Backend, ...] = (
    Backend(
        prefixes=("sqlite:///",),
        module="drainpool.queue.sqlite",
        class_name="SqliteQueue",
        local_file=True,
        check_by_building=False,
    ),
    Backend(
        prefixes=("redis://", "rediss://", "unix://"),
        module="drainpool.queue.redis",  # needs the optional redis extra
        class_name="RedisQueue",
        local_file=False,
        check_by_building=True,
    ),
    Backend(
        prefixes=("postgresql://", "postgres://"),
        module="drainpool.queue.postgres",  # needs the optional postgres extra
        class_name="PostgresQueue",
        local_file=False,
        check_by_building=True,
        database_server=True,
    ),
)


def known_prefixes() -> tuple[str, ...]:
    """Every URL prefix a backend opens, in the order the README lists them."""
    return tuple(prefix for backend in BACKENDS for prefix in backend.prefixes)


def backend_for(url: str) -> Backend:
    """The backend that opens `url`, or a QueueError that lists the known prefixes."""
    for backend in BACKENDS:
        if url.startswith(backend.prefixes):
            return backend
    *others, last = known_prefixes()
    raise QueueError(
        f"unsupported queue URL {redact_url(url)!r}: must start with {', '.join(others)} or {last}"
    )


def _backend_class(backend: Backend) -> Any:
    # A missing optional extra (redis) surfaces here, when its URL is first used.
    return getattr(importlib.import_module(backend.module), backend.class_name)


def from_url(
    url: str,
    *,
    base_dir: Path | None = None,
    retry: RetryPolicy | None = None,
    durable_commits: bool = True,
    schema: str | None = None,
    retention_seconds: float = RETENTION_SECONDS,
    result_max_bytes: int = RESULT_MAX_BYTES,
) -> Queue:
    """Open the queue at `url` (sqlite:///rel, sqlite:////abs, redis://, rediss://, unix://,
    postgresql://, postgres://).

    Exported as drainpool.queue.from_url; `Queue.from_url(url)` is the same for
    producers. `base_dir` anchors a relative SQLite path (the config file's
    directory). Producers keep the default `durable_commits`; the daemon turns
    it off for its own connection (see drainpool.queue.sqlite and .postgres).
    `retention_seconds` and `result_max_bytes` are the config's `queue.*` keys; `schema`
    names the PostgreSQL schema of the queue's tables (queue.schema), others ignore it.
    """
    backend = backend_for(url)
    queue_class = _backend_class(backend)
    options: dict[str, Any] = {
        "retry": retry,
        "retention_seconds": retention_seconds,
        "result_max_bytes": result_max_bytes,
    }
    if backend.local_file:
        options.update(base_dir=base_dir, durable_commits=durable_commits)
    if backend.database_server:
        options["durable_commits"] = durable_commits
        if schema is not None:
            options["schema"] = schema
    return queue_class.from_url(url, **options)


def check_url(url: str) -> None:
    """Raise QueueError for a URL that `from_url` would refuse; never connects or creates.

    For config validation: a Redis URL with an unknown option fails check-config
    and a reload instead of the daemon's start or the pools' restart.
    """
    backend = backend_for(url)
    if backend.check_by_building:
        _backend_class(backend).from_url(url).discard()
