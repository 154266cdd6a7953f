"""What arrives in the supervisor's inbox besides signal numbers.

Threads (the watcher, the pools' dispatchers, the HTTP server) never act on
the supervisor: they put one of these in its inbox, and its loop decides.
The loop tells them apart by type and never compares two: eq=False spares the
generated __eq__ and __hash__, whose making is start-up time (issue 17).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, eq=False)
class ConfigChanged:
    """The watcher saw the config file (or its directory's ..data link) change."""


@dataclass(frozen=True, slots=True, eq=False)
class QueueHealthChanged:
    """A dispatcher saw the queue go away or come back; the queue monitor holds the word."""


@dataclass(frozen=True, slots=True, eq=False)
class PoolDrained:
    """A pool generation settled every job of its drain."""

    pool: Any  # the pool that drained; the supervisor matches it by identity


@dataclass(frozen=True, slots=True, eq=False)
class ReloadRequest:
    """A reload asked for by something other than a signal (the console)."""

    source: str


def take_all(inbox: queue.SimpleQueue[object], timeout: float) -> list[object]:
    """Everything in the inbox, waiting up to `timeout` for the first item (0: no wait)."""
    items: list[object] = []
    try:
        items.append(inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait())
        while True:
            items.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return items
