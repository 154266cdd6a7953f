"""Schedule ticks in the SQLite queue (issue 20): one row per schedule, moved by compare-and-set.

A module of its own because the once-per-tick guarantee is one concern: the
row of a schedule is advanced in the same write transaction that inserts the
tick's job (SqliteQueue.enqueue_tick), so two daemons that both saw a tick
come due cannot both enqueue it: the second finds the row already moved.
"""

from __future__ import annotations

import sqlite3

# The schema step that adds schedules; idempotent, so the version it runs at can move.
TICKS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schedule_ticks ("
    " name TEXT PRIMARY KEY, tick REAL NOT NULL, job_id INTEGER, updated_at REAL NOT NULL)"
)
SCHEDULE_COLUMNS = ("schedule TEXT", "tick REAL")  # on jobs: the record names its tick


def migrate(conn: sqlite3.Connection) -> None:
    """Add the ticks table and the jobs' schedule columns; every job is kept."""
    conn.execute(TICKS_TABLE)
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column in SCHEDULE_COLUMNS:
        if column.split()[0] not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")


def advance(
    conn: sqlite3.Connection, name: str, tick: float, expected: float | None, now: float
) -> bool:
    """Move the schedule's last tick from `expected` to `tick`; False if it was not `expected`."""
    if expected is None:
        sql = (
            "INSERT INTO schedule_ticks (name, tick, updated_at) VALUES (?1, ?2, ?3)"
            " ON CONFLICT (name) DO NOTHING"
        )
        return conn.execute(sql, (name, tick, now)).rowcount == 1
    sql = "UPDATE schedule_ticks SET tick = ?2, updated_at = ?3 WHERE name = ?1 AND tick = ?4"
    return conn.execute(sql, (name, tick, now, expected)).rowcount == 1


def note_job(conn: sqlite3.Connection, name: str, job_id: int) -> None:
    conn.execute("UPDATE schedule_ticks SET job_id = ? WHERE name = ?", (job_id, name))


def read_ticks(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(conn.execute("SELECT name, tick FROM schedule_ticks").fetchall())
