"""Durable job queues: the protocol and its backends, chosen by URL (see schemes)."""

from __future__ import annotations

from drainpool.queue.base import (
    CancelEffect,
    CancelResult,
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
from drainpool.queue.records import encode_result
from drainpool.queue.schemes import check_url, from_url

__all__ = [
    "CancelEffect",
    "CancelResult",
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
