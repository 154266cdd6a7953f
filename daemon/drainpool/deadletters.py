"""Retrying and purging dead letters by id: the one path the CLI and /api/dead/* share.

Ids are checked once, here, before any backend sees them (issue 23): a number
too large for the store or text that is no id is named in a one-line error
rather than reaching SQLite as an OverflowError; the ids that were not dead
jobs are named in the answer, and the counts read as English.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drainpool.queue.base import JobState, Queue, QueueError

MAX_JOB_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY; Redis ids here are the same numbers
ACTIONS = {"retry": "retried", "purge": "purged"}


@dataclass(frozen=True, eq=False)  # never compared: no generated __eq__/__hash__
class DeadAction:
    """What one retry or purge did: how many moved, and which given ids were not dead."""

    verb: str
    count: int
    not_dead: list[str]

    def summary(self) -> str:
        return f"{self.count} dead {'job' if self.count == 1 else 'jobs'} {self.verb}"

    def problem(self) -> str:
        """The line naming the ids that were not dead jobs ("" when every id was)."""
        if not self.not_dead:
            return ""
        shown = ", ".join(self.not_dead[:20]) + (", ..." if len(self.not_dead) > 20 else "")
        return f"not {'a dead job' if len(self.not_dead) == 1 else 'dead jobs'}: {shown}"


def job_ids(raw: Iterable[object]) -> list[str]:
    """The ids as the queue takes them; QueueError names the first one that is no job id."""
    ids: list[str] = []
    for given in raw:
        text = str(given).strip() if isinstance(given, str | int) else ""
        if isinstance(given, bool) or not (text.isascii() and text.isdigit()):
            raise QueueError(f"not a job id: {given!r} (ids are whole numbers)")
        if int(text) > MAX_JOB_ID:
            raise QueueError(f"not a job id: {text} (larger than any job id, {MAX_JOB_ID})")
        ids.append(str(int(text)))
    return list(dict.fromkeys(ids))  # once each, in the order given


def apply(queue: Queue, action: str, ids: list[str] | None) -> DeadAction:
    """Retry or purge the dead jobs `ids` (None: every dead job), naming the ids not dead."""
    not_dead: list[str] = []
    if ids is not None:
        ids = job_ids(ids)
        for job_id in ids:
            info = queue.job(job_id)
            if info is None or info.state != JobState.DEAD:
                not_dead.append(job_id)
        ids = [i for i in ids if i not in not_dead]
        if not ids:
            return DeadAction(ACTIONS[action], 0, not_dead)
    move = queue.dead_retry if action == "retry" else queue.dead_purge
    return DeadAction(ACTIONS[action], move(ids), not_dead)
