"""Job records, shared by every backend: results under a size cap, reading records, waiting.

A module of its own because what a record holds and how a caller waits for it
is one concern, the same on every backend; where a backend keeps the record
(a row, a hash) and how it wakes a waiter are the backends' own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from drainpool.queue.base import (
    Done,
    Job,
    JobCancelled,
    JobFailed,
    JobInfo,
    JobNotFound,
    JobState,
    QueueError,
    WorkerIdentity,
    decode_payload,
)

RESULT_MAX_BYTES = 65_536
RETENTION_SECONDS = 86_400.0
MAX_LIST_LIMIT = 10_000
WAIT_FIRST_PAUSE = 0.002  # a polling backend's first pause; doubled up to WAIT_MAX_PAUSE
WAIT_MAX_PAUSE = 0.1


# One encoder for every result: json.dumps with arguments builds a new one per call.
_RESULT_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class NotJson:
    """A result that JSON could not hold where it was made (a process worker's child)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def encode_result(value: Any, max_bytes: int = RESULT_MAX_BYTES) -> tuple[str | None, str]:
    """A task's return value as (JSON text, "") or (None, why it is not kept); never raises.

    A result that cannot be stored must never fail the job that returned it.
    """
    if value is None:
        return "null", ""  # the result of most tasks: no encoder call per job
    if isinstance(value, NotJson):
        return None, f"result not kept: not JSON: {value.reason}"
    try:
        text = _RESULT_ENCODER.encode(value)
    except RecursionError:
        return None, "result not kept: not JSON: nested too deeply"
    except Exception as exc:  # anything a user object's hooks may raise
        return None, f"result not kept: not JSON: {' '.join(str(exc).split())}"
    size = len(text)  # ensure_ascii: one byte per character
    if size > max_bytes:
        return None, f"result not kept: {format_size(size)} > {format_size(max_bytes)}"
    return text, ""


def format_size(n: int) -> str:
    """Bytes for people: 800 B, 64 KiB, 1.2 MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"


def as_done(ack: Job | Done) -> Done:
    """An ack as a Done: a plain Job acks with no result."""
    return ack if isinstance(ack, Done) else Done(ack)


def check_retention(retention_seconds: float, result_max_bytes: int) -> None:
    if not (math.isfinite(retention_seconds) and retention_seconds >= 0):
        raise QueueError(f"retention_seconds must be >= 0, not {retention_seconds!r}")
    if result_max_bytes < 0:
        raise QueueError(f"result_max_bytes must be >= 0, not {result_max_bytes!r}")


def parse_state(state: JobState | str | None) -> JobState | None:
    """A state filter; an unknown name is a QueueError naming the valid ones."""
    if state is None or isinstance(state, JobState):
        return state
    try:
        return JobState(state)
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise QueueError(f"unknown job state {state!r}: want one of {names}") from None


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise QueueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit!r}")


def make_info(
    *,
    job_id: str,
    task: str,
    payload_text: str | bytes | None,
    key: str | None,
    state: JobState,
    attempts: int,
    enqueued_at: float,
    started_at: float | None,
    finished_at: float | None,
    host: str | None,
    pid: int | None,
    pool: str | None,
    error: str | None,
    traceback: str | None,
    result_text: str | bytes | None,
    result_note: str | None,
    timeout: float | None = None,
    cancel_requested_at: float | None = None,
    cancel_reason: str | None = None,
    cancelled_by: str | None = None,
    schedule: str | None = None,
    tick: float | str | None = None,
) -> JobInfo:
    """A JobInfo from stored fields; undecodable JSON is shown raw, with the reason."""
    payload, payload_error = decode_payload(payload_text)
    if payload_error:
        payload = _raw(payload_text)
    result, kept, note = None, False, result_note or ""
    if result_text is not None and result_text != "":
        result, result_error = decode_payload(result_text)
        kept = not result_error
        if result_error:
            result = _raw(result_text)
            note = "result not readable: " + result_error.removeprefix("payload ")
    return JobInfo(
        id=job_id,
        task=task,
        payload=payload,
        key=key or None,
        state=state,
        attempts=attempts,
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        worker=None if not host else WorkerIdentity(host, int(pid or 0), pool or ""),
        error=error or "",
        traceback=traceback or "",
        result=result,
        result_kept=kept,
        result_note=note,
        payload_error=payload_error,
        timeout=timeout,
        cancel_requested_at=cancel_requested_at,
        cancel_reason=cancel_reason or "",
        cancelled_by=cancelled_by or "",
        schedule=schedule or "",
        tick=None if tick is None or tick == "" else float(tick),
    )


def _raw(text: str | bytes | None) -> str | None:
    return text.decode(errors="replace") if isinstance(text, bytes) else text


def wait_for(
    job_id: str,
    timeout: float | None,
    read: Callable[[], JobInfo | None],
    block: Callable[[float | None, int], None],
) -> JobInfo:
    """Read the record until it is terminal; `block(seconds left, round)` waits between reads.

    The backend's `block` decides how a round waits: a notification (Redis) or a
    growing pause (SQLite). It may return early; the record is read again.
    """
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise QueueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    rounds = 0
    while True:
        info = read()
        if info is None:
            raise JobNotFound(job_id)
        if info.state.terminal:
            return info
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"job {job_id} is still {info.state} after {timeout} s")
        block(left, rounds)
        rounds += 1


def backoff_pause(left: float | None, rounds: int) -> float:
    """A polling wait's pause: 2 ms, doubling to 100 ms, never past the deadline."""
    pause = min(WAIT_FIRST_PAUSE * (2 ** min(rounds, 16)), WAIT_MAX_PAUSE)
    return pause if left is None else max(min(pause, left), 0.0)


def result_of(info: JobInfo) -> Any:
    """The result of a terminal record, or the exception its end calls for."""
    if info.state is JobState.DEAD:
        raise JobFailed(info)
    if info.state is JobState.CANCELLED:
        raise JobCancelled(info)
    return info.result if info.result_kept else None
