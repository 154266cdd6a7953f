"""Outcome counts per minute, kept in the queue's storage (issue 18, the console's chart).

A module of its own because the counts are one concern on every backend:
the pool passes a batch's counts to `settle(..., outcomes=...)`, the backend
adds them to the bucket of the current minute in the same transaction or
script as the settle (one upsert per outcome kind, never one per job), and
`outcome_minutes(since)` reads them back. Being in the queue's storage, the
chart reads the same after a restart, and sums every daemon sharing the queue.
Buckets older than KEEP_SECONDS are dropped (SQLite: prune(); Redis: EXPIRE).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from drainpool.queue.base import QueueError

# What the pool reports, then `dead`, which the queue adds for a failure that is final.
REPORTED = ("completed", "failed", "interrupted", "cancelled", "abandoned", "aborted", "timed_out")
OUTCOMES = (*REPORTED, "dead")
MINUTE = 60
KEEP_SECONDS = 2 * 3600  # two hours of buckets: the chart shows one

# SQLite: added by schema 6 (sqlite.py's _migrate), in place on older files.
TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS outcome_minutes (minute INTEGER NOT NULL, outcome TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (minute, outcome)) WITHOUT ROWID"
)
UPSERT_SQL = (
    "INSERT INTO outcome_minutes (minute, outcome, n) VALUES (?, ?, ?)"
    " ON CONFLICT (minute, outcome) DO UPDATE SET n = n + excluded.n"
)
READ_SQL = "SELECT minute, outcome, n FROM outcome_minutes WHERE minute >= ?"
PRUNE_SQL = "DELETE FROM outcome_minutes WHERE minute < ?"


def check_outcomes(outcomes: Mapping[str, int] | None) -> dict[str, int]:
    """The non-zero counts of a batch; an unknown outcome or a bad count is a QueueError."""
    counts: dict[str, int] = {}
    for name, n in (outcomes or {}).items():
        if name not in REPORTED:
            raise QueueError(f"outcomes: unknown outcome {name!r} (known: {', '.join(REPORTED)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise QueueError(f"outcomes: {name} must be a count (an int >= 0), not {n!r}")
        if n:
            counts[name] = n
    return counts


def minute_of(seconds: float) -> int:
    """The start (epoch seconds) of the minute that holds `seconds`."""
    return int(seconds // MINUTE) * MINUTE


def first_minute(since: float, now: float) -> int:
    """The first bucket a read covers: `since`, but never older than what is kept."""
    if not math.isfinite(since):
        raise QueueError(f"since must be a finite time in seconds, not {since!r}")
    return minute_of(max(since, now - KEEP_SECONDS))


def as_minutes(
    first: int, now: float, found: Iterable[tuple[int, str, int]]
) -> list[dict[str, Any]]:
    """One entry per minute from `first` to now, oldest first, every outcome counted (0 if none)."""
    rows: dict[int, dict[str, Any]] = {
        minute: {"minute": minute, **dict.fromkeys(OUTCOMES, 0)}
        for minute in range(first, minute_of(now) + 1, MINUTE)
    }
    for minute, outcome, n in found:
        row = rows.get(int(minute))
        if row is not None and outcome in OUTCOMES:
            row[outcome] += int(n)
    return list(rows.values())
