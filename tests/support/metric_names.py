"""The metrics drainpool exports, in one place.

The dashboard and alert tests check that every name they reference is listed
here, and the live end-to-end test checks that the running daemon exports each
of them; so a rename shows up as a failing test on both sides instead of as an
empty Grafana panel or an alert that can never fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Metric:
    """One exported metric family as the README's metrics table fixes it.

    `labels` maps each label name to its fixed set of values, or to None where
    the values come from the config (task names).
    """

    name: str
    kind: str  # counter, gauge, histogram, enum, info
    labels: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    needs: str = ""  # a config section the series exist for only when it is set ("schedules")

    def sample_names(self) -> tuple[str, ...]:
        """The sample names a Prometheus scrape stores for this family."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.kind == "info":
            return (f"{self.name}_info",)
        return (self.name,)


# `pool` and `task` take their values from the config; a lone [pool] table is pool="default".
POOL: dict[str, tuple[str, ...] | None] = {"pool": None}
POOL_TASK: dict[str, tuple[str, ...] | None] = {"pool": None, "task": None}
DURATION_OUTCOMES = ("completed", "failed", "interrupted", "abandoned", "aborted", "timed_out")
RESTART_REASONS = ("config_file", "sighup", "console")
DRAIN_REASONS = ("shutdown", "reload")
SCHEDULE: dict[str, tuple[str, ...] | None] = {"schedule": None}  # names from the config

DAEMON_METRICS: tuple[Metric, ...] = (
    Metric("drainpool_tasks_in_flight", "gauge", POOL_TASK),
    Metric("drainpool_tasks_started", "counter", POOL_TASK),
    Metric("drainpool_tasks_completed", "counter", POOL_TASK),
    Metric("drainpool_tasks_failed", "counter", POOL_TASK),
    Metric("drainpool_tasks_interrupted", "counter", POOL_TASK),
    Metric("drainpool_tasks_cancelled", "counter", POOL_TASK),
    Metric("drainpool_tasks_abandoned", "counter", POOL_TASK),
    Metric("drainpool_tasks_aborted", "counter", POOL_TASK),
    Metric("drainpool_tasks_timed_out", "counter", POOL_TASK),
    Metric(
        "drainpool_task_duration_seconds",
        "histogram",
        {**POOL_TASK, "outcome": DURATION_OUTCOMES},
    ),
    Metric("drainpool_pool_workers", "gauge", POOL),
    Metric("drainpool_pool_generation", "gauge", POOL),
    Metric("drainpool_pool_restarts", "counter", {**POOL, "reason": RESTART_REASONS}),
    Metric("drainpool_drain_duration_seconds", "histogram", {**POOL, "reason": DRAIN_REASONS}),
    Metric("drainpool_drain_grace_seconds", "gauge", POOL),
    Metric("drainpool_stray_threads", "gauge"),
    Metric("drainpool_config_reloads", "counter", {"result": ("applied", "rejected", "unchanged")}),
    Metric("drainpool_config_last_reload_successful", "gauge"),
    Metric("drainpool_config_last_reload_success_timestamp_seconds", "gauge"),
    Metric("drainpool_queue_jobs", "gauge", {"state": ("ready", "delayed", "leased", "dead")}),
    Metric("drainpool_queue_oldest_ready_age_seconds", "gauge"),
    Metric(
        "drainpool_state",
        "enum",
        {"drainpool_state": ("starting", "running", "draining", "stopped")},
    ),
    Metric("drainpool_build", "info", {"version": None, "python": None}),
    # One series per configured schedule (issue 20): exported once [schedules.NAME] exists.
    Metric("drainpool_schedule_enqueued", "counter", SCHEDULE, needs="schedules"),
    Metric("drainpool_schedule_skipped_ticks", "counter", SCHEDULE, needs="schedules"),
    Metric("drainpool_schedule_last_tick_timestamp_seconds", "gauge", SCHEDULE, needs="schedules"),
    Metric("drainpool_schedule_period_seconds", "gauge", SCHEDULE, needs="schedules"),
    # prometheus_client's ProcessCollector; only the ones the dashboard uses.
    Metric("process_cpu_seconds", "counter"),
    Metric("process_resident_memory_bytes", "gauge"),
    Metric("process_start_time_seconds", "gauge"),
    Metric("process_open_fds", "gauge"),
    Metric("process_max_fds", "gauge"),
)

# Series that Prometheus writes itself for every target; the daemon never exports them.
SCRAPE_SERIES: frozenset[str] = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
)


def is_per_pool(metric: Metric | None) -> bool:
    """Whether a family has one series per pool, so a dashboard query must filter by $pool."""
    return metric is not None and "pool" in metric.labels


def metric_of_sample(sample_name: str) -> Metric | None:
    """The family a stored sample name belongs to, or None if it is not the daemon's."""
    for metric in DAEMON_METRICS:
        if sample_name in metric.sample_names():
            return metric
    return None


def daemon_sample_names() -> frozenset[str]:
    """Every sample name a scrape of the daemon is expected to store."""
    return frozenset(name for metric in DAEMON_METRICS for name in metric.sample_names())


def missing_from_exposition(text: str) -> list[str]:
    """Sample names of DAEMON_METRICS that a /metrics body does not contain.

    A labelled family whose children were never created exposes no sample at
    all, so this also catches series the daemon forgot to initialise.
    """
    present = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    # A family that needs a config section is checked only when the daemon exports it at all.
    optional = {
        name
        for metric in DAEMON_METRICS
        if metric.needs and not present & set(metric.sample_names())
        for name in metric.sample_names()
    }
    return sorted(daemon_sample_names() - present - optional)
