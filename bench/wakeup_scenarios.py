"""Issue 21's measurements: pickup latency, idle cost and the 1,000-job burst, side by side.

Every system runs one idle worker (8 threads) against the run's Redis on
loopback: drainpool on SQLite and on Redis, huey, celery and dramatiq. The
job bodies are the shared ones (bench/bodies.py via the adapters); the
`stamp` job pushes its start time on CLOCK_MONOTONIC (one clock for every
process of the machine) to a Redis list after taking it.

- pickup: a producer process enqueues single jobs 50-150 ms apart (the worker
  idles between them) and notes when each enqueue call returned; latency is
  the job's start minus that return. drainpool's producer uses the documented
  Python API (`Queue.from_url(url).enqueue`); the peers' runs in their venv.
- idle: after one job, CPU time of the worker's process tree and Redis
  commands (INFO commandstats, the bench's own INFO calls left out) over the
  window (60 s; 20 s with --quick).
- burst: jobs enqueued one call each, as fast as the producer goes, into the
  idle worker: first enqueue call to the last completion (one INCR per job).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from completion import STAMPS_KEY, wait_finished
from context import BENCH, Context
from drainpool_cli import Drainpool, config_text
from harness import BenchError, Child, Inbox, descendants, run_checked
from peer_scenarios import PEERS, PeerRunner
from results import Metric

SECTION = "wakeups"
SYSTEMS = ("drainpool-sqlite", "drainpool-redis", *PEERS)
TASKS = {"stamp": "stamp", "noop_incr": "noop_incr"}
PICKUP_JOBS = {False: 200, True: 50}  # by --quick
IDLE_SECONDS = {False: 60.0, True: 20.0}
BURST_JOBS = 1_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Worker:
    """One idle worker of one system, with its producer's two commands."""

    system: str
    child: Child
    spaced: Callable[[int], dict[int, float]]  # n -> {seq: return time}
    burst: Callable[[int], float]  # n -> monotonic start of the first enqueue call
    redis_used: bool  # whether the system's own traffic goes through Redis


def _metric(system: str, key: str, label: str, unit: str, digits: int = 0) -> Metric:
    return Metric(f"wakeup.{system}.{key}", SECTION, f"{system}: {label}", unit, digits)


@contextmanager
def worker(ctx: Context, system: str, expect: int = 0) -> Iterator[Worker]:
    """Start an idle worker, run one stamp job through it (warm), yield it, kill it."""
    redis = ctx.redis()
    redis.flush()
    if system.startswith("drainpool"):
        with _drainpool(ctx, system, expect) as started:
            _warm(ctx, started)
            yield started
        return
    runner = PeerRunner(ctx, PEERS[system])
    child = runner.start(expect=expect)
    try:

        def spaced(n: int) -> dict[int, float]:
            out = runner.ctl("spaced", system, str(n))["returned"]
            return {int(k): float(v) for k, v in out.items()}  # type: ignore[union-attr]

        def burst(n: int) -> float:
            return float(runner.ctl("enqueue", system, "noop", str(n))["started"])

        started = Worker(system, child, spaced, burst, redis_used=True)
        _warm(ctx, started)
        yield started
    finally:
        runner.discard(child)


@contextmanager
def _drainpool(ctx: Context, system: str, expect: int) -> Iterator[Worker]:
    redis = ctx.redis()
    url = redis.url if system == "drainpool-redis" else "sqlite:///queue.db"
    directory = ctx.work / "wakeups" / system
    if directory.exists():
        for leftover in directory.glob("queue.db*"):
            if leftover.is_file():
                leftover.unlink()
    dp = Drainpool(ctx, directory, config_text(TASKS, url=url))
    dp.check()
    queue_url = url if url.startswith("redis") else f"sqlite:///{directory / 'queue.db'}"
    producer = [sys.executable, str(BENCH / "wakeup_producer.py")]

    def produce(*args: str) -> dict[str, Any]:
        return json.loads(run_checked([*producer, *args], env=dp.env(), cwd=directory))

    def spaced(n: int) -> dict[int, float]:
        returned = produce("spaced", queue_url, str(n))["returned"]
        return {int(k): float(v) for k, v in returned.items()}

    def burst(n: int) -> float:
        return float(produce("burst", queue_url, "noop_incr", str(n))["started"])

    notify = Inbox("wakeup-notify")
    child = dp.start(notify, expect=expect, redis_url=redis.url)
    try:
        dp.wait_ready(child, notify, 0)
        yield Worker(system, child, spaced, burst, redis_used=system == "drainpool-redis")
    finally:
        ctx.children.kill(child)
        notify.close()


def _warm(ctx: Context, started: Worker) -> None:
    """One stamp job through the fresh worker, then its stamp list emptied."""
    client = ctx.redis().client
    started.spaced(1)
    if client.blpop([STAMPS_KEY], timeout=60) is None:
        raise BenchError(f"{started.system}: the first job did not start:\n{started.child.tail()}")


def pickup(ctx: Context) -> None:
    """p50/p90/p99 from enqueue return to task start over spaced single jobs."""
    n = PICKUP_JOBS[ctx.quick]
    client = ctx.redis().client
    for system in SYSTEMS:
        with worker(ctx, system) as started:
            returned = started.spaced(n)
            stamps = _stamps(client, n, started)
        latencies = sorted((stamps[seq] - returned[seq]) * 1000 for seq in returned)
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        for name, value in (("p50", cuts[49]), ("p90", cuts[89]), ("p99", cuts[98])):
            label = f"pickup {name}, enqueue return to task start ({n} spaced jobs)"
            ctx.results.add(_metric(system, f"pickup.{name}", label, "ms", 2), value)


def _stamps(client: Any, n: int, started: Worker) -> dict[int, float]:
    deadline = time.monotonic() + 60
    while client.llen(STAMPS_KEY) < n:
        if time.monotonic() > deadline or not started.child.alive():
            raise BenchError(f"{started.system}: {n} stamp jobs did not all start")
        time.sleep(0.05)  # waiting for the last jobs, not a measurement
    raw = client.lrange(STAMPS_KEY, 0, -1)
    pairs = (line.split() for line in (r.decode() for r in raw))
    return {int(seq): float(at) for seq, at in pairs}


def idle(ctx: Context) -> None:
    """CPU and Redis commands of an idle worker over the window."""
    seconds = IDLE_SECONDS[ctx.quick]
    client = ctx.redis().client
    for system in SYSTEMS:
        with worker(ctx, system) as started:
            time.sleep(2.0)  # let the first job's after-effects pass: idle from here
            cpu_before, calls_before = _tree_cpu(started.child.pid), _calls(client)
            time.sleep(seconds)  # deliberately idle: this is the measurement window
            cpu, calls = _tree_cpu(started.child.pid) - cpu_before, _calls(client) - calls_before
        window = f"idle {seconds:g} s"
        ctx.results.add(_metric(system, "idle.cpu", f"{window}: CPU time", "ms", 0), cpu * 1000)
        ctx.results.add(
            _metric(system, "idle.cpu_share", f"{window}: share of a core", "%", 3),
            100 * cpu / seconds,
        )
        if started.redis_used:
            ctx.results.add(
                _metric(system, "idle.redis", f"{window}: Redis commands", "commands"), calls
            )


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants (/proc/PID/stat)."""
    total = 0
    for member in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone between the listing and the read
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


def _calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def burst(ctx: Context) -> None:
    """1,000 jobs enqueued one call each into an idle worker: first call to last done."""
    client = ctx.redis().client
    for system in SYSTEMS:
        with worker(ctx, system, expect=BURST_JOBS) as started:
            first = started.burst(BURST_JOBS)
            done = wait_finished(client, started.child.alive, 120)
            if done is None:
                raise BenchError(f"{system}: {BURST_JOBS} burst jobs did not finish")
        label = f"{BURST_JOBS:,} jobs enqueued one by one, first call to last done"
        ctx.results.add(_metric(system, "burst", label, "s", 3), done - first)
