"""What arrives in the supervisor's inbox besides signal numbers.

Threads (the watcher, the pools' dispatchers, the HTTP server) never act on
the supervisor: they put one of these in its inbox, and its loop decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """The watcher saw the config file (or its directory's ..data link) change."""


@dataclass(frozen=True, slots=True)
class QueueHealthChanged:
    """A dispatcher saw the queue go away or come back; the queue monitor holds the word."""


@dataclass(frozen=True, slots=True)
class PoolDrained:
    """A pool generation settled every job of its drain."""

    pool: Any  # the pool that drained; the supervisor matches it by identity


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    """A reload asked for by something other than a signal (the console)."""

    source: str
