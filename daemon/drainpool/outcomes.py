"""How one job's run ended: the names shared by pool, metrics, console and logs.

A StrEnum, so a member is also the plain string that metric labels, JSON
documents and log lines have always carried ("completed", ...); code compares
and builds with the members, never with bare strings.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # the handler returned: the job is acked
    FAILED = "failed"  # the handler raised: retried with backoff, dead after max_attempts
    INTERRUPTED = "interrupted"  # the handler raised Interrupted: released, attempt not counted
    CANCELLED = "cancelled"  # fetched but never started when the drain began: released
    ABANDONED = "abandoned"  # still running when the grace ran out: released, late result ignored
    ABORTED = "aborted"  # stopped after a cancel of its job (or dropped unstarted): never re-run
    TIMED_OUT = "timed_out"  # stopped at its time limit: a failed attempt, retried, then dead


# Outcomes of a task that ran (a cancelled job never started, so it has no duration).
# An aborted job may have run (it gets a duration) or been dropped from the reserve (none).
RAN = (
    Outcome.COMPLETED,
    Outcome.FAILED,
    Outcome.INTERRUPTED,
    Outcome.ABANDONED,
    Outcome.ABORTED,
    Outcome.TIMED_OUT,
)
