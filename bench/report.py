"""What RESULTS.md says besides the samples: context, targets, ratios, method."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from context import BENCH, REPO, Context, Sizes
from harness import REDIS_SERVER
from results import (
    Derived,
    Results,
    median_of,
    paired_ratio,
    percentile_of,
    ratio,
    worst_of,
)

IDEAL_10MS = 8 / 0.010  # 8 workers, each finishing one 10 ms job at a time


def start_rows(argv: list[str], wall: float) -> list[tuple[str, str]]:
    """Rows known before the run: when, what command, how busy the machine already was."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))
    command = shlex.join(["python", "bench/run.py", *argv])
    return [
        ("date", when),
        ("command", f"`{command}`"),
        ("load average at start (1, 5, 15 min)", _load()),
    ]


def end_rows(ctx: Context, elapsed: float) -> list[tuple[str, str]]:
    """Rows known after the run: duration, load, versions, machine."""
    rows = [
        ("mode", "quick (--quick): small sizes, for checking the bench" if ctx.quick else "full"),
        ("repetitions", f"{ctx.sizes.reps} (daemon, baselines), {ctx.sizes.peer_reps} (peers)"),
        ("duration", f"{elapsed:.0f} s"),
        ("load average at end", _load()),
        ("drainpool", _drainpool_version()),
        (
            "Python",
            f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        ),
        ("SQLite", sqlite3.sqlite_version),
        ("redis-server", _redis_version()),
    ]
    peers = _peer_versions(ctx)
    if peers:
        rows.append(("peers (bench/.venv-peers)", peers))
    rows += _machine_rows(ctx.work)
    return rows


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _drainpool_version() -> str:
    try:
        version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = "?"
    commit = _git("rev-parse", "--short", "HEAD") or "?"
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", "daemon") else ""
    return f"{version}, commit {commit}{dirty}"


def _redis_version() -> str:
    if not Path(REDIS_SERVER).exists():
        return "not installed"
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _peer_versions(ctx: Context) -> str:
    python = ctx.peers_python_if_ready()
    if python is None:
        return ""
    done = subprocess.run(
        [str(python), str(BENCH / "peers" / "peerctl.py"), "versions"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(BENCH / "peers")])},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return "unknown (peerctl versions failed)"
    return ", ".join(f"{k} {v}" for k, v in json.loads(done.stdout).items())


def _machine_rows(work: Path) -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    usable = len(os.sched_getaffinity(0))
    return [
        ("CPU", f"{cpu}; {os.cpu_count()} cores, {usable} usable by the bench"),
        ("memory", f"{mem_kib / 1024 / 1024:.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("disk of the queues (bench/.work)", _filesystem(work)),
    ]


def _filesystem(path: Path) -> str:
    best = ("?", "?", "")
    real = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(
            best[2]
        ):
            best = (device, fstype, mount)
    free = shutil.disk_usage(path).free / 2**30
    return f"{best[0]} ({best[1]}) mounted on {best[2]}, {free:.0f} GiB free"


def _all_equal(key: str, want: float) -> Derived:
    """Every sample (not just the median) equals `want`: "all 8 jobs back" is all or nothing."""

    def compute(results: Results) -> float | None:
        values = results.samples.get(key)
        return min(values) if values else None

    return Derived(
        f"jobs back in the queue after SIGTERM, fewest in any repetition (of {want:g})",
        compute,
        unit="jobs",
        digits=0,
        target=(f"all {want:g}, every repetition", lambda v: v == want),
    )


def _share_of_ideal(
    source: str | Callable[[Results], float | None],
) -> Callable[[Results], float | None]:
    """A 10 ms rate as a percentage of 8 workers' ideal 800 jobs/s."""
    get = median_of(source) if isinstance(source, str) else source

    def compute(results: Results) -> float | None:
        value = get(results)
        return None if value is None else value / IDEAL_10MS * 100

    return compute


def _at_most(label: str, key: str, limit: float, unit: str = "s", digits: int = 3) -> Derived:
    """A target on a median that must not exceed `limit`."""
    return Derived(
        label,
        median_of(key),
        unit=unit,
        digits=digits,
        target=(f"<= {limit:g} {unit}", lambda v: v <= limit),
    )


def derived_rows(sizes: Sizes) -> list[Derived]:
    """The issue's targets first, then ratios that place the numbers."""
    small, large = min(sizes.depths), max(sizes.depths)
    depth_10ms = [f"drainpool.depth.10ms.{d}" for d in sizes.depths]
    rows = [
        Derived(
            "no-op jobs/s, daemon start to last job done, 8 workers, SQLite",
            median_of("drainpool.noop.e2e"),
            unit="jobs/s",
            digits=0,
            target=(">= 10,000", lambda v: v >= 10_000),
        ),
        Derived(
            "no-op, drainpool / dramatiq, same bodies (both count by Redis INCR)",
            ratio("drainpool.noop_incr.e2e", "dramatiq.noop"),
            target=(">= 2.5x", lambda v: v >= 2.5),
        ),
        Derived(
            f"10 ms jobs, sustained, worst depth, share of ideal {IDEAL_10MS:.0f}/s",
            _share_of_ideal(worst_of(depth_10ms, min)),
            unit="%",
            digits=1,
            target=(">= 97 %", lambda v: v >= 97),
        ),
        _at_most("SIGTERM to exit, 8 cooperative tasks in flight", "drainpool.sigterm.exit", 0.15),
        _all_equal("drainpool.sigterm.back", 8),
        _at_most(
            "config write to new generation READY=1, debounce_ms = 50",
            "drainpool.reload.ready",
            0.25,
        ),
        _at_most("start to READY=1", "drainpool.start_to_ready", 0.3),
        _at_most("idle RSS", "drainpool.idle_rss", 45, unit="MiB", digits=1),
        Derived(
            f"flat scaling: no-op sustained over the first {small:,} jobs,"
            f" {large:,} queued / {small:,} queued, {sizes.flat_reps} interleaved pairs",
            ratio(f"drainpool.depth.noop_first.{large}", f"drainpool.depth.noop_first.{small}"),
            target=(
                ">= 0.90x" + ("" if large >= 1_000_000 else " (at 1M; quick mode is smaller)"),
                lambda v: v >= 0.9,
            ),
        ),
        *_record_targets(sizes),
        Derived(
            f"flat scaling, the median of the {sizes.flat_reps} per-pair ratios"
            " (each pair side by side in time)",
            paired_ratio(
                f"drainpool.depth.noop_first.{large}", f"drainpool.depth.noop_first.{small}"
            ),
        ),
        Derived(
            f"SQLite queue alone, CPU time of a round, {large:,} queued / {small:,} queued",
            ratio(f"drainpool.queue_round.{large}", f"drainpool.queue_round.{small}"),
        ),
        Derived(
            "no-op, drainpool (start to last) / ThreadPoolExecutor(8)",
            ratio("drainpool.noop.e2e", "tpe.noop"),
        ),
        Derived(
            "no-op, drainpool sustained / raw SQLite insert+delete (NORMAL)",
            ratio("drainpool.noop.steady", "sqlite.normal"),
        ),
        Derived(
            "10 ms, ThreadPoolExecutor(8), share of ideal",
            _share_of_ideal("tpe.10ms"),
            unit="%",
            digits=1,
        ),
    ]
    rows += _record_figures(sizes)
    for peer in ("huey", "celery"):  # dramatiq's ratio is a target above
        rows.append(
            Derived(
                f"no-op, drainpool / {peer}, same bodies (Redis INCR)",
                ratio("drainpool.noop_incr.e2e", f"{peer}.noop"),
            )
        )
    for peer in ("dramatiq", "huey", "celery"):
        rows.append(
            Derived(
                f"10 ms, {peer}, share of ideal",
                _share_of_ideal(f"{peer}.10ms"),
                unit="%",
                digits=1,
            )
        )
    return rows


def _record_targets(sizes: Sizes) -> list[Derived]:
    """Issue 18's targets: retention's cost per job, and records that do not slow a claim."""
    rows = [
        Derived(
            f"no-op sustained, retention_seconds 86400 / 0, {backend}, same run, interleaved",
            ratio(f"records.noop.{backend}.86400", f"records.noop.{backend}.0"),
            target=(">= 0.85x", lambda v: v >= 0.85),
        )
        for backend in ("sqlite", "redis")
    ]
    n = sizes.retained_records
    rows.append(
        Derived(
            f"flat scaling with records: no-op over 1,000 queued, {n:,} completed records"
            " retained / none, SQLite, interleaved pairs",
            ratio(f"records.depth.noop.{n}", "records.depth.noop.0"),
            target=(
                ">= 0.90x" + ("" if n >= 1_000_000 else " (at 1M; quick mode is smaller)"),
                lambda v: v >= 0.9,
            ),
        )
    )
    return rows


def _record_figures(sizes: Sizes) -> list[Derived]:
    """Issue 18's figures without a target: pair-by-pair ratios, wait() latency, disk."""
    n = sizes.retained_records
    rows = [
        Derived(
            f"retention 86400 / 0, {backend}, the median of the per-pair ratios",
            paired_ratio(f"records.noop.{backend}.86400", f"records.noop.{backend}.0"),
        )
        for backend in ("sqlite", "redis")
    ]
    rows.append(
        Derived(
            f"flat scaling with {n:,} records, the median of the per-pair ratios",
            paired_ratio(f"records.depth.noop.{n}", "records.depth.noop.0"),
        )
    )
    for backend in ("sqlite", "redis"):
        for name, share in (("p50", 0.5), ("p99", 0.99)):
            rows.append(
                Derived(
                    f"wait() return after the task finished, {backend}, {name}",
                    percentile_of(f"records.wait.{backend}", share),
                    unit="ms",
                    digits=1,
                )
            )
    rows.append(
        Derived(
            "SQLite bytes per retained no-op record",
            median_of("records.size.per_record"),
            unit="bytes",
            digits=1,
        )
    )
    return rows


def method_lines(sizes: Sizes) -> list[str]:
    return [
        "- Every system runs the same bodies (bench/bodies.py): a no-op, a 10 ms `time.sleep`, "
        "and for SIGTERM a long wait (drainpool: cooperative `ctx.sleep`; the peers: "
        "`time.sleep`, having no such hook).",
        "- Jobs are queued first, then the daemon or worker is started. A rate 'start to last "
        "done' runs from just before the process is spawned to the N-th completion.",
        "- drainpool's modules are byte-compiled before the run (compileall), as a wheel or "
        "the container image has them; the peers come byte-compiled from pip.",
        "- Completions: the peers and the drainpool '+ Redis INCR' rows count with one Redis "
        "INCR per job, and the N-th pushes its CLOCK_MONOTONIC time to Redis. drainpool's own "
        "rows count in process and report by datagram every 100 jobs; 'sustained' is the rate "
        "between the first and the last report (start-up and fetch warm-up excluded).",
        f"- Depth rows: {', '.join(f'{d:,}' for d in sizes.depths)} jobs queued with "
        "`enqueue --file` before the start; a run stops after a window of "
        f"{sizes.depth_noop_window:,} no-op or {sizes.sleep_jobs:,} 10 ms completions "
        "(SIGTERM), and the queue is topped up between repetitions. Flat scaling compares "
        f"the first {min(sizes.depths):,} completions (all the smallest queue holds) at the "
        f"smallest and the largest depth, in {sizes.flat_reps} pairs of runs that alternate "
        "which depth goes first: that window lasts only tens of milliseconds, so it takes "
        "more runs than the others, and pairs, to be steady.",
        "- Readiness and reloads: NOTIFY_SOCKET points at the bench's own datagram socket; "
        "times are READY=1 / RELOADING=1 arrivals. A reload is an atomic-rename write that "
        "toggles pool.workers between 8 and 7.",
        "- SIGTERM: 8 jobs in flight (each reported its start), SIGTERM, exit time from a pidfd. "
        "'back in the queue' is drainpool's `queue stats` ready+delayed, or for a peer the "
        "messages a later worker would still get (bench/peers/*_app.py `pending`).",
        "- Idle RSS: one job queued, started, the job done, then idle for "
        f"{sizes.settle_seconds:g} s; VmRSS summed over the process and its descendants.",
        "- Job records: records-retention runs the no-op queue of drainpool-noop "
        f"({sizes.noop_jobs:,} jobs) on a fresh queue per run, retention_seconds 0 and 86400 "
        "alternating which goes first, on SQLite and on Redis (FLUSHALL between runs). "
        f"records-depth writes {sizes.retained_records:,} completed no-op records into a "
        "new queue file with one INSERT ... WITH RECURSIVE (the rows an ack with retention "
        "leaves), then runs the 1,000 queued jobs beside them and beside none, in "
        f"{sizes.flat_reps} pairs. records-wait: a producer process (bench/wait_probe.py) "
        f"enqueues {sizes.wait_jobs} jobs one at a time and waits on each; the job returns "
        "its CLOCK_MONOTONIC finish time, and the latency is the producer's clock when "
        "wait() returned minus it. records-size: bench/record_size.py, "
        f"{sizes.record_size_jobs:,} jobs per file.",
        "- Raw limits: ThreadPoolExecutor(8) with every job submitted up front; a Python loop "
        "doing one SQLite INSERT and one DELETE per job, a commit each, WAL, in bench/.work.",
        "- Medians over the repetitions, with min-max; ratios are of medians from this run. "
        "The machine is shared: the load averages above say how busy it was.",
        "- Wake-ups (issue 21; bench/wakeup_scenarios.py): one idle worker of each system "
        "(drainpool on SQLite and on Redis, huey, celery, dramatiq; 8 threads). Pickup: a "
        "producer enqueues single `stamp` jobs 50-150 ms apart; latency is the job's start "
        "minus the return of its enqueue call, both on CLOCK_MONOTONIC. Idle: CPU of the "
        "worker's process tree and Redis commands (INFO commandstats, minus INFO) over the "
        "window, after one job. Burst: 1,000 jobs, one enqueue call each, into the idle "
        "worker, from the first call to the last completion (Redis INCR); on SQLite the "
        "producer's fsync per enqueue bounds it.",
        "- Peers: bench/peers/setup.sh installs the pinned bench/peers/requirements.txt into "
        "bench/.venv-peers; Redis is /usr/bin/redis-server on a free loopback port, no "
        "persistence, started and stopped by the run.",
    ]
