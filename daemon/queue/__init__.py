"""Durable job queues: the protocol and its backends, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from daemon.queue.base import (
    DeadJob,
    Failure,
    Job,
    Queue,
    QueueError,
    QueueStats,
    QueueUnavailable,
    RetryPolicy,
)

__all__ = [
    "DeadJob",
    "Failure",
    "Job",
    "Queue",
    "QueueError",
    "QueueStats",
    "QueueUnavailable",
    "RetryPolicy",
    "from_url",
    "redact_url",
]


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and check-config."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def from_url(
    url: str,
    *,
    base_dir: Path | None = None,
    retry: RetryPolicy | None = None,
    durable_commits: bool = True,
) -> Queue:
    """Open the queue at `url` (sqlite:///rel, sqlite:////abs, redis://, rediss://).

    `Queue.from_url(url)` is the same for producers (daemon.queue.base.Queue).

    `base_dir` anchors a relative SQLite path (the config file's directory).
    Producers keep the default `durable_commits`; the daemon turns it off for
    its own connection (see daemon.queue.sqlite).
    """
    if url.startswith("sqlite:"):
        from daemon.queue.sqlite import SqliteQueue

        return SqliteQueue.from_url(
            url, retry=retry, base_dir=base_dir, durable_commits=durable_commits
        )
    if url.startswith(("redis://", "rediss://", "unix://")):
        from daemon.queue.redis import RedisQueue  # needs the optional redis extra

        return RedisQueue.from_url(url, retry=retry)
    raise QueueError(f"unsupported queue URL {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
