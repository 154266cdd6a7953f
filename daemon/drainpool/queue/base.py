"""The queue protocol that every backend implements.

The daemon only ever talks to a queue through this surface, so the SQLite and
Redis backends are interchangeable and one test suite checks both. Delivery is
at-least-once: a job is removed only by `settle(acks=...)` from the holder of
its current lease token; anything else (a release, an expired lease, a crash)
leaves it to be delivered again.

Over 400 lines on purpose: the protocol and the data it speaks (jobs,
records, failures, stats) are read together by whoever writes a backend;
the shared helpers behind them live in records.py and outcome_minutes.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class QueueError(Exception):
    """A request the queue refuses (bad payload, unknown id, bad URL)."""


class QueueUnavailable(QueueError):
    """The backend cannot be reached or written right now; try again later."""


class JobNotFound(QueueError):
    """No record of this id: never enqueued, or its record expired."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no job {job_id} (never enqueued, or its record expired after retention_seconds)"
        )
        self.job_id = job_id


class JobFailed(QueueError):
    """`result()` of a dead job: carries its record, last error and traceback."""

    def __init__(self, info: JobInfo) -> None:
        super().__init__(f"job {info.id} is dead after {info.attempts} attempt(s): {info.error}")
        self.info = info
        self.error = info.error
        self.traceback = info.traceback


class JobCancelled(QueueError):
    """`result()` of a cancelled job."""

    def __init__(self, info: JobInfo) -> None:
        super().__init__(f"job {info.id} was cancelled")
        self.info = info


class JobState(StrEnum):
    """Where a job is in its life (README, "Jobs, one by one")."""

    WAITING = "waiting"  # due now, waiting for a worker
    DELAYED = "delayed"  # due later: enqueued with a delay, or backing off after a failure
    RUNNING = "running"  # leased to a worker
    COMPLETED = "completed"  # its handler returned; kept retention_seconds
    DEAD = "dead"  # failed for good: a dead letter until retried or purged
    CANCELLED = "cancelled"  # stopped by a cancel; never runs again

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """The daemon (host, process) and pool that claimed a job: recorded at each claim."""

    host: str
    pid: int
    pool: str = ""

    @classmethod
    def here(cls, pool: str = "") -> WorkerIdentity:
        return cls(socket.gethostname(), os.getpid(), pool)


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery of a job: what a worker needs to run it and settle it."""

    id: str
    task: str
    payload: Any
    attempt: int  # 1 for the first delivery; releases do not count
    token: str  # lease token: settling with a stale token is a no-op
    enqueued_at: float  # wall clock, seconds since the epoch
    timeout: float | None = None  # its own time limit (enqueue(..., timeout=)), else the task's
    # Small string pairs carried beside the payload, never handed to the task: the
    # producer's trace context (W3C traceparent) for drainpool.tracing.
    meta: dict[str, str] = field(default_factory=dict)


def slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of a frozen dataclass's fields, which must be `names` in order.

    A frozen dataclass's __init__ sets each field through object.__setattr__ (a
    lookup and a call per field); a builder that calls each slot's own setter
    makes the same object for half as much. Checked at import: a field added to
    the class fails here instead of leaving a slot unset (issue 17).
    """
    found = tuple(f.name for f in fields(cls))
    if found != names:
        raise TypeError(f"{cls.__name__}'s fields are {found}; its builder sets {names}")
    return tuple(getattr(cls, name).__set__ for name in names)


# For the 264 jobs of a dispatcher round, Job's generated __init__ was 7 % of the round's CPU.
_JOB_SETTERS = slot_setters(
    Job, ("id", "task", "payload", "attempt", "token", "enqueued_at", "timeout", "meta")
)


def fetched_job(
    job_id: str,
    task: str,
    payload: Any,
    attempt: int,
    token: str,
    enqueued_at: float,
    timeout: float | None,
    meta: dict[str, str],
) -> Job:
    """Job(...) as a backend's fetch makes one per row: the same object, built quicker."""
    set_id, set_task, set_payload, set_attempt, set_token, set_enqueued, set_timeout, set_meta = (
        _JOB_SETTERS
    )
    job = object.__new__(Job)
    set_id(job, job_id)
    set_task(job, task)
    set_payload(job, payload)
    set_attempt(job, attempt)
    set_token(job, token)
    set_enqueued(job, enqueued_at)
    set_timeout(job, timeout)
    set_meta(job, meta)
    return job


@dataclass(frozen=True, slots=True)
class Done:
    """A job whose handler returned: acked with its result (JSON text), or why it was not kept.

    `settle(acks=...)` takes a plain `Job` too: done, no result.
    """

    job: Job
    result_json: str | None = None
    note: str = ""


_DONE_SETTERS = slot_setters(Done, ("job", "result_json", "note"))


def done_with(job: Job, result_json: str | None, note: str) -> Done:
    """Done(job, result_json, note) as the pool makes one per completed job, built quicker."""
    set_job, set_result_json, set_note = _DONE_SETTERS
    done = object.__new__(Done)
    set_job(done, job)
    set_result_json(done, result_json)
    set_note(done, note)
    return done


@dataclass(frozen=True, slots=True)
class Failure:
    """A job whose handler raised: retried with backoff unless `retry` is false."""

    job: Job
    error: str
    traceback: str = ""
    retry: bool = True


@dataclass(frozen=True, slots=True)
class DeadJob:
    """An entry of the dead-letter list."""

    id: str
    task: str
    payload: Any
    attempts: int
    error: str
    traceback: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The record of one job, as `job(id)` and `jobs()` return it.

    A stored payload or result that cannot be decoded is given as its raw text,
    with the reason in `payload_error` or `result_note`: a record is always shown.
    """

    id: str
    task: str
    payload: Any
    key: str | None
    state: JobState
    attempts: int
    enqueued_at: float
    started_at: float | None = None  # the first claim
    finished_at: float | None = None  # completed, dead or cancelled
    worker: WorkerIdentity | None = None  # who ran the last attempt
    error: str = ""  # the last failure's, kept after a retry that completed
    traceback: str = ""
    result: Any = None
    result_kept: bool = False  # False: no result (yet), or `result_note` says why not
    result_note: str = ""
    payload_error: str = ""
    timeout: float | None = None  # the job's own time limit, in seconds
    cancel_requested_at: float | None = None  # when a cancel was asked (wall clock)
    cancel_reason: str = ""
    cancelled_by: str = ""  # who asked: "cli user@host", "console", "api"
    schedule: str = ""  # the schedule that enqueued it (issue 20), "" for other jobs
    tick: float | None = None  # that schedule's tick; None for `drainpool schedule run`

    def as_dict(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "id": self.id,
            "task": self.task,
            "payload": self.payload,
            "payload_error": self.payload_error,
            "key": self.key,
            "state": str(self.state),
            "attempts": self.attempts,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker": None
            if worker is None
            else {"host": worker.host, "pid": worker.pid, "pool": worker.pool},
            "error": self.error,
            "traceback": self.traceback,
            "result": self.result,
            "result_kept": self.result_kept,
            "result_note": self.result_note,
            "timeout": self.timeout,
            "cancel_requested_at": self.cancel_requested_at,
            "cancel_reason": self.cancel_reason,
            "cancelled_by": self.cancelled_by,
            "schedule": self.schedule,
            "tick": self.tick,
        }


class CancelEffect(StrEnum):
    """What `cancel(id)` did."""

    CANCELLED = "cancelled"  # it was waiting or delayed: cancelled now, never delivered
    REQUESTED = "requested"  # it is leased: its daemon stops it (record cancelled once it has)
    ALREADY_REQUESTED = "already_requested"  # a cancel was asked before: nothing more to do
    ENDED = "ended"  # completed, dead or cancelled already: nothing changed


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The answer of `cancel(id)`: what it did, and the record right after."""

    effect: CancelEffect
    job: JobInfo


MAX_TIMEOUT_SECONDS = 366 * 86_400.0  # a time limit above a year is a typo, not a limit


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """A job's time limit: None, or seconds in (0, a year]; QueueError names `what` otherwise."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise QueueError(f"{what} must be a number of seconds, not {timeout!r}")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_SECONDS):
        raise QueueError(
            f"{what} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} s (a year),"
            f" not {timeout!r}"
        )
    return float(timeout)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Job counts by state, and how long the oldest ready job has waited."""

    ready: int
    delayed: int
    leased: int
    dead: int
    oldest_ready_age_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "delayed": self.delayed,
            "leased": self.leased,
            "dead": self.dead,
            "oldest_ready_age_seconds": self.oldest_ready_age_seconds,
        }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter on the upper half, capped."""

    max_attempts: int = 5
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before delivering again after failed attempt `attempt`."""
        base = min(self.backoff_seconds * (2 ** max(attempt - 1, 0)), self.backoff_max_seconds)
        return base * (0.5 + self.rng.random() / 2)  # jitter keeps retries from herding

    def is_final(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


def log_dead(failures: Iterable[Failure], policy: RetryPolicy) -> None:
    """One line for each failure a settle made a dead letter (issue 23), so an operator
    need not poll `queue dead list` to notice."""
    for f in failures:
        if not f.retry or policy.is_final(f.job.attempt):
            log_dead_job(f.job.id, f.job.task, f.job.attempt, f.error)


def log_dead_job(job_id: object, task: str, attempts: int, error: str) -> None:
    """The line every backend writes when a job becomes dead: job, task, attempts, error."""
    first_line = error.splitlines()[0] if error else ""
    logging.getLogger("drainpool.queue").warning(
        "job %s (task %s) is dead after %d attempt(s): %s", job_id, task, attempts, first_line
    )


def fetched_payload(
    job_id: object, task: str, body: str | bytes | None, attempts: int, max_attempts: int
) -> tuple[Any, str]:
    """A fetched job's payload and "", or None and why it goes to the dead letters at once.

    Its lease ran out `max_attempts` times (its worker died each time), or its
    body is not a JSON payload. The wording and the count are the same on every
    backend (contract tests); the line is logged here, the backend buries the job.
    """
    if attempts > max_attempts:
        error = f"lease expired {attempts - 1} times: its worker died each time"
        log_dead_job(job_id, task, attempts - 1, error)
        return None, error
    payload, error = decode_payload(body)
    if error:
        log_dead_job(job_id, task, attempts, error)
    return payload, error


# One encoder for every payload: json.dumps with arguments builds a new one per call, which
# cost more than the encoding of a small payload (issue 17: bulk enqueue encodes each twice).
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_payload(payload: Any) -> str:
    """Serialise a payload as compact JSON (never pickle); refuses what JSON cannot hold."""
    try:
        return _PAYLOAD_ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        raise QueueError(f"payload is not JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise QueueError("payload is nested too deeply") from None


# The C scanner that json.loads ends in, called directly: json.loads first and last runs a
# whitespace regex, and with its calls that was most of a fetched job's decoding (issue 17).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """json.loads, quicker for compact JSON text (what encode_payload stores; a JSON line).

    What the scanner does not take whole (bytes, spaces before it, bad JSON) goes
    on to json.loads, for the same value or the same exception.
    """
    if isinstance(text, str):
        try:
            value, end = _SCAN(text, 0)
            if end == len(text) or not text[end:].strip(_JSON_SPACE):
                return value
        except (StopIteration, ValueError, RecursionError):
            pass  # json.loads below raises what it raises
    return json.loads(text)


def decode_payload(body: str | bytes | None) -> tuple[Any, str]:
    """A stored payload and "", or None and why it cannot be decoded (it is dead-lettered).

    json.loads raises RecursionError, not ValueError, on deep nesting; a row
    written by something else may not even be UTF-8.
    """
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        return None, f"payload is not UTF-8 text: {exc}"
    if text is None:
        return None, "payload is not valid JSON: there is no payload"
    try:
        return loads(text), ""
    except ValueError as exc:
        return None, f"payload is not valid JSON: {exc}"
    except RecursionError:
        return None, "payload is nested too deeply to decode"


_QUERY_SECRET = re.compile(r"(?i)([?&;](?:ssl_)?password=)[^&;#]*")


def encode_meta(meta: Mapping[str, str] | None) -> str:
    """A job's metadata as stored: "" for none (the common case costs nothing)."""
    if not meta:
        return ""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise QueueError("job metadata takes only string keys and string values")
    return json.dumps(dict(meta), separators=(",", ":"))


def decode_meta(body: str | bytes | None) -> dict[str, str]:
    """Stored metadata back as a dict; empty for none, or for text that is not an object."""
    if not body:
        return {}
    try:
        meta = json.loads(body)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def redact_url(url: str) -> str:
    """Return `url` with any password (in the userinfo or the query) replaced by ***.

    Plain string work rather than urlsplit: a password holding '/', '?' or '#'
    unescaped would make a parser cut the URL elsewhere and show half of it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url or "password" in url.lower() else url
    at = rest.rfind("@")
    if at >= 0:
        userinfo, hostpart = rest[:at], rest[at + 1 :]
        user, colon, _ = userinfo.partition(":")
        # A lone userinfo may be a password without its colon; a '/', '?' or '#' in
        # the user means that '@' was not in the authority: show nothing before it.
        if not colon or any(c in user for c in "/?#"):
            rest = f"***@{hostpart}"
        else:
            rest = f"{user}:***@{hostpart}"
    return scheme + "://" + _QUERY_SECRET.sub(r"\1***", rest)


def refuse_connection(connection: Any, backend: str) -> None:
    """For backends that cannot enqueue inside the application's transaction."""
    if connection is not None:
        raise QueueError(
            f"enqueue(connection=...) needs the PostgreSQL queue; the {backend} queue"
            " has no transactions to share"
        )


def loads_or_raw(body: str | bytes) -> Any:
    """A stored payload as JSON, or the raw text when it is not (shown in dead letters)."""
    payload, error = decode_payload(body)
    if error:
        return body.decode(errors="replace") if isinstance(body, bytes) else body
    return payload


@runtime_checkable
class Queue(Protocol):
    """A durable job queue with leases (see docs/architecture.md and the README's "Queue").

    Producers open one with `Queue.from_url(url)`; each backend also offers its
    own `from_url`, which opens only its kind of URL.
    """

    @classmethod
    def from_url(cls, url: str, *, retry: RetryPolicy | None = None) -> Queue:
        """Open the queue that `url` names: sqlite:///relative/to/cwd, sqlite:////abs, redis://,
        postgresql://.

        A protocol member with a body: on `Queue` itself it picks the backend by
        the URL's scheme (drainpool.queue.schemes, which also takes the options
        the daemon needs); backends override it with their own constructor.
        """
        # Imported here, not at the top: the registry imports this module for
        # QueueError and redact_url, and names the backends only by module path.
        from drainpool.queue.schemes import from_url

        return from_url(url, retry=retry)

    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        delay: float = 0.0,
        key: str | None = None,
        connection: Any = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Add a job; with a live idempotency `key`, return the existing job's id instead.

        `timeout`: the job's own time limit in seconds (over its task's `timeout_seconds`).
        `meta` travels with the job (`Job.meta`): string keys and values only.
        `connection`: the application's own database connection, for a backend that can
        enqueue inside its transaction (PostgreSQL); the others raise QueueError for it.
        """
        ...

    def enqueue_many(self, jobs: Iterable[tuple[str, Any]]) -> int:
        """Add many jobs in one transaction; returns how many were added."""
        ...

    def enqueue_tick(
        self,
        schedule: str,
        task: str,
        payload: Any = None,
        *,
        tick: float | None,
        expected: float | None,
    ) -> str | None:
        """Enqueue one job of `schedule` for `tick`, once across every daemon on the queue.

        Compare-and-set in the enqueue's own transaction (or script): the stored last
        tick of `schedule` becomes `tick` only if it is `expected` (None: no tick stored
        yet), and the job is added only then; otherwise nothing changes and None is
        returned. `tick` None is a manual run: always enqueued, the stored tick untouched.
        The job's record names the schedule and the tick.
        """
        ...

    def schedule_ticks(self) -> dict[str, float]:
        """Each schedule's last enqueued tick (Unix seconds), as stored by enqueue_tick."""
        ...

    def fetch(
        self,
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        *,
        worker: WorkerIdentity | None = None,
    ) -> list[Job]:
        """Lease up to `n` due jobs of the given tasks, oldest first, recording `worker`.

        `worker` defaults to this process with no pool name.
        """
        ...

    def renew(self, jobs: Sequence[Job], lease_seconds: float) -> None:
        """Push the lease of jobs still running; stale tokens are ignored."""
        ...

    def cancel(self, job_id: str, *, reason: str = "", by: str = "") -> CancelResult:
        """Stop one job for good (README, "Cancel").

        Waiting or delayed: its record becomes cancelled now and it is never
        delivered. Leased: it is flagged; the daemon that holds it learns it from
        `cancel_requests` and stops it, and whatever settle follows (a release, a
        failure) makes the record cancelled, while an ack that wins the race
        completes it: exactly one of the two. Ended: nothing changes.
        Raises JobNotFound for an unknown id.
        """
        ...

    def cancel_requests(self, jobs: Sequence[Job]) -> set[str]:
        """The ids among `jobs` (held by the caller) whose cancel was asked: one cheap read."""
        ...

    def settle(
        self,
        acks: Sequence[Job | Done] = (),
        releases: Sequence[Job] = (),
        failures: Sequence[Failure] = (),
        *,
        outcomes: Mapping[str, int] | None = None,
    ) -> None:
        """Ack (completed; a plain Job has no result), release or fail jobs, atomically.

        An acked job's record is kept retention_seconds, or removed at once when it is 0.
        `outcomes` (the batch's counts by outcome: completed, failed, interrupted,
        cancelled, abandoned) are added to this minute's counts in the same step, and
        `dead` for each final failure (drainpool.queue.outcome_minutes).
        """
        ...

    def settle_and_fetch(
        self,
        acks: Sequence[Job | Done],
        releases: Sequence[Job],
        failures: Sequence[Failure],
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        *,
        worker: WorkerIdentity | None = None,
        outcomes: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """`settle(...)` then `fetch(n, ...)`, in one round trip where the backend can."""
        ...

    def stats(self) -> QueueStats: ...

    def dead_list(self, limit: int = 100) -> list[DeadJob]: ...

    def dead_retry(self, ids: Sequence[str] | None = None) -> int:
        """Move dead jobs (all when `ids` is None) back to ready with a fresh attempt count."""
        ...

    def dead_purge(self, ids: Sequence[str] | None = None) -> int: ...

    def bury_unknown(self, known_tasks: Collection[str]) -> int:
        """Dead-letter waiting jobs whose task is not configured, with that reason."""
        ...

    def job(self, job_id: str) -> JobInfo | None:
        """The record of one job, or None (never enqueued, or expired)."""
        ...

    def jobs(
        self, state: JobState | str | None = None, task: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        """Records, newest (last enqueued) first, optionally of one state and one task."""
        ...

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """The record once the job is completed, dead or cancelled.

        Raises TimeoutError after `timeout` seconds, JobNotFound when there is no record
        (or it went: a job completed with retention_seconds = 0 is removed at its ack).
        """
        ...

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The decoded result of a completed job (None if not kept: see its result_note).

        Raises JobFailed (dead), JobCancelled, JobNotFound or TimeoutError.
        """
        ...

    def outcome_minutes(self, since: float) -> list[dict[str, Any]]:
        """Outcome counts per minute from `since` (epoch seconds; at most two hours back).

        One entry per minute, oldest first: `{"minute": start, "completed": n, ...}`
        with every outcome of drainpool.queue.outcome_minutes.OUTCOMES (0 when none).
        """
        ...

    def prune(self, limit: int = 500) -> int:
        """Remove up to `limit` expired records; returns how many (call again while == limit)."""
        ...

    def ping(self) -> None:
        """Raise QueueUnavailable unless the backend answers."""
        ...

    def close(self) -> None: ...
