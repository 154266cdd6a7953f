"""Durable job queues: the protocol and its backends, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from drainpool.queue.base import (
    DeadJob,
    Done,
    Failure,
    Job,
    JobCancelled,
    JobFailed,
    JobInfo,
    JobNotFound,
    JobState,
    Queue,
    QueueError,
    QueueStats,
    QueueUnavailable,
    RetryPolicy,
    WorkerIdentity,
    redact_url,
)
from drainpool.queue.records import RESULT_MAX_BYTES, RETENTION_SECONDS, encode_result

__all__ = [
    "DeadJob",
    "Done",
    "Failure",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobState",
    "Queue",
    "QueueError",
    "QueueStats",
    "QueueUnavailable",
    "RetryPolicy",
    "WorkerIdentity",
    "check_url",
    "encode_result",
    "from_url",
    "redact_url",
]


def from_url(
    url: str,
    *,
    base_dir: Path | None = None,
    retry: RetryPolicy | None = None,
    durable_commits: bool = True,
    retention_seconds: float = RETENTION_SECONDS,
    result_max_bytes: int = RESULT_MAX_BYTES,
) -> Queue:
    """Open the queue at `url` (sqlite:///rel, sqlite:////abs, redis://, rediss://).

    `Queue.from_url(url)` is the same for producers (drainpool.queue.base.Queue).

    `base_dir` anchors a relative SQLite path (the config file's directory).
    Producers keep the default `durable_commits`; the daemon turns it off for
    its own connection (see drainpool.queue.sqlite). `retention_seconds` and
    `result_max_bytes` are the config's `queue.*` keys of the same names.
    """
    records = {"retention_seconds": retention_seconds, "result_max_bytes": result_max_bytes}
    if url.startswith("sqlite:"):
        from drainpool.queue.sqlite import SqliteQueue

        return SqliteQueue.from_url(
            url, retry=retry, base_dir=base_dir, durable_commits=durable_commits, **records
        )
    if url.startswith(("redis://", "rediss://", "unix://")):
        from drainpool.queue.redis import RedisQueue  # needs the optional redis extra

        return RedisQueue.from_url(url, retry=retry, **records)
    raise QueueError(
        f"unsupported queue URL {redact_url(url)!r}: use sqlite:///PATH or redis://HOST:PORT/DB"
    )


def check_url(url: str) -> None:
    """Raise QueueError for a URL that from_url would refuse; never connects or creates.

    For config validation: a Redis URL with an unknown option fails check-config
    and a reload instead of the daemon's start or the pools' restart.
    """
    if url.startswith("sqlite:"):
        return  # opening would create the file; the path is checked when the daemon opens it
    if not url.startswith(("redis://", "rediss://", "unix://")):
        from_url(url)  # raises the one message for an unknown scheme
    from drainpool.queue.redis import RedisQueue

    RedisQueue.from_url(url).discard()
