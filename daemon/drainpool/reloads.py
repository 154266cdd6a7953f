"""When a reload is due, and what it would change.

Both are plain computations the supervisor asks at its loop: the schedule
runs on the clock it is given (file edits debounce, signals do not), and the
comparison of two configs says which pools restart, or that nothing changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from drainpool.plan import diff_plans, plan_pools
from drainpool.settings import LoadedConfig
from drainpool.tasks import TaskSpec

MAX_DEBOUNCE_SECONDS = 2.0  # a stream of edits still reloads at least this often


@dataclass(frozen=True, eq=False)  # never compared: no generated __eq__/__hash__
class ReloadRecord:
    """The last reload attempt, for `drainpool reload` and the status API."""

    seq: int = 0
    result: str = "none"  # applied, rejected, unchanged
    message: str = ""
    source: str = ""
    at: float = 0.0

    def next(self, result: str, message: str, source: str) -> ReloadRecord:
        """The record of the reload attempt after this one, made now."""
        return ReloadRecord(self.seq + 1, result, message, source, time.time())


class ReloadSchedule:
    """The next reload's due time and source ("config_file", "sighup", "console")."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.due: float | None = None
        self.source = ""
        self._first = 0.0  # when the pending reload was first asked for

    def request(self, source: str, due: float) -> None:
        """File edits push the reload back (trailing debounce); other sources never wait."""
        if self.due is None:
            self._first = self._clock()
        if source == "config_file":
            if self.due is None or self.source == "config_file":
                # Trailing debounce, but never postponed past MAX_DEBOUNCE_SECONDS.
                self.due = min(due, self._first + MAX_DEBOUNCE_SECONDS)
                self.source = source
        else:
            self.due = due if self.due is None else min(self.due, due)
            self.source = source

    def take(self) -> str | None:
        """The source of a reload now due (and forget it), or None."""
        if self.due is None or self._clock() < self.due:
            return None
        source, self.due, self.source = self.source, None, ""
        return source

    def cancel(self) -> None:
        self.due, self.source = None, ""


def reload_changes(
    old: LoadedConfig,
    old_registry: dict[str, TaskSpec],
    new: LoadedConfig,
    new_registry: dict[str, TaskSpec],
) -> dict[str, str] | None:
    """Pools a reload from `old` to `new` restarts, and why; None when nothing changed."""
    everything = "queue changed" if new.settings.queue != old.settings.queue else ""
    changes = diff_plans(
        plan_pools(old.settings, old_registry),
        plan_pools(new.settings, new_registry),
        everything=everything,
    )
    # effective() masks the console token, so a token change is compared on its own.
    if (
        not changes
        and new.settings.effective() == old.settings.effective()
        and new.settings.console == old.settings.console
    ):
        return None
    return changes


def describe_restarts(changes: dict[str, str], running: Iterable[str]) -> str:
    """For the log: each pool that restarts and why, then the running pools kept."""
    kept = sorted(set(running) - changes.keys())
    restarts = "; ".join(f"pool {n} restarts ({why})" for n, why in changes.items())
    return restarts + (f"; unchanged: {', '.join(kept)}" if kept else "")
