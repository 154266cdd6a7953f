"""The daemon's background threads that follow the config: watcher, scheduler, record pruner.

Each runs on its own thread and only hands items to the supervisor's inbox or
works on the queue; this holds them so the supervisor starts, reconfigures and
stops them in one call each, and decides nothing about them beyond when.

A thread with nothing to do does not exist (issue 17): the watcher only with
`reload.watch`, the scheduler from the first config that has schedules (a
reload may add them). Their modules load with them: the inotify reader,
watchfiles, cronsim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drainpool.metrics import Metrics
from drainpool.queue import Queue
from drainpool.retention import Pruner
from drainpool.settings import LoadedConfig

if TYPE_CHECKING:
    from drainpool.scheduler import Scheduler
    from drainpool.watcher import ConfigWatcher


class Background:
    """The config watcher (when reload.watch), the scheduler and the record pruner."""

    def __init__(
        self,
        queue: Callable[[], Queue | None],
        metrics: Metrics,
        on_config_changed: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._metrics = metrics
        self._on_config_changed = on_config_changed
        self.watcher: ConfigWatcher | None = None
        self.pruner = Pruner(queue)  # expired job records
        self.scheduler: Scheduler | None = None  # schedules' ticks (issue 20), once there are any
        self._started = False
        self._scheduling = True  # until the daemon stops

    def start(self, loaded: LoadedConfig) -> None:
        self.follow(loaded)
        self._started = True
        self.pruner.start()

    def follow(self, loaded: LoadedConfig) -> list[str]:
        """Apply a (new) config: watch its file or not, take its schedules; the changed ones."""
        want = loaded.settings.reload.watch
        if self.watcher is not None and (not want or self.watcher.path != loaded.path):
            self.watcher.stop()
            self.watcher = None
        if want and self.watcher is None:
            from drainpool.watcher import ConfigWatcher  # inotify or watchfiles: only to watch

            self.watcher = ConfigWatcher(loaded.path, self._on_config_changed)
            self.watcher.start()
        schedules = loaded.settings.schedules
        if self.scheduler is None:
            if not schedules or not self._scheduling:
                return []
            from drainpool.scheduler import Scheduler  # cronsim and zones: only with schedules

            # Made at a reload, it takes the new schedules up from now, as a running one does.
            self.scheduler = Scheduler(self._queue, self._metrics, taken_up=self._started)
            changed = self.scheduler.update(schedules)
            self.scheduler.start()
            return changed
        return self.scheduler.update(schedules)

    def schedules_view(self) -> list[dict[str, Any]]:
        """The schedules as /api/schedules shows them; none before the first."""
        return [] if self.scheduler is None else self.scheduler.view()

    def stop_scheduling(self) -> None:
        """A stopping daemon enqueues no more ticks; the other daemons on the queue do."""
        self._scheduling = False
        if self.scheduler is not None:
            self.scheduler.stop(timeout=0)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.pruner.stop()
