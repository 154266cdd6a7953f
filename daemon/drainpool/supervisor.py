"""The supervisor: the only place that knows the whole lifecycle.

Everything that can change the daemon's course (a signal, a config edit, a
pool that finished draining) arrives as an item in one inbox, and every
decision is taken here, in one loop on the main thread. `step()` handles what
is in the inbox and then checks the clock, so tests can drive the loop one
step at a time with an injected clock.

Lifecycle: starting -> running -> draining -> (running again | stopped).
A reload drains only the pools whose config changed and starts their next
generation; pools are held by name from the start. What the supervisor wires
or serves lives elsewhere: drainpool.runtime (config, queue), drain (the
graces), queue_monitor (queue health), status and endpoint (what it says).
"""

from __future__ import annotations

import logging
import queue as queue_mod
import signal
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from drainpool import runtime, status, tracing
from drainpool.background import Background
from drainpool.drain import Drain
from drainpool.endpoint import Endpoint, EndpointError
from drainpool.exitcodes import ExitCode
from drainpool.generations import Generations
from drainpool.inbox import ConfigChanged, PoolDrained, QueueHealthChanged, ReloadRequest, take_all
from drainpool.lifecycle import Phase, check_transition
from drainpool.logs import configure_logging
from drainpool.metrics import Metrics
from drainpool.plan import plan_pools
from drainpool.pool import Pool, RecentOutcomes
from drainpool.queue import Queue
from drainpool.queue_monitor import QueueMonitor
from drainpool.reloads import ReloadRecord, ReloadSchedule, describe_restarts, reload_changes
from drainpool.settings import ConfigError, LoadedConfig
from drainpool.systemd import Notifier
from drainpool.tasks import TaskSpec

log = logging.getLogger("drainpool.supervisor")

STALL_SECONDS = 10.0  # /healthz fails when the loop has not turned for this long
# The loop turns at least this often, to show /healthz it is alive; everything else wakes it:
# the inbox, the reload and drain deadlines, the watchdog (issue 21: idle is idle).
TICK_SECONDS = STALL_SECONDS / 2
RECENT_OUTCOMES = 200  # finished jobs the console shows


class Supervisor:
    """Owns the pools, the queue, the HTTP endpoint and the watcher; decides in `step()`."""

    def __init__(
        self,
        loaded: LoadedConfig,
        registry: dict[str, TaskSpec],
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        inbox: queue_mod.SimpleQueue[object] | None = None,
        pool_factory: Callable[..., Pool] = Pool,  # (config, generation, tasks, queue, ...)
        open_queue: Callable[[LoadedConfig], Queue] | None = None,
    ) -> None:
        self.loaded = loaded
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier.from_env()
        self.clock = clock
        self.inbox: queue_mod.SimpleQueue[object] = inbox or queue_mod.SimpleQueue()
        # The daemon's own connection skips the per-commit fsync (see drainpool.queue.sqlite).
        self._open_queue = open_queue or partial(runtime.open_queue, durable_commits=False)
        self.phase = Phase.STARTING
        self.queue: Queue | None = None
        self.reload_record = ReloadRecord()
        self.recent = RecentOutcomes(RECENT_OUTCOMES)  # across generations, for the console
        self._generations = Generations(
            pool_factory,
            self.metrics,
            self.recent,
            on_drained=lambda pool: self.inbox.put(PoolDrained(pool)),
            on_queue_health=lambda source, ok, why: self.queue_monitor.report(source, ok, why),
        )
        self.pools = self._generations.pools  # the current generation of each pool, by name
        self.generations = self._generations.numbers
        self.exit_code = ExitCode.OK
        self.queue_monitor = QueueMonitor(
            lambda: self.queue,
            lambda: self.registry.keys(),
            clock,
            lambda: self.inbox.put(QueueHealthChanged()),
        )
        self.endpoint = Endpoint(self)
        self.background = Background(
            lambda: self.queue, self.metrics, lambda: self.inbox.put(ConfigChanged())
        )
        self._drain: Drain[Pool] | None = None
        self._pending: tuple[LoadedConfig, dict[str, TaskSpec], str] | None = None  # after a drain
        self._stop_requested = False
        self._reloads = ReloadSchedule(clock)
        self._last_turn = clock()
        self.started_at = time.time()

    def _enter(self, phase: Phase) -> None:
        check_transition(self.phase, phase)
        self.phase = phase
        self.metrics.state.state(phase.value)

    # -- start and stop -------------------------------------------------------

    def start(self) -> None:
        """Open the queue, bind the endpoint, start the pools and the watcher; then READY."""
        settings = self.loaded.settings
        self.metrics.state.state(Phase.STARTING.value)
        self.queue = queue = self._open_queue(self.loaded)
        self.metrics.queue_depth.source = self.queue_monitor.stats
        self._queue_health_changed(self.queue_monitor.ping())
        self.queue_monitor.bury_unknown()
        self.endpoint.start(settings)
        for name, plan in plan_pools(settings, self.registry).items():
            self._generations.start(name, plan, self.registry, queue)
        self.background.start(self.loaded)
        self._enter(Phase.RUNNING)
        self._generations.publish()
        log.info(status.running_line(self))
        self.notifier.ready(self.status_line())

    def run(self) -> ExitCode:
        """Start, loop until stopped, release everything; return the exit code."""
        try:
            self.start()
            while self.phase is not Phase.STOPPED:
                self.step(self._timeout())
        finally:
            self.close()
        return self.exit_code

    def close(self) -> None:
        self.background.close()
        self._generations.close()
        self.endpoint.stop()
        if self.queue is not None:
            self.queue.close()

    # -- the loop ---------------------------------------------------------------

    def step(self, timeout: float = 0.0) -> None:
        """Handle all that is in the inbox (waiting up to `timeout` for it), then the clock."""
        for item in take_all(self.inbox, timeout):
            self._handle(item)
        self._tick()

    def _timeout(self) -> float:
        now = self.clock()
        wakes = [now + TICK_SECONDS, self._reloads.due]
        if self._drain is not None:
            wakes.append(self._drain.next_deadline())
        interval = self.notifier.watchdog_interval  # the gap between pings
        if interval:
            wakes.append(now + interval)
        return max(min(w for w in wakes if w is not None) - now, 0.001)

    def _handle(self, item: object) -> None:
        if isinstance(item, int):
            self._on_signal(item)
        elif isinstance(item, ConfigChanged):
            debounce = self.loaded.settings.reload.debounce_ms / 1000
            self._request_reload("config_file", self.clock() + debounce)
        elif isinstance(item, ReloadRequest):
            self._request_reload(item.source, self.clock())
        elif isinstance(item, PoolDrained):
            self._on_pool_drained(item.pool)
        elif isinstance(item, QueueHealthChanged):
            self._queue_health_changed(self.queue_monitor.changed())

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(signum).name
            if self._stop_requested:
                log.warning("%s again during the drain: ending the grace now", name)
                if self._drain is not None:
                    self._drain.force()
                    self.exit_code = ExitCode.ABANDONED  # a forced stop, whatever it abandoned
            else:
                log.info(
                    "%s: stopping gracefully (grace %.1fs)", name, self._generations.max_grace()
                )
                self._begin_stop()
        elif signum == signal.SIGHUP:
            self._request_reload("sighup", self.clock())
        elif signum == signal.SIGUSR1:
            log.info(status.state_dump(self))

    def _tick(self) -> None:
        now = self.clock()
        self._last_turn = now
        if self.notifier.watchdog_due(now):
            self.notifier.watchdog_ping(now)
        if self._drain is not None:
            self._drain_clock(self._drain)
        if self.phase is Phase.RUNNING and (source := self._reloads.take()) is not None:
            self._reload(source)
        self._generations.count_strays()

    def _drain_clock(self, drain: Drain[Pool]) -> None:
        """The clock's part of a drain: graces that ran out, pools whose queue never settled."""
        abandoned = drain.expire()
        gave_up = drain.give_up()
        if (abandoned or gave_up) and self._stop_requested:
            self.exit_code = ExitCode.ABANDONED
        if gave_up and drain.finished:
            self._finish_drain()

    def _queue_health_changed(self, change: str | None) -> None:
        if change == "down":
            self.notifier.status(self.status_line("waiting for the queue"))
        elif change == "up":
            self.notifier.status(self.status_line())

    # -- drains -----------------------------------------------------------------

    def _begin_stop(self) -> None:
        self._stop_requested = True
        self.background.stop_scheduling()
        self._reloads.cancel()
        self._pending = None
        self.notifier.stopping(self.status_line("stopping"))
        if self._drain is not None:  # a reload drain becomes the stop's drain
            self._drain.reason = "shutdown"
            self._drain.add(self.pools)
            return
        self._begin_drain("shutdown", dict(self.pools))

    def _begin_drain(self, reason: str, pools: dict[str, Pool]) -> None:
        span = tracing.start_span(
            "drainpool.drain", **{"drainpool.reason": reason, "drainpool.pools": sorted(pools)}
        )
        self._drain = Drain(reason, self.clock, span)
        if self.phase is not Phase.DRAINING:
            self._enter(Phase.DRAINING)
        self.notifier.extend_timeout(self._generations.max_grace(pools) + 5.0)
        self._drain.add(pools)
        if self._drain.finished:
            self._finish_drain()

    def _on_pool_drained(self, pool: Pool) -> None:
        drain = self._drain
        if drain is None or not drain.holds(pool.config.name, pool):
            return
        self.metrics.drain_duration.labels(pool=pool.config.name, reason=drain.reason).observe(
            drain.elapsed()
        )
        if drain.finished:
            self._finish_drain()

    def _finish_drain(self) -> None:
        drain = self._drain
        assert drain is not None
        self._drain = None
        drain.finish()
        for name, pool in drain.pools.items():
            if pool.unsettled and self._stop_requested:  # left to their leases, not released
                self.exit_code = ExitCode.ABANDONED
            self._generations.ended(name, pool)
        if self._stop_requested:
            self._enter(Phase.STOPPED)
            return
        assert self._pending is not None
        loaded, registry, source = self._pending
        self._pending = None
        self._apply(loaded, registry, source, restarted=set(drain.pools))

    # -- reload ----------------------------------------------------------------

    def _request_reload(self, source: str, due: float) -> None:
        if not self._stop_requested:  # a stop wins over any reload
            self._reloads.request(source, due)

    def _reload(self, source: str) -> None:
        """Validate the file; reject, ignore if unchanged, or drain what changed. Every
        outcome ends in READY=1 naming it (_record_reload), so Type=notify-reload never waits."""
        self.notifier.reloading(self.status_line("reloading"))
        with tracing.span("drainpool.reload", **{"drainpool.source": source}):
            self._reload_file(source)

    def _reload_file(self, source: str) -> None:
        try:
            loaded, registry = runtime.load(self.loaded.path)
        except ConfigError as exc:
            return self._reject(exc.problems, source)
        changes = reload_changes(self.loaded, self.registry, loaded, registry)
        how = source.replace("_", " ")
        if changes is None:
            log.info("reload (%s): config unchanged", how)
            return self._record_reload("unchanged", "", source)
        if loaded.settings.metrics != self.loaded.settings.metrics:
            try:  # first, so a metrics change that cannot be served rejects the whole reload
                self.endpoint.restart(loaded.settings, self.loaded.settings)
            except EndpointError as exc:
                return self._reject([str(exc)], source)
        if not changes:  # log, metrics or console settings: applied in place
            self._apply(loaded, registry, source, restarted=set())
            return
        log.info("reload (%s): %s", how, describe_restarts(changes, self.pools.keys()))
        self._pending = (loaded, registry, source)
        self._begin_drain("reload", {n: p for n, p in self.pools.items() if n in changes})

    def _reject(self, problems: list[str], source: str) -> None:
        for problem in problems:
            log.error("config rejected, keeping the running config: %s", problem)
        self._record_reload("rejected", "; ".join(problems), source)

    def _apply(
        self,
        loaded: LoadedConfig,
        registry: dict[str, TaskSpec],
        source: str,
        restarted: set[str],
    ) -> None:
        """Swap in a validated config and start the pools it changed."""
        old = self.loaded.settings
        new = loaded.settings
        self.loaded, self.registry = loaded, registry
        if new.log != old.log:
            configure_logging(new.log)
        if new.queue != old.queue:
            old_queue, self.queue = self.queue, self._open_queue(loaded)
            if old_queue is not None:
                old_queue.close()
        changed_schedules = self.background.follow(loaded)
        self.queue_monitor.bury_unknown()
        for name, plan in plan_pools(new, registry).items():
            if name not in self.pools and self.queue is not None:
                self._generations.start(name, plan, registry, self.queue)
        if self.phase is not Phase.RUNNING:
            self._enter(Phase.RUNNING)
        for name in restarted & self.pools.keys():  # drained and started again (not removed)
            self.metrics.pool_restarts.labels(pool=name, reason=source).inc()
        self._generations.publish()
        log.info(
            "reload applied: %s%s",
            self.status_line(),
            f"; schedules changed: {', '.join(changed_schedules)}" if changed_schedules else "",
        )
        self._record_reload("applied", "", source)

    def _record_reload(self, result: str, message: str, source: str) -> None:
        self.metrics.reload_result(result)
        self.reload_record = self.reload_record.next(result, message, source)
        self.notifier.ready(self.status_line() + f"; reload {result}")

    # -- what the endpoint and the notifier read ---------------------------------

    def request_reload(self, source: str) -> None:
        """From any thread (the console): ask the loop for a reload."""
        self.inbox.put(ReloadRequest(source))

    def healthy(self) -> bool:
        return self.clock() - self._last_turn < STALL_SECONDS

    def ready(self) -> bool:
        return self.phase is Phase.RUNNING and self.queue_monitor.ok

    def status_line(self, state: str | None = None) -> str:
        return status.status_line(self, state)

    def schedules(self) -> list[dict[str, Any]]:
        """The /api/schedules document: each schedule, its last and next tick."""
        return self.background.schedules_view()

    def status(self) -> dict[str, Any]:
        """The /api/status document; runs on the HTTP thread, never on the loop."""
        return status.document(self)
