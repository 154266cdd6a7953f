"""The daemon's background threads that follow the config: watcher, scheduler, record pruner.

Each runs on its own thread and only hands items to the supervisor's inbox or
works on the queue; this holds them so the supervisor starts, reconfigures and
stops them in one call each, and decides nothing about them beyond when.
"""

from __future__ import annotations

from collections.abc import Callable

from drainpool.metrics import Metrics
from drainpool.queue import Queue
from drainpool.retention import Pruner
from drainpool.scheduler import Scheduler
from drainpool.settings import LoadedConfig
from drainpool.watcher import ConfigWatcher


class Background:
    """The config watcher (when reload.watch), the scheduler and the record pruner."""

    def __init__(
        self,
        queue: Callable[[], Queue | None],
        metrics: Metrics,
        on_config_changed: Callable[[], None],
    ) -> None:
        self._on_config_changed = on_config_changed
        self.watcher: ConfigWatcher | None = None
        self.pruner = Pruner(queue)  # expired job records
        self.scheduler = Scheduler(queue, metrics)  # schedules' ticks (issue 20)

    def start(self, loaded: LoadedConfig) -> None:
        self.follow(loaded)
        self.pruner.start()
        self.scheduler.start()

    def follow(self, loaded: LoadedConfig) -> list[str]:
        """Apply a (new) config: watch its file or not, take its schedules; the changed ones."""
        want = loaded.settings.reload.watch
        if self.watcher is not None and (not want or self.watcher.path != loaded.path):
            self.watcher.stop()
            self.watcher = None
        if want and self.watcher is None:
            self.watcher = ConfigWatcher(loaded.path, self._on_config_changed)
            self.watcher.start()
        return self.scheduler.update(loaded.settings.schedules)

    def stop_scheduling(self) -> None:
        """A stopping daemon enqueues no more ticks; the other daemons on the queue do."""
        self.scheduler.stop(timeout=0)

    def close(self) -> None:
        self.scheduler.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.pruner.stop()
