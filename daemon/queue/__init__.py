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
    redact_url,
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


def from_url(
    url: str,
    *,
    base_dir: Path | None = None,
    retry: RetryPolicy | None = None,
    durable_commits: bool = True,
) -> Queue:
    """Open the queue at `url` (sqlite:///rel, sqlite:////abs, redis://, rediss://).

    `base_dir` anchors a relative SQLite path (the config file's directory).
    Producers keep the default `durable_commits`; the daemon turns it off for
    its own connection (see daemon.queue.sqlite).
    """
    if url.startswith("sqlite:"):
        from daemon.queue.sqlite import SqliteQueue, path_from_url

        return SqliteQueue(
            path_from_url(url, base_dir), retry=retry, durable_commits=durable_commits
        )
    if url.startswith(("redis://", "rediss://", "unix://")):
        from daemon.queue.redis import RedisQueue  # needs the optional redis extra

        return RedisQueue.from_url(url, retry=retry)
    raise QueueError(f"unsupported queue URL {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
