"""Pruning job records past queue.retention_seconds, off every hot path.

One background thread per daemon wakes every PRUNE_EVERY_SECONDS and deletes
expired records in small batches (each a short write transaction on SQLite),
pausing between batches so producers and dispatchers are never held up for
long. On Redis the settle script already expires records; a prune there only
trims the records index, so running it everywhere keeps one path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from drainpool.queue import Queue, QueueError

log = logging.getLogger("drainpool.retention")

PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 500  # records per transaction: a few milliseconds of write lock
PRUNE_PAUSE_SECONDS = 0.05  # between two full batches


class Pruner:
    """Calls `queue().prune()` until nothing expired is left, then sleeps; stop() ends it."""

    def __init__(
        self, queue: Callable[[], Queue | None], every: float = PRUNE_EVERY_SECONDS
    ) -> None:
        self._queue = queue
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drainpool-prune", daemon=True)
        self.pruned = 0  # records deleted since start, for status and tests

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        # At start too: a daemon that was down while records expired catches up at once.
        while True:
            self.prune_now()
            if self._stop.wait(self._every):
                return

    def prune_now(self) -> int:
        """Prune every expired record, batch by batch; a failing queue waits for the next turn."""
        pruned = 0
        while not self._stop.is_set():
            queue = self._queue()
            if queue is None:
                break
            try:
                batch = queue.prune(PRUNE_BATCH)
            except QueueError as exc:  # unavailable now: the health monitor says so, not us
                log.debug("pruning records deferred: %s", exc)
                break
            except Exception:  # e.g. a queue closed by a reload under us: next turn, new queue
                log.warning("pruning records failed; trying again later", exc_info=True)
                break
            pruned += batch
            if batch < PRUNE_BATCH or self._stop.wait(PRUNE_PAUSE_SECONDS):
                break
        self.pruned += pruned
        return pruned
