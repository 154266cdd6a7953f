"""One drain: which pools are draining, each one's grace deadline, and when it ends.

A plain object driven by the clock it is given: the supervisor asks it, at
each turn of its loop, which graces are over, and a second signal ends every
grace at once. It starts no thread and never waits, so a test drives it with
a fake clock (issue 17). The pools do the work: `begin_drain` (stop fetching,
set the event, cancel what never started) and `abandon` (release what still
runs); the drain only decides when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sized
from typing import Any, Generic, Protocol, TypeVar

from drainpool.outcomes import Outcome

log = logging.getLogger("drainpool.supervisor")  # the lines the supervisor always logged


class _PoolConfig(Protocol):
    @property
    def grace_seconds(self) -> float: ...


class DrainablePool(Protocol):
    """What a drain needs of a pool generation."""

    @property
    def config(self) -> _PoolConfig: ...

    @property
    def generation(self) -> int: ...

    @property
    def drained(self) -> bool: ...

    def begin_drain(self) -> int: ...

    def abandon(self) -> Sized: ...

    def snapshot(self) -> dict[str, Any]: ...

    @property
    def counts(self) -> Mapping[str, int]: ...

    def join(self, timeout: float) -> None: ...


P = TypeVar("P", bound=DrainablePool)


class Drain(Generic[P]):
    """Pools being drained for one reason ("shutdown" or "reload"), each with its deadline."""

    def __init__(self, reason: str, clock: Callable[[], float], span: Any = None) -> None:
        self.reason = reason
        self._clock = clock
        self.started = clock()
        self.span = span  # drainpool.tracing's span of the drain, when tracing is on
        self.pools: dict[str, P] = {}
        self._deadlines: dict[str, float] = {}
        self._forced: set[str] = set()  # pools whose grace is over

    def add(self, pools: Mapping[str, P]) -> None:
        """Begin draining each pool not yet draining; its grace starts now."""
        now = self._clock()
        for name, pool in pools.items():
            if name in self.pools or pool.drained:
                continue
            self.pools[name] = pool
            self._deadlines[name] = now + pool.config.grace_seconds
            cancelled = pool.begin_drain()
            log.info(
                "pool %s generation %d draining (%s): %d running, %d cancelled",
                name,
                pool.generation,
                self.reason,
                len(pool.snapshot()["running"]),
                cancelled,
            )

    def expire(self) -> int:
        """Abandon what still runs in the pools whose grace is over; return how many jobs."""
        now = self._clock()
        over = [n for n, d in self._deadlines.items() if n not in self._forced and now >= d]
        for name in over:
            log.warning("pool %s: %s drain grace is over", name, self.reason)
        return self._abandon(over)

    def force(self) -> int:
        """A second signal: end every pool's grace now; return how many jobs were abandoned."""
        return self._abandon(list(self.pools))

    def _abandon(self, names: list[str]) -> int:
        abandoned = 0
        for name in names:
            self._forced.add(name)
            abandoned += len(self.pools[name].abandon())
        return abandoned

    def next_deadline(self) -> float | None:
        """The earliest grace still running, for the loop's wake-up."""
        pending = [d for n, d in self._deadlines.items() if n not in self._forced]
        return min(pending, default=None)

    def holds(self, name: str, pool: P) -> bool:
        return self.pools.get(name) is pool

    @property
    def finished(self) -> bool:
        """Every pool of the drain has settled its jobs (true at once for no pools)."""
        return all(p.drained for p in self.pools.values())

    def elapsed(self) -> float:
        return self._clock() - self.started

    def finish(self) -> None:
        """Once finished: join each generation's threads (briefly) and log what it did."""
        for name, pool in self.pools.items():
            pool.join(timeout=1.0)
            counts = ", ".join(f"{k} {pool.counts[k]}" for k in Outcome)
            log.info("pool %s generation %d ended: %s", name, pool.generation, counts)
        log.info("%s drain finished in %.3fs", self.reason, self.elapsed())
        if self.span is not None:
            self.span.end()
