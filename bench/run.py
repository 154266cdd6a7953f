"""drainpool's benchmark suite: every scenario, several repetitions, one run, one report.

    python bench/run.py [--quick] [--only NAME...] [--reps N] [--out PATH] [--list]

NAME is a scenario or a group (baselines, drainpool, records, peers); see --list.
Writes bench/RESULTS.md (medians with min-max, versions, machine, the command)
and bench/.work/results.json with every sample; a section of the previous
RESULTS.md that the report does not write (figures added by hand) is kept.
Exits 1 when a selected scenario failed or could not run; the report says
which and why.
No timing here is a test: the test suite asserts behaviour, this measures speed.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import baselines
import drainpool_scenarios as dps
import postgres_peers
import postgres_rows
import queue_rounds
import record_scenarios as rec
import wakeup_scenarios as wakeups
from context import BENCH, FULL, QUICK, REPO, Context, Unavailable
from harness import Children
from peer_scenarios import PEERS, run_peer
from report import derived_rows, end_rows, method_lines, start_rows
from results import Results, hand_written, render

GROUPS = ("baselines", "drainpool", "records", "peers", "wakeups", "postgres")
SECTIONS = [
    ("baselines", "Raw limits (same run)"),
    ("drainpool", "drainpool"),
    ("records", "Job records (retention, wait, disk)"),
    ("peers", "Peers (same run, same bodies, Redis on loopback)"),
    ("wakeups", "Wake-ups: pickup latency, idle cost, burst (issue 21; drainpool and peers)"),
    ("postgres", "PostgreSQL: drainpool, procrastinate, pgqueuer (one database, same bodies)"),
]


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str
    run: Callable[[Context], None]
    doc: str
    default: bool = True  # part of a run without --only


SCENARIOS = [
    Scenario(
        "thread-pool",
        "baselines",
        baselines.thread_pool,
        "ThreadPoolExecutor(8), no queue: no-op and 10 ms jobs/s",
    ),
    Scenario(
        "sqlite-raw",
        "baselines",
        baselines.sqlite_raw,
        "a Python loop: SQLite insert + delete, a commit each (WAL)",
    ),
    Scenario(
        "drainpool-start",
        "drainpool",
        dps.start,
        "start to READY=1, start to first job, idle RSS, idle stop",
    ),
    Scenario(
        "drainpool-noop",
        "drainpool",
        dps.noop,
        "no-op jobs/s from drainpool start to last job done (and with Redis INCR)",
    ),
    Scenario(
        "drainpool-depth",
        "drainpool",
        dps.depth,
        "no-op and 10 ms jobs/s with 1k / 100k / 1M jobs already queued",
    ),
    Scenario(
        "drainpool-queue",
        "drainpool",
        queue_rounds.rounds,
        "the SQLite queue alone: CPU time of a settle + claim round at 1k and 1M queued",
    ),
    Scenario(
        "drainpool-enqueue",
        "drainpool",
        dps.enqueue,
        "enqueue rate: one job per command, and --file in bulk",
    ),
    Scenario(
        "drainpool-sigterm",
        "drainpool",
        dps.sigterm,
        "SIGTERM with 8 cooperative tasks in flight: time to exit, jobs back",
    ),
    Scenario(
        "drainpool-reload",
        "drainpool",
        dps.reload,
        "config write to the new generation's READY=1 (debounce 50 ms)",
    ),
    Scenario(
        "drainpool-redis",
        "drainpool",
        dps.redis_rows,
        "no-op and 10 ms jobs/s with 1, 2, 4 daemons on one Redis queue, against SQLite",
    ),
    Scenario(
        "drainpool-postgres",
        "drainpool",
        postgres_rows.postgres_rows,
        "no-op and 10 ms jobs/s with 1, 2, 4 daemons on one PostgreSQL; idle pickup latency",
        default=False,  # needs Debian's postgresql (scripts/setup-dev); --only drainpool-postgres
    ),
    Scenario(
        "postgres-peers",
        "postgres",
        postgres_peers.postgres_peers,
        "drainpool, procrastinate, pgqueuer on one PostgreSQL: no-op, 10 ms, SIGTERM fate",
        default=False,  # needs Debian's postgresql; --only postgres-peers
    ),
    Scenario(
        "records-retention",
        "records",
        rec.retention,
        "no-op jobs/s, retention 86400 against 0, interleaved, SQLite and Redis",
    ),
    Scenario(
        "records-depth",
        "records",
        rec.depth,
        "no-op jobs/s over 1k queued beside 1M completed records, against none (SQLite)",
    ),
    Scenario(
        "records-wait",
        "records",
        rec.wait_latency,
        "wait() return after the task finished, a producer process, SQLite and Redis",
    ),
    Scenario(
        "records-size",
        "records",
        rec.size,
        "SQLite bytes per retained no-op record (bench/record_size.py)",
    ),
    Scenario(
        "wakeup-pickup",
        "wakeups",
        wakeups.pickup,
        "p50/p90/p99 enqueue return to task start, 200 spaced jobs, drainpool and peers",
    ),
    Scenario(
        "wakeup-idle",
        "wakeups",
        wakeups.idle,
        "an idle worker's CPU and Redis commands over 60 s, drainpool and peers",
    ),
    Scenario(
        "wakeup-burst",
        "wakeups",
        wakeups.burst,
        "1,000 jobs enqueued one by one into an idle worker, drainpool and peers",
    ),
    *(
        Scenario(
            name,
            "peers",
            partial(run_peer, name=name),
            f"{name}: no-op and 10 ms rates, SIGTERM with 8 running, idle RSS",
        )
        for name in PEERS
    ),
]


def select(only: list[str] | None) -> list[Scenario]:
    if not only:
        return [s for s in SCENARIOS if s.default]
    known = {s.name for s in SCENARIOS}
    unknown = [name for name in only if name not in known and name not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown scenario or group: {', '.join(unknown)} (see --list)")
    return [s for s in SCENARIOS if s.name in only or (s.group in only and s.default)]


def compile_bytecode() -> None:
    """Byte-compile the daemon and the bench's task modules, as an installed package is.

    pip compiles a wheel's modules at install time, and so does the container
    image; a source checkout run under PYTHONDONTWRITEBYTECODE=1 (as this
    project's machines set) would compile about 30 ms of them at every daemon
    start and charge it to "start to READY=1".
    """
    compileall.compile_dir(REPO / "daemon", quiet=1)
    compileall.compile_dir(BENCH, maxlevels=0, quiet=1)  # not .venv-peers nor .work


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one pass (< 1 min)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="scenarios or groups to run")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, peers 3; quick 1)")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        for s in SCENARIOS:
            print(f"{s.name:20} {s.group:10} {s.doc}{'' if s.default else '  [opt-in]'}")
        return 0

    sizes = QUICK if ns.quick else FULL
    if ns.reps:
        sizes = dataclasses.replace(sizes, reps=ns.reps, peer_reps=ns.reps)
    chosen = select(ns.only)
    compile_bytecode()
    work = BENCH / ".work"
    shutil.rmtree(work / "logs", ignore_errors=True)  # logs of this run only, numbered from 1
    work.mkdir(exist_ok=True)
    results = Results()
    ctx = Context(sizes, work, results, Children(work / "logs"), quick=ns.quick)
    began, wall = time.monotonic(), time.time()
    header = start_rows(argv, wall)  # load average before the run
    try:
        for scenario in chosen:
            _run_one(ctx, scenario)
        header += end_rows(ctx, time.monotonic() - began)
    finally:
        ctx.close()
        shutil.rmtree(work / "jobs", ignore_errors=True)  # a million-line file is not worth keeping
    previous = ns.out.read_text() if ns.out.exists() else ""
    text = render(
        results,
        header,
        derived_rows(sizes),
        SECTIONS,
        method_lines(sizes),
        carried=hand_written(previous, SECTIONS),
    )
    ns.out.write_text(text)
    (work / "results.json").write_text(results.to_json())
    print(f"wrote {ns.out} ({time.monotonic() - began:.0f} s)")
    return 0 if all(v == "ok" for v in results.status.values()) else 1


def _run_one(ctx: Context, scenario: Scenario) -> None:
    print(f"[{scenario.name}] {scenario.doc}", flush=True)
    started = time.monotonic()
    try:
        scenario.run(ctx)
        status = "ok"
    except Unavailable as exc:
        status = f"not run: {exc}"
    except Exception as exc:
        log = ctx.work / "logs" / f"{scenario.name}.traceback"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        status = f"failed: {first} (traceback in {log.relative_to(BENCH.parent)})"
    took = time.monotonic() - started
    ctx.results.status[scenario.name] = status
    ctx.results.note(scenario.name, f"took {took:.1f} s")
    print(f"[{scenario.name}] {status} ({took:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
