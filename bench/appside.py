"""The application's side, measured (issue 24): no-op throughput typed and traced vs plain.

One run, one process, the variants interleaved round by round, each round in
a rotated order (plain-typed-traced, typed-traced-plain, ...), so that the
machine's drift hits them alike: a real Pool (dispatcher, 8 workers) on a real
SQLite file, N no-op jobs queued, timed from the pool's start to the last
completion. Variants:

- plain: an untyped no-op, no hooks, tracing off (today's path);
- typed: the same no-op with a small pydantic model as its payload type;
- traced: the plain no-op with OpenTelemetry on (a span per attempt, batch
  processor, an exporter that drops every span).

After the warm-up the start-up heap is frozen, as the daemon does once started
(drainpool.cli); --no-freeze leaves it to the collector (the figures before
session 30), which then walks it in every full collection.

    PYTHONPATH=daemon:bench python bench/appside.py [--jobs N] [--reps R] [--no-freeze]

Prints the medians and the ratios to plain (targets: typed >= 0.9x, traced >= 0.8x),
the process's CPU time per job (all its threads: less moved by other processes
than the wall clock), the spans dropped for a full queue (none, or the traced
figure flatters), and what a typed payload and a span add per job, timed alone
on one thread.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drainpool.context import TaskContext
from drainpool.metrics import Metrics
from drainpool.outcomes import Outcome
from drainpool.pool import Pool, PoolConfig
from drainpool.queue.sqlite import SqliteQueue
from drainpool.tasks import TaskSpec, _resolve
from pydantic import BaseModel

WORKERS = 8
DROPPED: dict[str, int] = {"plain": 0, "typed": 0, "traced": 0}


class Small(BaseModel):
    name: str
    count: int


def typed_noop(ctx: TaskContext, payload: Small) -> None:
    """A no-op whose payload is validated into `Small` first."""


def noop(ctx: TaskContext, payload: Any) -> None:
    """A no-op as today's tasks are: no annotations the daemon acts on."""


class DropExporter:
    """A SpanExporter that keeps nothing: the cost measured is drainpool's and the SDK's."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to close."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def drop_exporter() -> DropExporter:
    return DropExporter()


def one_run(variant: str, jobs: int, work: Path) -> tuple[float, float]:
    """(jobs per second, CPU µs per job) for one variant over `jobs` no-ops on a fresh file.

    A traced run's spans dropped for a full queue (OTEL_BSP_MAX_QUEUE_SIZE) are added
    to DROPPED: a span dropped costs less than one exported, so the figure says so.
    """
    from drainpool.tracing import dropped_spans

    dropped = dropped_spans()
    path = work / f"{variant}-{time.monotonic_ns()}.db"
    queue = SqliteQueue(path, durable_commits=False)
    task = "typed" if variant == "typed" else "plain"
    payload = {"name": "bench", "count": 1}
    queue.enqueue_many((task, payload) for _ in range(jobs))
    tasks: dict[str, TaskSpec] = {
        "plain": _resolve("plain", "appside:noop"),
        "typed": _resolve("typed", "appside:typed_noop"),
    }
    tracing = "appside:drop_exporter" if variant == "traced" else None
    config = PoolConfig("default", WORKERS, 5.0, 60.0, 0.05, tracing=tracing)
    finished = threading.Event()
    pool = Pool(config, 1, tasks, queue, Metrics(), on_drained=lambda p: finished.set())
    started = time.perf_counter()
    cpu = time.process_time()
    pool.start()
    while pool.counts[Outcome.COMPLETED] < jobs:
        finished.wait(0.002)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    pool.begin_drain()
    finished.wait(30)
    pool.join()
    queue.close()
    DROPPED[variant] += dropped_spans() - dropped
    return jobs / elapsed, cpu / jobs * 1e6


def per_call_micros(variant: str, calls: int = 20_000) -> float:
    """What a job adds, alone on one thread: a span (traced) or a validation.

    A span's part is the worker's and the export's: the batches are exported on
    this thread every 500 spans (force_flush), so none waits for the export
    thread, none is dropped for a full queue, and the figure holds both parts.
    """
    from drainpool import tracing
    from drainpool.queue.base import Job

    job = Job("1", "plain", {"name": "bench", "count": 1}, 1, "token", 0.0)
    typed = _resolve("typed", "appside:typed_noop").handler
    tracer = tracing.tracer("appside:drop_exporter") if variant == "traced" else None
    flush = None
    if tracer is not None:
        from opentelemetry import trace

        flush = trace.get_tracer_provider().force_flush  # type: ignore[attr-defined]
        flush()
    started = time.perf_counter()
    for number in range(calls):
        if tracer is not None:
            tracing.Attempt(tracer, job, "default", 1).end("completed", 0.0, "")
            if number % 500 == 499:
                flush()
        else:
            typed(None, job.payload)
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="leave the start-up objects to the cycle collector (the figures before session 30)",
    )
    args = parser.parse_args(argv)
    variants = ("plain", "typed", "traced")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="drainpool-appside-") as tmp:
        for variant in variants:
            one_run(variant, 1000, Path(tmp))  # warm-up: imports, the SDK, the first file
        DROPPED["traced"] = 0
        if not args.no_freeze:
            # As the daemon does once started (drainpool.cli, with OpenTelemetry imported
            # first when on): start-up's objects are frozen, and a full collection walks
            # only what the runs made. Unfrozen, each walked the bench's whole heap.
            gc.collect()
            gc.freeze()
        for rep in range(args.reps):
            shift = rep % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                rate, cpu = one_run(variant, args.jobs, Path(tmp))
                rates[variant].append(rate)
                cpus[variant].append(cpu)
    base = statistics.median(rates["plain"])
    base_cpu = statistics.median(cpus["plain"])
    frozen = "unfrozen heap" if args.no_freeze else "start-up heap frozen"
    print(f"no-op jobs/s, {args.jobs} jobs x {args.reps} reps, {WORKERS} workers, SQLite, {frozen}")
    for variant in variants:
        median = statistics.median(rates[variant])
        spread = f"{min(rates[variant]):,.0f}-{max(rates[variant]):,.0f}"
        print(f"{variant:7} {median:10,.0f}/s  ({spread})  {median / base:.2f}x plain")
    for variant in variants:
        cpu = statistics.median(cpus[variant])
        print(f"{variant:7} {cpu:6.1f} us CPU per job  (plain's / this: {base_cpu / cpu:.2f})")
    print(f"plain: {1e6 / base:.1f} us of the pool's time per job")
    print(f"traced: {DROPPED['traced']} of {args.jobs * args.reps} spans dropped (queue full)")
    for variant in ("typed", "traced"):
        print(f"{variant}: +{per_call_micros(variant):.1f} us per job (one thread, alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
