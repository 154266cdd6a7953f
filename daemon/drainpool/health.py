"""Whether the queue works, as the pools, the start-up ping and scrapes report it.

Each source keeps its own fault, so one pool's success cannot hide another's
failure, and a read that works on a read-only disk cannot declare the queue
healthy. The daemon is ready only when no source reports a fault.
"""

from __future__ import annotations

import threading

# Faults that any pool's successful use of the queue clears: the queue works, and
# the next ping or scrape that would clear them itself may be far off.
ANY_SUCCESS_CLEARS = frozenset({"start", "stats"})


class QueueHealth:
    """Per-source queue faults; thread-safe, cheap on the hot path of success."""

    def __init__(self) -> None:
        self._faults: dict[str, str] = {}  # source -> problem
        self._lock = threading.Lock()
        self.ok = True
        self.problem = ""

    def report(self, source: str, ok: bool, why: str) -> bool:
        """Record one report; return True when readiness changed."""
        if ok and not self._faults:
            return False  # every dispatcher round reports its success: keep it lock-free
        with self._lock:
            was_ok = not self._faults
            if not ok:
                self._faults[source] = why
            else:
                self._faults.pop(source, None)
                if source != "stats":  # a stats read can work where writes fail
                    for other in ANY_SUCCESS_CLEARS:
                        self._faults.pop(other, None)
            self.ok = not self._faults
            self.problem = "; ".join(sorted(set(self._faults.values())))
        return self.ok != was_ok

    def down_for_pools(self) -> bool:
        """A pool (or the start-up ping) sees the queue down: scrapes should not wait on it."""
        return bool(set(self._faults) - ANY_SUCCESS_CLEARS)
