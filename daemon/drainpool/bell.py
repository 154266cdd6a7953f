"""A wake-up call for one sleeping thread that its ringers pay for in C.

The pool's workers ring the dispatcher once per finished job. A
threading.Condition would make each of them take a Python-level lock, and
CPython may switch threads while one holds it: the other workers then pile
up behind that lock, each waking and sleeping again (a lock convoy), which
doubled the CPU per job once a task did some 20 µs of its own Python work
(issue 24). Ringing here is an attribute read and, only while the sleeper
sleeps, a queue.SimpleQueue put: both run without a Python lock.
"""

from __future__ import annotations

import queue


class Bell:
    """Rung by any thread, waited on by one.

    The sleeper calls `arm()` before its last look at the shared state, and
    `wait()` if that look found nothing: a ringer changes the state before
    `ring()`, so either the look sees the change or the ring sees the sleeper
    armed and wakes it. A spare ring costs the sleeper one extra look.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._armed = False

    def arm(self) -> None:
        """About to look one last time before sleeping: ring from now on."""
        while not self._calls.empty():  # rings that the look about to happen answers
            self._calls.get_nowait()
        self._armed = True

    def ring(self) -> None:
        if self._armed:
            self._armed = False
            self._calls.put(None)

    def wait(self, seconds: float) -> bool:
        """Sleep until rung or `seconds` pass; True when rung."""
        try:
            self._calls.get(timeout=max(seconds, 0.0))
            rung = True
        except queue.Empty:
            rung = False
        self._armed = False
        return rung
