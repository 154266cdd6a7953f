"""drainpool's scenarios: rates at several queue depths, enqueue, start, stop, reload.

Every run goes through the documented command line (bench/drainpool_cli.py)
with 8 workers and a SQLite queue in bench/.work (the disk the raw SQLite
baseline uses). Jobs are queued first, then the daemon is started.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from completion import wait_finished
from context import Context
from drainpool_cli import (
    Drainpool,
    config_text,
    jobs_file,
    shared_queue_rate,
    steady_rate,
    wait_done,
    write_config,
)
from harness import BenchError, Child, Inbox, inbox, notify_is, tree_rss_mib
from results import Metric

SECTION = "drainpool"
WORKERS = 8
HELD = 8  # in-flight jobs the SIGTERM scenario interrupts


def _metric(key: str, label: str, unit: str, digits: int = 0) -> Metric:
    return Metric(f"drainpool.{key}", SECTION, label, unit, digits)


def fresh_dir(ctx: Context, name: str) -> Path:
    path = ctx.work / "drainpool" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _sigterm(child: Child, timeout: float) -> float:
    """Seconds from SIGTERM to the process being gone (pidfd); BenchError on timeout."""
    sent = child.signal(signal.SIGTERM)
    exited = child.wait_exit(timeout)
    if exited is None:
        raise BenchError(f"drainpool still running {timeout:.0f} s after SIGTERM")
    return exited - sent


def jobs_timeout(n: int) -> float:
    return 120.0 + n / 100  # generous: a stuck run fails, a slow one is still measured


def start(ctx: Context) -> None:
    """Start to READY=1, start to the first job done, idle RSS, idle stop; one job queued."""
    s = ctx.sizes
    for _ in range(s.reps):
        dp = Drainpool(ctx, fresh_dir(ctx, "start"), config_text({"job": "noop"}))
        dp.check()
        dp.enqueue_file(jobs_file(ctx, "job", 1))
        with inbox("notify") as notify, inbox("events") as events:
            child = dp.start(notify, events=events, expect=1, report_every=1)
            try:
                ready = dp.wait_ready(child, notify, since=0)
                first = wait_done(events, child, 1, timeout=60)
                time.sleep(s.settle_seconds)  # deliberately idle: RSS after settling
                rss, procs = tree_rss_mib(child.pid)
                stop = _sigterm(child, timeout=30)
            finally:
                code = dp.stop(child)
        ctx.results.add(
            _metric("start_to_ready", "start to READY=1", "s", 3), ready - child.started_at
        )
        ctx.results.add(
            _metric("start_to_first", "start to first job done (1 queued)", "s", 3),
            first - child.started_at,
        )
        ctx.results.add(
            _metric("idle_rss", f"idle RSS, {s.settle_seconds:g} s after one job", "MiB", 1), rss
        )
        ctx.results.add(_metric("idle_stop", "idle: SIGTERM to exit", "s", 3), stop)
        ctx.results.note("drainpool-start", f"RSS over {procs} process(es); exit code {code}")


def noop(ctx: Context) -> None:
    """No-op jobs end to end: daemon start to the last job done, N queued, 8 workers.

    Two ways of counting: in process (the headline rate) and one Redis INCR per
    job, exactly as the peers count (the "same task bodies" comparison).
    """
    s = ctx.sizes
    n = s.noop_jobs
    for _ in range(s.reps):
        for adapter in ("noop", "noop_incr"):
            dp = Drainpool(ctx, fresh_dir(ctx, "noop"), config_text({"job": adapter}))
            dp.check()
            redis = ctx.redis()  # started once, after the daemon proved usable
            enqueued = dp.enqueue_file(jobs_file(ctx, "job", n))
            ctx.results.add(
                _metric("enqueue.bulk_small", f"bulk enqueue, {n:,} jobs per command", "jobs/s"),
                n / enqueued,
            )
            redis.flush()
            with inbox("notify") as notify, inbox("events") as events:
                child = dp.start(notify, events=events, expect=n, redis_url=redis.url)
                try:
                    if adapter == "noop":
                        done = wait_done(events, child, n, timeout=jobs_timeout(n))
                        steady = steady_rate(events, n)
                    else:
                        finished = wait_finished(redis.client, child.alive, jobs_timeout(n))
                        if finished is None:
                            raise BenchError(f"drainpool did not finish {n} jobs:\n{child.tail()}")
                        done, steady = finished, None
                finally:
                    dp.stop(child)
            left = dp.stats()
            if left["ready"] + left["delayed"] + left["leased"]:
                raise BenchError(f"jobs left in the queue after the run: {left}")
            if adapter == "noop":
                ctx.results.add(
                    _metric("noop.e2e", f"no-op, start to last done ({n:,} jobs)", "jobs/s"),
                    n / (done - child.started_at),
                )
                if steady is not None:
                    ctx.results.add(
                        _metric("noop.steady", "no-op, sustained (progress reports)", "jobs/s"),
                        steady,
                    )
            else:
                ctx.results.add(
                    _metric(
                        "noop_incr.e2e",
                        f"no-op + Redis INCR (as the peers), start to last done ({n:,} jobs)",
                        "jobs/s",
                    ),
                    n / (done - child.started_at),
                )
    ctx.results.note(
        "drainpool-noop",
        "end = the adapter's clock at the N-th completion; "
        "the queue is then checked empty (`queue stats --json`)",
    )


def depth(ctx: Context) -> None:
    """No-op and 10 ms rates with 1 thousand .. 1 million jobs already queued.

    One queue per depth, filled once with `enqueue --file` (that fill is the
    large bulk-enqueue figure) and topped up between repetitions. A run stops
    after a window of completions; the rate is the sustained one between the
    adapters' progress reports, so start-up cost does not hide a depth effect.
    The smallest and largest queues are kept for the flat-scaling pairs after.
    """
    s = ctx.sizes
    small, large = min(s.depths), max(s.depths)
    kept: dict[int, Drainpool] = {}
    for d in s.depths:
        directory = fresh_dir(ctx, f"depth-{d}")
        kinds = (
            ("noop", "noop", min(d, s.depth_noop_window)),
            ("10ms", "sleep_10ms", min(d, s.sleep_jobs)),
        )
        for kind, adapter, window in kinds:
            dp = Drainpool(ctx, directory, config_text({"job": adapter}), name=f"{adapter}.toml")
            dp.check()
            if kind == "noop":
                took = dp.enqueue_file(jobs_file(ctx, "job", d))
                ctx.results.add(
                    _metric(
                        f"enqueue.bulk_{d}", f"bulk enqueue, {d:,} jobs in one command", "jobs/s"
                    ),
                    d / took,
                )
                if d in (small, large):
                    kept[d] = dp
            for _ in range(s.reps):
                dp.fill_to("job", d)
                events, child, done = run_window(ctx, dp, window)
                steady = steady_rate(events, window)
                if steady is None:
                    raise BenchError(f"too few progress reports for a rate at depth {d}")
                label = "no-op" if kind == "noop" else "10 ms"
                ctx.results.add(
                    _metric(f"depth.{kind}.{d}", f"{label}, {d:,} queued, sustained", "jobs/s"),
                    steady,
                )
                ctx.results.add(
                    _metric(
                        f"depth.{kind}.{d}.from_start",
                        f"{label}, {d:,} queued, start to job {window:,}",
                        "jobs/s",
                    ),
                    window / (done - child.started_at),
                )
        if d not in kept:
            shutil.rmtree(directory)  # a million-job queue is large; the next depth is fresh
    try:
        _flat_pairs(ctx, kept)
    finally:
        for dp in kept.values():
            shutil.rmtree(dp.dir)


def run_window(ctx: Context, dp: Drainpool, window: int) -> tuple[Inbox, Child, float]:
    """Start the daemon on its queue, wait for `window` completions, stop it (SIGTERM)."""
    with inbox("notify") as notify, inbox("events") as events:
        child = dp.start(notify, events=events, expect=window)
        try:
            done = wait_done(events, child, window, timeout=jobs_timeout(window))
        finally:
            dp.stop(child)
    return events, child, done


def window_rate(ctx: Context, dp: Drainpool, window: int) -> float:
    """The sustained no-op rate of one run of the first `window` jobs of the queue."""
    events, _, _ = run_window(ctx, dp, window)
    rate = steady_rate(events, window)
    if rate is None:
        raise BenchError(f"too few progress reports in the first {window:,} jobs")
    return rate


def _flat_pairs(ctx: Context, queues: dict[int, Drainpool]) -> None:
    """The flat-scaling rows: the first jobs of the smallest depth's queue at both ends.

    The smallest queue holds only that many jobs, so the window lasts a few tens
    of milliseconds, where one scheduler hiccup moves a rate by a third. So the
    two depths run in pairs, alternating which goes first (a machine that slows
    down during the run weighs on both alike), and flat_reps times, not reps.
    """
    s = ctx.sizes
    pair = (min(s.depths), max(s.depths))
    window = pair[0]
    for rep in range(s.flat_reps):
        for d in pair if rep % 2 == 0 else pair[::-1]:
            queues[d].fill_to("job", d)
            rate = window_rate(ctx, queues[d], window)
            ctx.results.add(
                _metric(
                    f"depth.noop_first.{d}",
                    f"no-op, {d:,} queued, sustained over the first {window:,} jobs"
                    " (interleaved pairs)",
                    "jobs/s",
                ),
                rate,
            )


def enqueue(ctx: Context) -> None:
    """Enqueue rates: one job per `enqueue` command, and `enqueue --file` in bulk."""
    s = ctx.sizes
    directory = fresh_dir(ctx, "enqueue")
    dp = Drainpool(ctx, directory, config_text({"job": "noop"}))
    dp.check()
    dp.stats()  # creates the queue file, so the first timed command does not
    for _ in range(s.enqueue_cli_calls):
        took = dp.enqueue_one("job", {})
        ctx.results.add(
            _metric(
                "enqueue.single_cli",
                "enqueue, one job per command (interpreter start included)",
                "jobs/s",
                1,
            ),
            1 / took,
        )
    n = s.enqueue_bulk_jobs
    for _ in range(s.reps):
        for stale in directory.glob("queue.db*"):
            stale.unlink()
        took = dp.enqueue_file(jobs_file(ctx, "job", n))
        ctx.results.add(
            _metric("enqueue.bulk", f"bulk enqueue, {n:,} jobs into an empty queue", "jobs/s"),
            n / took,
        )


def sigterm(ctx: Context) -> None:
    """SIGTERM with 8 cooperative tasks in flight: time to exit, jobs back in the queue."""
    s = ctx.sizes
    for _ in range(s.reps):
        dp = Drainpool(ctx, fresh_dir(ctx, "sigterm"), config_text({"hold": "hold"}))
        dp.check()
        dp.enqueue_file(jobs_file(ctx, "hold", HELD, {"seconds": s.hold_seconds}))
        with inbox("notify") as notify, inbox("events") as events:
            child = dp.start(notify, events=events)
            try:
                dp.wait_ready(child, notify, since=0)
                wait_started(events, child, HELD)
                took = _sigterm(child, timeout=s.hold_seconds + 60)
            finally:
                code = dp.stop(child)
        left = dp.stats()
        ctx.results.add(
            _metric("sigterm.exit", f"SIGTERM to exit, {HELD} tasks in flight", "s", 3), took
        )
        ctx.results.add(
            _metric("sigterm.back", f"of {HELD} in-flight jobs, back in the queue", "jobs"),
            left["ready"] + left["delayed"],
        )
        ctx.results.note(
            "drainpool-sigterm",
            f"exit code {code}; leased after exit "
            f"{left['leased']}; in-flight task: ctx.sleep({s.hold_seconds:g})",
        )


def wait_started(events: Inbox, child: Child, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(m.text.startswith("started ") for m in events.messages()) >= n:
            return
        if not child.alive():
            raise BenchError(f"drainpool exited before {n} tasks started:\n{child.tail()}")
        events.wait_for(lambda m: False, timeout=0.05)  # wakes on each new datagram
    raise BenchError(f"{n} tasks did not start within {timeout:.0f} s")


def reload(ctx: Context) -> None:
    """A config write (atomic rename) to the new generation running: RELOADING=1 then READY=1."""
    s = ctx.sizes
    directory = fresh_dir(ctx, "reload")

    def text(workers: int) -> str:
        return config_text({"job": "noop"}, workers=workers, watch=True, debounce_ms=50)

    dp = Drainpool(ctx, directory, text(WORKERS))
    dp.check()
    with inbox("notify") as notify:
        child = dp.start(notify)
        try:
            dp.wait_ready(child, notify, since=0)
            for i in range(s.reloads):
                # Spacing: an edit does not follow a start or a reload within milliseconds, and
                # a write inside the previous debounce window would be coalesced with it.
                time.sleep(0.2)
                mark = notify.mark()
                written = time.monotonic()
                write_config(dp.config, text(WORKERS - 1 if i % 2 == 0 else WORKERS))
                reloading = notify.wait_for(notify_is("RELOADING"), timeout=10, since=mark)
                if reloading is None:
                    raise BenchError(
                        f"no RELOADING=1 within 10 s of a config write:\n{child.tail()}"
                    )
                ready = notify.wait_for(
                    lambda m, after=reloading.received: (
                        notify_is("READY")(m) and m.received >= after
                    ),
                    timeout=10,
                    since=mark,
                )
                if ready is None:
                    raise BenchError(f"no READY=1 after RELOADING=1:\n{child.tail()}")
                ctx.results.add(
                    _metric(
                        "reload.ready",
                        "config write to new generation READY=1 (debounce 50 ms)",
                        "s",
                        3,
                    ),
                    ready.received - written,
                )
                ctx.results.add(
                    _metric("reload.seen", "config write to RELOADING=1", "s", 3),
                    reloading.received - written,
                )
        finally:
            dp.stop(child)


def redis_rows(ctx: Context) -> None:
    """The later Redis rows: 1, 2, 4 daemons sharing one Redis queue (a hook, opt-in).

    Completion is counted with Redis INCR, the only counter all the daemons share.
    """
    s = ctx.sizes
    n = s.noop_jobs
    redis = ctx.redis()
    for count in s.redis_daemons:
        for _ in range(s.reps):
            redis.flush()
            directory = fresh_dir(ctx, "redis")
            dp = Drainpool(ctx, directory, config_text({"job": "noop_incr"}, url=redis.url))
            dp.check()
            dp.enqueue_file(jobs_file(ctx, "job", n))
            rate = shared_queue_rate(ctx, dp, n, count, jobs_timeout(n))
            ctx.results.add(
                _metric(
                    f"redis.{count}",
                    f"no-op + INCR on Redis, {count} daemon(s) x "
                    f"{WORKERS} workers, start to last done",
                    "jobs/s",
                ),
                rate,
            )
