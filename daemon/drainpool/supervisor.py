"""The supervisor: the only place that knows the whole lifecycle.

Everything that can change the daemon's course (a signal, a config edit, a
pool that finished draining) arrives as an item in one inbox, and every
decision is taken here, in one loop on the main thread. `step()` handles what
is in the inbox and then checks the clock, so tests can drive the loop one
step at a time with an injected clock.

Lifecycle: starting -> running -> draining -> (running again | stopped).
A reload drains only the pools whose config changed and starts their next
generation; pools are held by name from the start.
"""

from __future__ import annotations

import enum
import logging
import os
import queue as queue_mod
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drainpool import settings as settings_mod
from drainpool.console import Console, ConsoleSource
from drainpool.exitcodes import ExitCode
from drainpool.health import QueueHealth
from drainpool.httpserver import Endpoints, HttpServer
from drainpool.logs import configure_logging
from drainpool.metrics import OUTCOMES, Metrics
from drainpool.plan import PoolPlan, diff_plans, plan_pools, plan_to_json
from drainpool.pool import Pool, RecentOutcomes
from drainpool.queue import Queue, QueueStats, QueueUnavailable, RetryPolicy, from_url
from drainpool.settings import ConfigError, LoadedConfig, Settings
from drainpool.systemd import Notifier
from drainpool.tasks import TaskSpec, build_registry
from drainpool.watcher import ConfigWatcher

log = logging.getLogger("drainpool.supervisor")

TICK_SECONDS = 0.5  # the loop turns at least this often (healthz, watchdog, deadlines)
STALL_SECONDS = 10.0  # /healthz fails when the loop has not turned for this long
MAX_DEBOUNCE_SECONDS = 2.0  # a stream of edits still reloads at least this often
RECENT_OUTCOMES = 200  # finished jobs the console shows


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_ALLOWED = {
    Phase.STARTING: {Phase.RUNNING, Phase.DRAINING, Phase.STOPPED},
    Phase.RUNNING: {Phase.DRAINING},
    Phase.DRAINING: {Phase.RUNNING, Phase.STOPPED},
    Phase.STOPPED: set(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """The watcher saw the config file (or its directory's ..data link) change."""


@dataclass(frozen=True, slots=True)
class QueueHealthChanged:
    """A dispatcher saw the queue go away or come back; `queue_ok` holds the latest word."""


@dataclass(frozen=True, slots=True)
class PoolDrained:
    pool: Pool


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    """A reload asked for by something other than a signal (the console)."""

    source: str


@dataclass
class ReloadRecord:
    """The last reload attempt, for `drainpool reload` and the status API."""

    seq: int = 0
    result: str = "none"  # applied, rejected, unchanged
    message: str = ""
    source: str = ""
    at: float = 0.0


@dataclass
class _Drain:
    """Pools being drained, each with its own grace deadline."""

    reason: str  # "shutdown" or "reload"
    started: float
    pools: dict[str, Pool] = field(default_factory=dict)
    deadlines: dict[str, float] = field(default_factory=dict)
    forced: set[str] = field(default_factory=set)  # pools whose grace is over
    pending: LoadedConfig | None = None  # the config to start when a reload drain ends
    pending_registry: dict[str, TaskSpec] = field(default_factory=dict)
    source: str = ""


class Supervisor:
    """Owns the pools, the queue, the HTTP endpoint and the watcher."""

    def __init__(
        self,
        loaded: LoadedConfig,
        registry: dict[str, TaskSpec],
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        inbox: queue_mod.SimpleQueue[object] | None = None,
    ) -> None:
        self.loaded = loaded
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier.from_env()
        self.clock = clock
        self.inbox: queue_mod.SimpleQueue[object] = inbox or queue_mod.SimpleQueue()
        self.phase = Phase.STARTING
        self.pools: dict[str, Pool] = {}
        self.generations: dict[str, int] = {}
        self.queue: Queue | None = None
        self.http: HttpServer | None = None
        self.watcher: ConfigWatcher | None = None
        self.reload_record = ReloadRecord()
        self.recent = RecentOutcomes(RECENT_OUTCOMES)  # across generations, for the console
        self.exit_code = ExitCode.OK
        self.queue_health = QueueHealth()
        self._queue_down_since: float | None = None  # as logged by the loop
        self._bury_due = False  # bury_unknown could not run: retry when the queue is back
        self._drain: _Drain | None = None
        self._stop_requested = False
        self._reload_due: float | None = None
        self._reload_source = ""
        self._reload_first = 0.0
        self._last_turn = clock()
        self._stray: list[Pool] = []
        self._published_pools: set[str] = set()  # pools whose gauges are exported
        self.started_at = time.time()

    # -- phase ----------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        if phase not in _ALLOWED[self.phase]:
            raise IllegalTransition(f"{self.phase.value} -> {phase.value}")
        self.phase = phase
        self.metrics.state.state(phase.value)

    # -- start and stop -------------------------------------------------------

    def start(self) -> None:
        """Open the queue, bind the endpoint, start the pools and the watcher; then READY."""
        settings = self.loaded.settings
        self.metrics.state.state(Phase.STARTING.value)
        self.queue = self._open_queue(self.loaded)
        self.metrics.queue_depth.source = self._queue_stats
        self._ping_queue()
        self._bury_unknown()
        self._start_http(settings)
        for name, plan in plan_pools(settings, self.registry).items():
            self._start_pool(name, plan, self.registry)
        self._apply_watch(settings)
        self._enter(Phase.RUNNING)
        self._publish_pool_gauges()
        log.info(
            "running: pid %d, pools %s, config %s",
            os.getpid(),
            ", ".join(f"{n} ({p.config.workers} workers)" for n, p in self.pools.items()),
            self.loaded.path,
        )
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
        if self.watcher is not None:
            self.watcher.stop()
        for pool in list(self.pools.values()):
            if not pool.drained:  # only on an error path: never leave leases behind
                pool.begin_drain()
                pool.abandon()
            pool.join(timeout=1.0)
        if self.http is not None:
            self.http.stop()
        if self.queue is not None:
            self.queue.close()

    # -- the loop ---------------------------------------------------------------

    def step(self, timeout: float = 0.0) -> None:
        """Handle all that is in the inbox (waiting up to `timeout` for it), then the clock."""
        items: list[object] = []
        try:
            items.append(
                self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
            )
            while True:
                items.append(self.inbox.get_nowait())
        except queue_mod.Empty:
            pass
        for item in items:
            self._handle(item)
        self._tick()

    def _timeout(self) -> float:
        now = self.clock()
        wake = now + TICK_SECONDS
        if self._drain is not None:
            drain = self._drain
            pending = [d for n, d in drain.deadlines.items() if n not in drain.forced]
            wake = min([wake, *pending])
        if self._reload_due is not None:
            wake = min(wake, self._reload_due)
        interval = self.notifier.watchdog_interval  # the gap between pings
        if interval:
            wake = min(wake, now + interval)
        return max(wake - now, 0.001)

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
            self._on_queue_health_changed()

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(signum).name
            if self._stop_requested:
                log.warning("%s again during the drain: ending the grace now", name)
                self._force(None, by_signal=True)
            else:
                log.info("%s: stopping gracefully (grace %.1fs)", name, self._max_grace())
                self._begin_stop()
        elif signum == signal.SIGHUP:
            self._request_reload("sighup", self.clock())
        elif signum == signal.SIGUSR1:
            self._dump_state()

    def _tick(self) -> None:
        now = self.clock()
        self._last_turn = now
        if self.notifier.watchdog_due(now):
            self.notifier.watchdog_ping(now)
        drain = self._drain
        if drain is not None:
            for name, deadline in list(drain.deadlines.items()):
                if name not in drain.forced and now >= deadline:
                    log.warning("pool %s: %s drain grace is over", name, drain.reason)
                    self._force([name], by_signal=False)
        if self._reload_due is not None and now >= self._reload_due and self.phase is Phase.RUNNING:
            self._reload_due = None
            self._reload(self._reload_source)
        self._reap_strays()

    # -- stop -----------------------------------------------------------------

    def _begin_stop(self) -> None:
        self._stop_requested = True
        self._reload_due = None
        self.notifier.stopping(self.status_line("stopping"))
        if self._drain is not None:  # a reload drain becomes the stop's drain
            self._drain.reason = "shutdown"
            self._drain.pending = None
            self._drain_more(self.pools)
            return
        self._begin_drain("shutdown", dict(self.pools))

    def _force(self, names: list[str] | None, *, by_signal: bool) -> None:
        """End the grace of some pools (all when `names` is None): abandon what still runs."""
        drain = self._drain
        if drain is None:
            return
        abandoned = 0
        for name in drain.pools if names is None else names:
            drain.forced.add(name)
            abandoned += len(drain.pools[name].abandon())
        if self._stop_requested and (abandoned or by_signal):
            self.exit_code = ExitCode.ABANDONED

    def _begin_drain(self, reason: str, pools: dict[str, Pool], **extra: Any) -> None:
        self._drain = _Drain(reason, self.clock(), **extra)
        if self.phase is not Phase.DRAINING:
            self._enter(Phase.DRAINING)
        grace = max((p.config.grace_seconds for p in pools.values()), default=0.0)
        self.notifier.extend_timeout(grace + 5.0)
        self._drain_more(pools)
        if not self._drain.pools:
            self._finish_drain()

    def _drain_more(self, pools: dict[str, Pool]) -> None:
        assert self._drain is not None
        now = self.clock()
        for name, pool in pools.items():
            if name in self._drain.pools or pool.drained:
                continue
            self._drain.pools[name] = pool
            self._drain.deadlines[name] = now + pool.config.grace_seconds
            cancelled = pool.begin_drain()
            log.info(
                "pool %s generation %d draining (%s): %d running, %d cancelled",
                name,
                pool.generation,
                self._drain.reason,
                len(pool.snapshot()["running"]),
                cancelled,
            )

    def _on_pool_drained(self, pool: Pool) -> None:
        drain = self._drain
        if drain is None or drain.pools.get(pool.config.name) is not pool:
            return
        self.metrics.drain_duration.labels(pool=pool.config.name, reason=drain.reason).observe(
            self.clock() - drain.started
        )
        if all(p.drained for p in drain.pools.values()):
            self._finish_drain()

    def _finish_drain(self) -> None:
        drain = self._drain
        assert drain is not None
        self._drain = None
        elapsed = self.clock() - drain.started
        for name, pool in drain.pools.items():
            pool.join(timeout=1.0)
            counts = ", ".join(f"{k} {pool.counts[k]}" for k in OUTCOMES)
            log.info("pool %s generation %d ended: %s", name, pool.generation, counts)
            if pool.stray_threads():
                self._stray.append(pool)
            if pool.unsettled and self._stop_requested:  # left to their leases, not released
                self.exit_code = ExitCode.ABANDONED
            if self.pools.get(name) is pool:
                del self.pools[name]
        log.info("%s drain finished in %.3fs", drain.reason, elapsed)
        if self._stop_requested:
            self._enter(Phase.STOPPED)
            return
        assert drain.pending is not None
        self._apply(drain.pending, drain.pending_registry, drain.source, restarted=set(drain.pools))

    # -- reload ----------------------------------------------------------------

    def _request_reload(self, source: str, due: float) -> None:
        """Schedule a reload; file edits debounce (each pushes it back), signals do not."""
        if self._stop_requested:
            return
        now = self.clock()
        if self._reload_due is None:
            self._reload_first = now
        if source == "config_file":
            if self._reload_due is None or self._reload_source == "config_file":
                # Trailing debounce, but never postponed past MAX_DEBOUNCE_SECONDS.
                self._reload_due = min(due, self._reload_first + MAX_DEBOUNCE_SECONDS)
                self._reload_source = source
        else:
            self._reload_due = due if self._reload_due is None else min(self._reload_due, due)
            self._reload_source = source

    def _reload(self, source: str) -> None:
        """Validate the file; reject, ignore if unchanged, or drain what changed."""
        self._reload_source = ""
        try:
            loaded = settings_mod.load(self.loaded.path)
            registry = build_registry(loaded)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config rejected, keeping the running config: %s", problem)
            self._record_reload("rejected", "; ".join(exc.problems), source)
            return
        changes = self.reload_plan(loaded, registry)
        how = source.replace("_", " ")
        # effective() masks the console token, so a token change is compared on its own.
        same_console = loaded.settings.console == self.loaded.settings.console
        if (
            loaded.settings.effective() == self.loaded.settings.effective()
            and same_console
            and not changes
        ):
            log.info("reload (%s): config unchanged", how)
            self._record_reload("unchanged", "", source)
            return
        self.notifier.reloading(self.status_line("reloading"))
        if not changes:  # log, metrics or console settings: applied in place
            self._apply(loaded, registry, source, restarted=set())
            return
        kept = sorted(self.pools.keys() - changes.keys())
        log.info(
            "reload (%s): %s%s",
            how,
            "; ".join(f"pool {n} restarts ({why})" for n, why in changes.items()),
            f"; unchanged: {', '.join(kept)}" if kept else "",
        )
        to_drain = {name: pool for name, pool in self.pools.items() if name in changes}
        self._begin_drain(
            "reload", to_drain, pending=loaded, pending_registry=registry, source=source
        )

    def reload_plan(self, loaded: LoadedConfig, registry: dict[str, TaskSpec]) -> dict[str, str]:
        """Which pools a reload to `loaded` would restart, and why."""
        everything = "queue changed" if loaded.settings.queue != self.loaded.settings.queue else ""
        return diff_plans(
            plan_pools(self.loaded.settings, self.registry),
            plan_pools(loaded.settings, registry),
            everything=everything,
        )

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
            old_queue = self.queue
            self.queue = self._open_queue(loaded)
            if old_queue is not None:
                old_queue.close()
        if new.metrics != old.metrics:
            self._restart_http(new, old)
        self._apply_watch(new)
        self._bury_unknown()
        for name, plan in plan_pools(new, registry).items():
            if name not in self.pools:
                self._start_pool(name, plan, registry)
        if self.phase is not Phase.RUNNING:
            self._enter(Phase.RUNNING)
        for name in restarted & self.pools.keys():  # drained and started again (not removed)
            self.metrics.pool_restarts.labels(pool=name, reason=source).inc()
        self._publish_pool_gauges()
        self._record_reload("applied", "", source)
        log.info("reload applied: %s", self.status_line())
        self.notifier.ready(self.status_line())

    def _record_reload(self, result: str, message: str, source: str) -> None:
        self.metrics.reload_result(result)
        record = self.reload_record
        self.reload_record = ReloadRecord(record.seq + 1, result, message, source, time.time())

    # -- pools, queue, endpoint, watcher ---------------------------------------

    def _start_pool(self, name: str, plan: PoolPlan, registry: dict[str, TaskSpec]) -> None:
        assert self.queue is not None
        generation = self.generations.get(name, 0) + 1
        self.generations[name] = generation
        tasks = {task: registry[task] for task, _ in plan.task_refs}
        pool = Pool(
            plan.config,
            generation,
            tasks,
            self.queue,
            self.metrics,
            on_drained=lambda p: self.inbox.put(PoolDrained(p)),
            on_queue_health=lambda ok, why: self._on_queue_health(f"pool {name}", ok, why),
            recent=self.recent,
        )
        pool.start()
        self.pools[name] = pool

    def _open_queue(self, loaded: LoadedConfig) -> Queue:
        q = loaded.settings.queue
        retry = RetryPolicy(q.max_attempts, q.retry_backoff_seconds, q.retry_backoff_max_seconds)
        return from_url(q.url, base_dir=loaded.base_dir, retry=retry, durable_commits=False)

    def _queue_stats(self) -> QueueStats:
        """Queue counts for a scrape; a failure here makes /readyz 503 as well."""
        if self.queue is None:
            raise QueueUnavailable("no queue yet")
        if self.queue_health.down_for_pools():
            # A pool sees the queue down: a scrape must not wait on it too.
            raise QueueUnavailable(self.queue_problem)
        try:
            stats = self.queue.stats()
        except QueueUnavailable as exc:
            self._on_queue_health("stats", False, str(exc))
            raise
        self._on_queue_health("stats", True, "")
        return stats

    def _ping_queue(self) -> None:
        """At start: a queue that does not answer makes the daemon not ready, not dead.

        The pools start anyway; their dispatchers retry with backoff and report
        the queue healthy at their first success, so work begins by itself.
        """
        assert self.queue is not None
        try:
            self.queue.ping()
        except QueueUnavailable as exc:
            self._on_queue_health("start", False, str(exc))
            self._on_queue_health_changed()  # now: a pool may report it back before the loop runs

    def _on_queue_health(self, source: str, ok: bool, why: str) -> None:
        """Fed by each pool's dispatcher, the start-up ping and stats reads, from their threads;
        the loop logs a change of readiness once (not per retry)."""
        if self.queue_health.report(source, ok, why):
            self.inbox.put(QueueHealthChanged())

    @property
    def queue_ok(self) -> bool:
        return self.queue_health.ok

    @property
    def queue_problem(self) -> str:
        return self.queue_health.problem

    def _on_queue_health_changed(self) -> None:
        """One log line when the queue goes, one when it comes back (not one per retry)."""
        if not self.queue_ok and self._queue_down_since is None:
            self._queue_down_since = self.clock()
            log.error(
                "queue unavailable (not ready; retrying with backoff): %s", self.queue_problem
            )
            self.notifier.status(self.status_line("waiting for the queue"))
        elif self.queue_ok and self._queue_down_since is not None:
            down = self.clock() - self._queue_down_since
            self._queue_down_since = None
            log.info("queue available again after %.1fs", down)
            self.notifier.status(self.status_line())
            if self._bury_due:
                self._bury_unknown()

    def _bury_unknown(self) -> None:
        assert self.queue is not None
        self._bury_due = not self.queue_ok
        if self._bury_due:
            return  # known down: do it once the queue is back rather than fail now
        try:
            buried = self.queue.bury_unknown(self.registry.keys())
        except QueueUnavailable:
            self._bury_due = True  # the dispatchers will see it too and report it
            return
        except Exception as exc:
            log.error("could not dead-letter jobs of unconfigured tasks: %s", exc)
            return
        if buried:
            log.warning("%d waiting jobs name tasks that are not configured: dead-lettered", buried)

    def _start_http(self, settings: Settings) -> None:
        m = settings.metrics
        console = Console(
            ConsoleSource(
                status=self.status,
                queue=lambda: self.queue,
                outcomes=self.recent.snapshot,
                settings=lambda: self.loaded.settings.console,
                request_reload=lambda: self.inbox.put(ReloadRequest("console")),
            )
        )
        endpoints = Endpoints(
            self.metrics.registry,
            self.healthy,
            self.ready,
            self.status,
            extra_routes=console.get_routes(),
            post_routes=console.post_routes(),
        )
        endpoints.extra_routes["/api/config"] = lambda request: request.send_json(
            self.config_view()
        )
        self.http = HttpServer(
            m.host, m.port, endpoints, tls_cert=m.tls_cert_file, tls_key=m.tls_key_file
        )
        self.http.start()
        host, port = self.http.address
        log.info("metrics on %s://%s:%d/metrics", self.http.scheme, host, port)

    def _restart_http(self, new: Settings, old: Settings) -> None:
        if self.http is not None:
            self.http.stop()
        try:
            self._start_http(new)
        except OSError as exc:
            log.error(
                "cannot bind metrics on %s:%d (%s); keeping %s:%d",
                new.metrics.host,
                new.metrics.port,
                exc,
                old.metrics.host,
                old.metrics.port,
            )
            self._start_http(old)

    def _apply_watch(self, settings: Settings) -> None:
        want = settings.reload.watch
        if self.watcher is not None and (not want or self.watcher.path != self.loaded.path):
            self.watcher.stop()
            self.watcher = None
        if want and self.watcher is None:
            self.watcher = ConfigWatcher(self.loaded.path, lambda: self.inbox.put(ConfigChanged()))
            self.watcher.start()

    def _publish_pool_gauges(self) -> None:
        for name in self._published_pools - self.pools.keys():
            self.metrics.forget_pool(name)
        for name, pool in self.pools.items():
            config = pool.config
            self.metrics.declare_pool(name, config.workers, pool.generation, config.grace_seconds)
        self._published_pools = set(self.pools)

    def _max_grace(self) -> float:
        return max((p.config.grace_seconds for p in self.pools.values()), default=0.0)

    def _reap_strays(self) -> None:
        if self._stray:
            self._stray = [p for p in self._stray if p.stray_threads()]
        self.metrics.stray_threads.set(sum(p.stray_threads() for p in self._stray))

    # -- what the endpoint and the notifier read ---------------------------------

    def healthy(self) -> bool:
        return self.clock() - self._last_turn < STALL_SECONDS

    def ready(self) -> bool:
        return self.phase is Phase.RUNNING and self.queue_ok

    def status_line(self, state: str | None = None) -> str:
        pools = list(self.pools.values())
        in_flight = sum(len(p.snapshot()["running"]) for p in pools)
        workers = sum(p.config.workers for p in pools)
        generation = max(self.generations.values(), default=0)
        return (
            f"{state or self.phase.value}: generation {generation}, {workers} workers,"
            f" {in_flight} in flight"
        )

    def status(self) -> dict[str, Any]:
        """The /api/status document; runs on the HTTP thread, never on the loop."""
        record = self.reload_record
        queue, problem = None, self.queue_problem
        try:
            queue = self._queue_stats().as_dict()
        except Exception as exc:  # the answer must come even when the queue cannot
            problem = problem or f"{type(exc).__name__}: {exc}"
        return {
            "pid": os.getpid(),
            "state": self.phase.value,
            "ready": self.ready(),
            "queue_ok": self.queue_ok,
            "queue_problem": problem,
            "queue": queue,
            "config": str(self.loaded.path),
            "started_at": self.started_at,
            "pools": [p.snapshot() for p in list(self.pools.values())],
            "reload": {
                "seq": record.seq,
                "result": record.result,
                "message": record.message,
                "source": record.source,
                "at": record.at,
            },
        }

    def config_view(self) -> dict[str, Any]:
        """The running config and pool plans, for `reload --dry-run` (secrets hidden)."""
        from drainpool.queue import redact_url

        effective = self.loaded.settings.effective()
        effective["queue"]["url"] = redact_url(effective["queue"]["url"])
        plans = plan_pools(self.loaded.settings, self.registry)
        return {
            "config": str(self.loaded.path),
            "effective": effective,
            "plans": {name: plan_to_json(plan) for name, plan in plans.items()},
        }

    def _dump_state(self) -> None:
        lines = [f"state dump: {self.status_line()}"]
        for pool in list(self.pools.values()):
            for r in pool.snapshot()["running"]:
                lines.append(
                    f"  pool {pool.config.name} g{pool.generation}: job {r['job_id']}"
                    f" task {r['task']} attempt {r['attempt']}"
                    f" running {r['seconds']:.1f}s on {r['thread']}"
                )
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            lines.append(f"  thread {names.get(ident, ident)}:")
            lines.extend("    " + line.rstrip() for line in traceback.format_stack(frame))
        log.info("\n".join(lines))
