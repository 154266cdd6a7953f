"""Job records in the Redis queue: the job hash read as a record, listed and waited for.

A module of its own because reading records is a concern apart from the Lua
scripts that move jobs (daemon/drainpool/queue/redis.py, whose docstring says
where records live). The callers turn redis-py errors into queue errors.
"""

from __future__ import annotations

from typing import cast

import redis

from drainpool.queue.base import JobInfo, JobState
from drainpool.queue.records import make_info, wait_for

WAIT_CAP_SECONDS = 1.0  # a waiter reads the record again at least this often
NOTIFY_TTL_MS = 60_000  # how long a done-notification and a waiter's mark live
STATES = {
    "ready": JobState.WAITING,
    "delayed": JobState.DELAYED,
    "leased": JobState.RUNNING,
    "dead": JobState.DEAD,
    "completed": JobState.COMPLETED,
    "cancelled": JobState.CANCELLED,
}
RECORD_FIELDS = (
    "task",
    "payload",
    "key",
    "state",
    "attempts",
    "enqueued_at",
    "started_at",
    "finished_at",
    "failed_at",
    "host",
    "pid",
    "pool",
    "error",
    "traceback",
    "result",
    "result_note",
    "timeout",
    "cancel_at",
    "cancel_reason",
    "cancel_by",
    "schedule",
    "tick",
)


def read_job(client: redis.Redis, prefix: str, job_id: str) -> JobInfo | None:
    if not (job_id.isascii() and job_id.isdigit()):
        return None  # no job of this queue has such an id
    # The client decodes its replies (decode_responses): str, which redis-py's types cannot say.
    fields = cast("list[str | None]", client.hmget(f"{prefix}:job:{int(job_id)}", RECORD_FIELDS))
    return _info(str(int(job_id)), fields)


def list_jobs(
    client: redis.Redis,
    prefix: str,
    state: JobState | None,
    task: str | None,
    limit: int,
    *,
    page: int,
) -> list[JobInfo]:
    """Pages of the records index, newest first, read in pipelines and filtered here."""
    found: list[JobInfo] = []
    top = "+inf"
    while len(found) < limit:
        ids = cast(
            "list[str]", client.zrevrangebyscore(f"{prefix}:jobs", top, "-inf", start=0, num=page)
        )
        if not ids:
            break
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"{prefix}:job:{job_id}", RECORD_FIELDS)
        for job_id, fields in zip(ids, pipe.execute(), strict=True):
            info = _info(job_id, fields)
            if info is None or (task is not None and info.task != task):
                continue  # expired (the index lags its key expiry), or another task
            if state is None or info.state is state:
                found.append(info)
        top = f"({ids[-1]}"
    return found[:limit]


def wait_job(client: redis.Redis, prefix: str, job_id: str, timeout: float | None) -> JobInfo:
    """Until the job ends: BLPOP on its done list, which the settle that ends it pushes to.

    The waiter marks the job first, then reads it: a settle after the mark sees it
    and pushes; a settle before it shows in the read. BLPOP takes a pooled
    connection of its own for at most WAIT_CAP_SECONDS (below the socket timeout).
    """
    if not (job_id.isascii() and job_id.isdigit()):
        return wait_for(job_id, timeout, lambda: None, lambda left, rounds: None)
    mark = f"{prefix}:waiter:{int(job_id)}"
    done = f"{prefix}:done:{int(job_id)}"

    def read() -> JobInfo | None:
        client.set(mark, "1", px=NOTIFY_TTL_MS)
        return read_job(client, prefix, job_id)

    def block(left: float | None, rounds: int) -> None:
        cap = WAIT_CAP_SECONDS if left is None else min(left, WAIT_CAP_SECONDS)
        if client.blpop([done], timeout=max(cap, 0.001)) is not None:
            client.rpush(done, "1")  # for any other waiter of the same job

    return wait_for(job_id, timeout, read, block)


def _info(job_id: str, fields: list[str | None]) -> JobInfo | None:
    """A record from the job hash's fields (in RECORD_FIELDS order); None if it is gone."""
    record = dict(zip(RECORD_FIELDS, fields, strict=True))
    if record["task"] is None:
        return None
    return make_info(
        job_id=job_id,
        task=record["task"],
        payload_text=record["payload"],
        key=record["key"],
        state=STATES.get(record["state"] or "", JobState.WAITING),
        attempts=int(record["attempts"] or 0),
        enqueued_at=float(record["enqueued_at"] or 0),
        started_at=_seconds(record["started_at"]),
        finished_at=_seconds(record["finished_at"]) or _seconds(record["failed_at"]),
        host=record["host"],
        pid=int(record["pid"] or 0),
        pool=record["pool"],
        error=record["error"],
        traceback=record["traceback"],
        result_text=record["result"],
        result_note=record["result_note"],
        timeout=_seconds(record["timeout"]),
        cancel_requested_at=_seconds(record["cancel_at"]),
        cancel_reason=record["cancel_reason"],
        cancelled_by=record["cancel_by"],
        schedule=record["schedule"],
        tick=record["tick"],
    )


def _seconds(text: str | None) -> float | None:
    return float(text) if text else None
