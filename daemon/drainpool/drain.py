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

# Once a pool's grace is over, its dispatcher releases what was abandoned and reports the
# pool drained, within milliseconds as a rule, or gives the queue up if it keeps failing. A
# queue call that never returns (a row that another PostgreSQL session keeps locked, a hung
# file system) would hold the stop for ever, past systemd's TimeoutStopSec; so the drain
# waits this long after the grace, then gives the pool up. It stays below the 5 s that the
# supervisor adds to the grace when it extends systemd's stop timeout.
SETTLE_SECONDS = 3.0


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
    def counts(self) -> Mapping[Outcome, int]: ...

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
        self._settle_by: dict[str, float] = {}  # grace over: drained by then, or given up
        self._given_up: set[str] = set()

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
            if name in self._forced:
                continue
            self._forced.add(name)
            self._settle_by[name] = self._clock() + SETTLE_SECONDS
            abandoned += len(self.pools[name].abandon())
        return abandoned

    def give_up(self) -> bool:
        """Give up the pools still not drained SETTLE_SECONDS after their grace; True if any."""
        now = self._clock()
        late = [
            name
            for name, at in self._settle_by.items()
            if now >= at and name not in self._given_up and not self.pools[name].drained
        ]
        for name in late:
            self._given_up.add(name)
            log.error(
                "pool %s generation %d: its queue did not settle within %.0fs after the grace"
                " (a queue call that does not return); given up: what it still holds comes"
                " back when its leases expire",
                name,
                self.pools[name].generation,
                SETTLE_SECONDS,
            )
        return bool(late)

    def next_deadline(self) -> float | None:
        """The earliest grace still running, or settle deadline, for the loop's wake-up."""
        pending = [d for n, d in self._deadlines.items() if n not in self._forced]
        pending.extend(
            at
            for n, at in self._settle_by.items()
            if n not in self._given_up and not self.pools[n].drained
        )
        return min(pending, default=None)

    def holds(self, name: str, pool: P) -> bool:
        return self.pools.get(name) is pool

    @property
    def finished(self) -> bool:
        """Every pool of the drain has settled its jobs or was given up (true for no pools)."""
        return all(p.drained or n in self._given_up for n, p in self.pools.items())

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
