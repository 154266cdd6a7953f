"""Durable job queues: the protocol and its backends, chosen by URL (see schemes)."""

from __future__ import annotations

from drainpool.queue.base import (
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
from drainpool.queue.schemes import check_url, from_url

__all__ = [
    "DeadJob",
    "Failure",
    "Job",
    "Queue",
    "QueueError",
    "QueueStats",
    "QueueUnavailable",
    "RetryPolicy",
    "check_url",
    "from_url",
    "redact_url",
]
