"""Schedules (issue 20): tick-to-enqueue delay, idle cost, and 1,000 schedules.

    python bench/schedules.py [--ticks N] [--idle-seconds S] [--schedules N] [--repeat R]

- delay: real daemons (one, then three on one SQLite file) run an `every = "1s"`
  schedule for N ticks; the delay of a tick is its job's enqueued_at (the queue's
  clock) minus the tick. p50 and p99 over the ticks.
- idle: CPU seconds (utime + stime from /proc) of an idle daemon over S seconds,
  with one schedule due in an hour and with none, scaled to CPU seconds per hour;
  the difference is the scheduler's cost.
- many: start to READY=1 with N `every` schedules against none, and a reload that
  changes every one of them: SIGHUP to the READY=1 after RELOADING=1. Medians of
  R runs.

Not part of bench/run.py; the figures go into bench/RESULTS.md by hand. Children
are started through harness.Children and killed by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from drainpool.queue.sqlite import SqliteQueue
from harness import Child, Children, Inbox, notify_is

CLK_TCK = os.sysconf("SC_CLK_TCK")
TIMEOUT = 120.0


def config(directory: Path, schedules: str) -> Path:
    path = directory / "drainpool.toml"
    path.write_text(
        "[pool]\nworkers = 2\n[reload]\nwatch = false\n"
        '[queue]\nurl = "sqlite:///queue.db"\n[metrics]\nport = 0\n[log]\nlevel = "WARNING"\n'
        '[tasks]\nnoop = "drainpool.tasks.examples:noop"\n' + schedules
    )
    return path


def schedule(name: str, when: str, catch_up: str = "none") -> str:
    return f'[schedules.{name}]\n{when}\ntask = "noop"\ncatch_up = "{catch_up}"\n'


def start(children: Children, path: Path, events: Inbox) -> Child:
    env = {**os.environ, "NOTIFY_SOCKET": events.path}
    argv = [sys.executable, "-m", "drainpool", "run", "--config", str(path)]
    child = children.start("drainpool", argv, env=env, cwd=path.parent)
    return child


def wait_ready(events: Inbox, since: int, child: Child) -> float:
    message = events.wait_for(notify_is("READY"), TIMEOUT, since)
    if message is None:
        raise SystemExit(f"no READY=1 within {TIMEOUT} s:\n{child.tail()}")
    return message.received


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def tick_delay(daemons: int, ticks: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = config(Path(tmp), schedule("tick", 'every = "1s"'))
        children = Children(Path(tmp) / "logs")
        events = Inbox("notify")
        queue = SqliteQueue(Path(tmp) / "queue.db")
        try:
            for _ in range(daemons):
                mark = events.mark()
                wait_ready(events, mark, start(children, path, events))
            deadline = time.monotonic() + ticks + TIMEOUT
            infos = []
            while time.monotonic() < deadline:
                infos = [i for i in queue.jobs(limit=10_000) if i.tick is not None]
                if len(infos) >= ticks:
                    break
                time.sleep(0.5)  # the bench's own pacing, not the daemon's
            delays = [i.enqueued_at - i.tick for i in infos if i.tick is not None]
            return percentile(delays, 0.5), percentile(delays, 0.99)
        finally:
            queue.close()
            children.kill_all()
            events.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def idle_cpu_per_hour(with_schedule: bool, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        text = schedule("hourly", 'cron = "@hourly"') if with_schedule else ""
        path = config(Path(tmp), text)
        children = Children(Path(tmp) / "logs")
        events = Inbox("notify")
        try:
            child = start(children, path, events)
            wait_ready(events, 0, child)
            time.sleep(2.0)  # let start-up settle before the window
            before = cpu_seconds(child.pid)
            time.sleep(seconds)
            return (cpu_seconds(child.pid) - before) / seconds * 3600
        finally:
            children.kill_all()
            events.close()


def many(n: int) -> tuple[float, float, float]:
    """(start to READY with n schedules, with none, reload of all n) in seconds."""
    results = []
    for count in (n, 0):
        with tempfile.TemporaryDirectory() as tmp:
            body = "".join(schedule(f"s{i}", f'every = "{60 + i}s"') for i in range(count))
            path = config(Path(tmp), body)
            children = Children(Path(tmp) / "logs")
            events = Inbox("notify")
            try:
                child = start(children, path, events)
                ready = wait_ready(events, 0, child)
                results.append(ready - child.started_at)
                if count:
                    config(
                        Path(tmp),
                        "".join(schedule(f"s{i}", f'every = "{61 + i}s"') for i in range(count)),
                    )
                    mark = events.mark()
                    sent = child.signal(signal.SIGHUP)
                    reloading = events.wait_for(notify_is("RELOADING"), TIMEOUT, mark)
                    if reloading is None:
                        raise SystemExit("no RELOADING=1 after SIGHUP")
                    results.append(wait_ready(events, mark, child) - sent)
            finally:
                children.kill_all()
                events.close()
    return results[0], results[2], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the start/reload figures")
    args = parser.parse_args()
    for daemons in (1, 3):
        p50, p99 = tick_delay(daemons, args.ticks)
        print(
            f"tick-to-enqueue, {daemons} daemon(s), {args.ticks} ticks: p50 {p50 * 1000:.1f} ms,"
            f" p99 {p99 * 1000:.1f} ms"
        )
    with_one = idle_cpu_per_hour(True, args.idle_seconds)
    without = idle_cpu_per_hour(False, args.idle_seconds)
    print(
        f"idle CPU, one schedule: {with_one:.2f} s/h; no schedule: {without:.2f} s/h;"
        f" scheduler: {with_one - without:+.2f} s/h"
    )
    runs = [many(args.schedules) for _ in range(args.repeat)]
    started, bare, reload = (statistics.median(run[i] for run in runs) for i in range(3))
    print(
        f"{args.schedules} schedules, medians of {args.repeat}: start to READY {started:.3f} s"
        f" (none: {bare:.3f} s), reload of all {reload:.3f} s"
    )


if __name__ == "__main__":
    main()
