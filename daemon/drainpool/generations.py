"""The pools the daemon runs, by name, with each name's generation number.

Bookkeeping only: the supervisor decides when a generation starts and ends;
this starts it (through the pool factory it is given), exports its gauges,
forgets it when it ended, and keeps counting the threads an ended generation
left behind (abandoned tasks) until they return.
"""

from __future__ import annotations

from collections.abc import Callable

from drainpool.metrics import Metrics
from drainpool.plan import PoolPlan
from drainpool.pool import Pool, RecentOutcomes
from drainpool.queue import Queue
from drainpool.tasks import TaskSpec


class Generations:
    """`pools` holds the current generation of each pool; `numbers` its generation number."""

    def __init__(
        self,
        factory: Callable[..., Pool],
        metrics: Metrics,
        recent: RecentOutcomes,
        on_drained: Callable[[Pool], None],
        on_queue_health: Callable[[str, bool, str], None],  # (source, ok, why)
    ) -> None:
        self._factory = factory
        self._metrics = metrics
        self._recent = recent
        self._on_drained = on_drained
        self._on_queue_health = on_queue_health
        self.pools: dict[str, Pool] = {}
        self.numbers: dict[str, int] = {}
        self._stray: list[Pool] = []  # ended generations with threads still running
        self._published: set[str] = set()  # pools whose gauges are exported

    def start(self, name: str, plan: PoolPlan, registry: dict[str, TaskSpec], queue: Queue) -> None:
        """Start the next generation of pool `name`."""
        generation = self.numbers.get(name, 0) + 1
        self.numbers[name] = generation
        pool = self._factory(
            plan.config,
            generation,
            {task: registry[task] for task, _ in plan.task_refs},
            queue,
            self._metrics,
            on_drained=self._on_drained,
            on_queue_health=lambda ok, why: self._on_queue_health(f"pool {name}", ok, why),
            recent=self._recent,
        )
        pool.start()
        self.pools[name] = pool

    def ended(self, name: str, pool: Pool) -> None:
        """A drained generation: forget it (unless already replaced), watch its strays."""
        if pool.stray_threads():
            self._stray.append(pool)
        if self.pools.get(name) is pool:
            del self.pools[name]

    def publish(self) -> None:
        """Export each current pool's gauges; drop those of removed pools."""
        for name in self._published - self.pools.keys():
            self._metrics.forget_pool(name)
        for name, pool in self.pools.items():
            config = pool.config
            self._metrics.declare_pool(name, config.workers, pool.generation, config.grace_seconds)
        self._published = set(self.pools)

    def count_strays(self) -> None:
        """Update the stray-threads gauge; forget generations whose threads all returned."""
        self._stray = [p for p in self._stray if p.stray_threads()]
        self._metrics.stray_threads.set(sum(p.stray_threads() for p in self._stray))

    def max_grace(self, pools: dict[str, Pool] | None = None) -> float:
        chosen = self.pools if pools is None else pools
        return max((p.config.grace_seconds for p in chosen.values()), default=0.0)

    def close(self) -> None:
        """On the way out: never leave leases behind (an error path skipped the drain)."""
        for pool in list(self.pools.values()):
            if not pool.drained:
                pool.begin_drain()
                pool.abandon()
            pool.join(timeout=1.0)
