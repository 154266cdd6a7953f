"""Every Prometheus metric of the README's metrics table, on one injected registry.

docs/architecture.md says where a new metric goes; the names are fixed by the
README's table (dashboards and alert rules read them).

Nothing is registered at import time: `Metrics()` builds its own registry, so
tests and several daemons in one process never collide. Units are seconds,
counters end in `_total`, and the only labels are bounded sets (configured
task names, outcomes, reasons), never a job id.
"""

from __future__ import annotations

import bisect
import contextlib
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from drainpool import __version__
from drainpool.outcomes import RAN, Outcome
from drainpool.queue.base import QueueStats

# Jobs run from milliseconds to an hour; the client's defaults stop at 10 s.
TASK_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
DRAIN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
OUTCOMES = tuple(Outcome)
DRAIN_REASONS = ("shutdown", "reload")
# drainpool_tasks_<key>_total: "started", then one counter per outcome.
OUTCOME_HELP: dict[str, str] = {
    "started": "Tasks that started running.",
    Outcome.COMPLETED: "Tasks that returned; their jobs were acked.",
    Outcome.FAILED: "Tasks that raised; their jobs were retried with backoff or dead-lettered.",
    Outcome.INTERRUPTED: "Tasks that stopped on the shutdown event; their jobs were released.",
    Outcome.CANCELLED: "Jobs fetched for a pool that drained before they started; released.",
    Outcome.ABANDONED: (
        "Tasks still running when the drain grace ran out; their jobs were released."
    ),
    Outcome.ABORTED: "Jobs stopped by a cancel (running or reserved); their records are cancelled.",
    Outcome.TIMED_OUT: "Tasks stopped at their time limit; each a failed attempt, retried or dead.",
}
PHASES = ("starting", "running", "draining", "stopped")
QUEUE_STATES = ("ready", "delayed", "leased", "dead")


class QueueDepthCollector(Collector):
    """Reads queue counts at scrape time, so the gauge is never stale.

    The read runs on a helper thread and a scrape waits for it at most
    `timeout` seconds: a queue that hangs (a frozen Redis, a locked SQLite
    file) costs the scrape its queue samples, never the scrape itself. One
    read at a time: scrapes that come while it hangs share it, never pile up.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        self.source: Callable[[], QueueStats] | None = None
        self.timeout = timeout
        self._lock = threading.Lock()
        self._read: _StatsRead | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        source = self.source
        if source is None:
            return
        with self._lock:
            read = self._read
            if read is None or read.done.is_set():
                read = self._read = _StatsRead(source)
        if not read.done.wait(self.timeout):
            return  # still waiting on the queue: missing samples, and /readyz says why
        stats = read.stats
        if stats is None:  # an unreachable queue shows as missing samples and /readyz 503
            return
        jobs = GaugeMetricFamily(
            "drainpool_queue_jobs", "Jobs in the queue by state.", labels=["state"]
        )
        for state in QUEUE_STATES:
            jobs.add_metric([state], getattr(stats, state))
        yield jobs
        age = GaugeMetricFamily(
            "drainpool_queue_oldest_ready_age_seconds",
            "How long the oldest ready job has waited (0 when none is ready).",
        )
        age.add_metric([], stats.oldest_ready_age_seconds or 0.0)
        yield age


class _StatsRead:
    """One queue read on its own daemon thread (it may outlive the scrape that began it)."""

    def __init__(self, source: Callable[[], QueueStats]) -> None:
        self.done = threading.Event()
        self.stats: QueueStats | None = None
        threading.Thread(target=self._run, args=(source,), name="queue-stats", daemon=True).start()

    def _run(self, source: Callable[[], QueueStats]) -> None:
        try:
            self.stats = source()
        except Exception:
            self.stats = None
        finally:
            self.done.set()


RESTART_REASONS = ("config_file", "sighup", "console")


DURATION_OUTCOMES = RAN  # the histogram's outcome label: a cancelled job never ran
BUCKET_LABELS = (*(str(float(b)) for b in TASK_BUCKETS), "+Inf")  # the `le` of each bucket


class _TaskSeries:
    """One task's numbers in one pool: plain counts under one lock, read at scrape time.

    The per-job path takes this one lock twice per job; prometheus_client's
    children took a lock per counter, gauge and histogram part, six per job,
    each also a Python call, and under load every one competes for the GIL.
    """

    __slots__ = ("buckets", "counts", "in_flight", "lock", "sums")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.counts = dict.fromkeys(OUTCOME_HELP, 0)  # started and the five outcomes
        # Per outcome, one count per bucket (the last is +Inf), not yet cumulative.
        self.buckets = {o: [0] * (len(TASK_BUCKETS) + 1) for o in DURATION_OUTCOMES}
        self.sums = dict.fromkeys(DURATION_OUTCOMES, 0.0)

    def copy(self) -> tuple[int, dict[str, int], dict[Outcome, list[int]], dict[Outcome, float]]:
        with self.lock:
            buckets = {o: list(b) for o, b in self.buckets.items()}
            return self.in_flight, dict(self.counts), buckets, dict(self.sums)


class TaskSeriesCollector(Collector):
    """drainpool_tasks_* and drainpool_task_duration_seconds from every pool's task series.

    Series are never dropped: a counter of a removed pool or task keeps its
    last value, as prometheus_client's labelled children did.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _TaskSeries] = {}

    def series(self, pool: str, task: str) -> _TaskSeries:
        with self._lock:
            return self._series.setdefault((pool, task), _TaskSeries())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            items = sorted(self._series.items())
        in_flight = GaugeMetricFamily(
            "drainpool_tasks_in_flight", "Tasks running right now.", labels=["pool", "task"]
        )
        counters = {
            name: CounterMetricFamily(f"drainpool_tasks_{name}", text, labels=["pool", "task"])
            for name, text in OUTCOME_HELP.items()
        }
        durations = HistogramMetricFamily(
            "drainpool_task_duration_seconds",
            "Run time of tasks by outcome.",
            labels=["pool", "task", "outcome"],
        )
        for (pool, task), series in items:
            running, counts, buckets, sums = series.copy()
            in_flight.add_metric([pool, task], running)
            for name, family in counters.items():
                family.add_metric([pool, task], counts[name])
            for outcome in DURATION_OUTCOMES:
                cumulative, total = [], 0
                for bound, count in zip(BUCKET_LABELS, buckets[outcome], strict=True):
                    total += count
                    cumulative.append((bound, total))
                durations.add_metric([pool, task, outcome], cumulative, sums[outcome])
        yield in_flight
        yield from counters.values()
        yield durations


class PoolMetrics:
    """One pool's task series; its methods are the per-job path, so no label lookups."""

    def __init__(self, collector: TaskSeriesCollector, pool: str, tasks: Iterable[str]) -> None:
        self._series = {task: collector.series(pool, task) for task in tasks}

    def started(self, task: str) -> None:
        series = self._series[task]
        with series.lock:
            series.counts["started"] += 1
            series.in_flight += 1

    def finished(self, task: str, outcome: Outcome, seconds: float) -> None:
        """A task that ran ended: completed, failed, interrupted or abandoned."""
        series = self._series[task]
        bucket = bisect.bisect_left(TASK_BUCKETS, seconds)  # le: the first bound >= seconds
        with series.lock:
            series.in_flight -= 1
            series.counts[outcome] += 1
            series.buckets[outcome][bucket] += 1
            series.sums[outcome] += seconds

    def cancelled(self, task: str, outcome: Outcome = Outcome.CANCELLED) -> None:
        """A job handed over that never started (cancelled, or aborted): no duration."""
        series = self._series[task]
        with series.lock:
            series.counts[outcome] += 1


class Metrics:
    """The daemon's metrics; the supervisor and pools update them, HTTP exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # The three collectors prometheus_client puts on its default registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.task_series = TaskSeriesCollector()
        r.register(self.task_series)
        self.pool_workers = Gauge(
            "drainpool_pool_workers", "Worker slots of each pool.", ["pool"], registry=r
        )
        self.pool_generation = Gauge(
            "drainpool_pool_generation",
            "Generation number of each running pool.",
            ["pool"],
            registry=r,
        )
        self.pool_restarts = Counter(
            "drainpool_pool_restarts",
            "Pool restarts by a reload, by cause.",
            ["pool", "reason"],
            registry=r,
        )
        self.drain_duration = Histogram(
            "drainpool_drain_duration_seconds",
            "Time from the start of a drain to the end of each pool's drain.",
            ["pool", "reason"],
            buckets=DRAIN_BUCKETS,
            registry=r,
        )
        self.drain_grace = Gauge(
            "drainpool_drain_grace_seconds",
            "Configured drain grace of each pool (shutdown.grace_seconds or its own).",
            ["pool"],
            registry=r,
        )
        self.config_reloads = Counter(
            "drainpool_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.last_reload_ok = Gauge(
            "drainpool_config_last_reload_successful",
            "1 if the last reload attempt was applied or unchanged, 0 if rejected.",
            registry=r,
        )
        self.last_reload_success = Gauge(
            "drainpool_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            registry=r,
        )
        self.state = Enum(
            "drainpool_state", "Lifecycle state of the supervisor.", states=list(PHASES), registry=r
        )
        self.stray_threads = Gauge(
            "drainpool_stray_threads",
            "Abandoned task threads still running after their generation ended.",
            registry=r,
        )
        self._schedules: set[str] = set()  # schedules with series (declare_schedules)
        self.schedule_enqueued = Counter(
            "drainpool_schedule_enqueued",
            "Jobs this daemon enqueued for a schedule's ticks (each tick once across daemons).",
            ["schedule"],
            registry=r,
        )
        self.schedule_skipped = Counter(
            "drainpool_schedule_skipped_ticks",
            "Ticks this daemon found missed and skipped (catch_up, clock jumps).",
            ["schedule"],
            registry=r,
        )
        self.schedule_last_tick = Gauge(
            "drainpool_schedule_last_tick_timestamp_seconds",
            "Unix time of the schedule's last enqueued tick, as the queue stores it.",
            ["schedule"],
            registry=r,
        )
        self.schedule_period = Gauge(
            "drainpool_schedule_period_seconds",
            "Seconds between the schedule's last tick and its next one.",
            ["schedule"],
            registry=r,
        )
        Info("drainpool_build", "drainpool build.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.queue_depth = QueueDepthCollector()
        r.register(self.queue_depth)
        for result in ("applied", "rejected", "unchanged"):
            self.config_reloads.labels(result=result)
        self.last_reload_ok.set(1)
        self.last_reload_success.set(time.time())

    def declare_pool(self, pool: str, workers: int, generation: int, grace: float) -> None:
        """A pool's gauges, and its counters at 0 so increase() sees the first event."""
        self.pool_workers.labels(pool=pool).set(workers)
        self.pool_generation.labels(pool=pool).set(generation)
        self.drain_grace.labels(pool=pool).set(grace)
        for reason in RESTART_REASONS:
            self.pool_restarts.labels(pool=pool, reason=reason)
        for reason in DRAIN_REASONS:
            self.drain_duration.labels(pool=pool, reason=reason)

    def forget_pool(self, pool: str) -> None:
        """A removed pool: its gauges go (counters stay, as Prometheus expects)."""
        for gauge in (self.pool_workers, self.pool_generation, self.drain_grace):
            with contextlib.suppress(KeyError):
                gauge.remove(pool)

    def declare_schedules(self, names: Iterable[str]) -> None:
        """Series for the enabled schedules (counters at 0); a removed one's gauges go."""
        wanted = set(names)
        for name in self._schedules - wanted:
            for gauge in (self.schedule_last_tick, self.schedule_period):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
        self._schedules = wanted
        for name in wanted:
            self.schedule_enqueued.labels(schedule=name)
            self.schedule_skipped.labels(schedule=name)

    def for_pool(self, pool: str, tasks: Iterable[str]) -> PoolMetrics:
        return PoolMetrics(self.task_series, pool, tasks)

    def reload_result(self, result: str) -> None:
        self.config_reloads.labels(result=result).inc()
        ok = result != "rejected"
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_success.set(time.time())
