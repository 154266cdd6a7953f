"""The task series: plain counts read at scrape time must expose what prometheus_client would.

prometheus_client's own Histogram, fed the same run times on its own registry,
is the reference for bucket bounds (`le` includes its bound), cumulative
counts and sums.
"""

from __future__ import annotations

import random
import threading

from drainpool.metrics import TASK_BUCKETS, Metrics, PoolMetrics
from prometheus_client import CollectorRegistry, Histogram


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_durations_match_prometheus_clients_own_histogram() -> None:
    metrics = Metrics()
    pool = metrics.for_pool("default", ["job"])
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "ref",
        "reference",
        ["pool", "task", "outcome"],
        buckets=TASK_BUCKETS,
        registry=reference_registry,
    )
    rng = random.Random(8)
    # Every bound exactly (le includes it), just above each, and random times up to 2 h.
    times = [*TASK_BUCKETS, *(b * 1.0001 for b in TASK_BUCKETS), 0.0]
    times += [rng.uniform(0, 7200) for _ in range(500)]
    for outcome in ("completed", "failed"):
        for seconds in times:
            pool.started("job")
            pool.finished("job", outcome, seconds)
            reference.labels(pool="default", task="job", outcome=outcome).observe(seconds)
    for part in ("bucket", "count", "sum"):
        ours = samples(metrics.registry, f"drainpool_task_duration_seconds_{part}")
        theirs = samples(reference_registry, f"ref_{part}")
        ran = {k: v for k, v in ours.items() if dict(k)["outcome"] in ("completed", "failed")}
        assert ran == theirs, part


def test_counts_are_exact_under_eight_threads_and_kept_across_generations() -> None:
    metrics = Metrics()
    first = metrics.for_pool("default", ["job"])

    def work(pool_metrics: PoolMetrics) -> None:
        for _ in range(5000):
            pool_metrics.started("job")
            pool_metrics.finished("job", "completed", 0.001)
            pool_metrics.cancelled("job")

    threads = [threading.Thread(target=work, args=(first,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    second = metrics.for_pool("default", ["job"])  # the next generation of the same pool
    second.started("job")
    get = metrics.registry.get_sample_value
    labels = {"pool": "default", "task": "job"}
    assert get("drainpool_tasks_started_total", labels) == 40_001
    assert get("drainpool_tasks_completed_total", labels) == 40_000
    assert get("drainpool_tasks_cancelled_total", labels) == 40_000
    assert get("drainpool_tasks_in_flight", labels) == 1
    assert get("drainpool_task_duration_seconds_count", {**labels, "outcome": "completed"}) == (
        40_000
    )
