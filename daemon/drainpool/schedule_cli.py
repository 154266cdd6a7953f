"""`drainpool schedule list | run NAME` (issue 20): read from the config and the queue.

No daemon is needed: the schedules come from the config file, their last
ticks from the queue's storage (the same for every daemon on it), and a run
is an enqueue like `drainpool enqueue`, recorded as the schedule's.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from drainpool.exitcodes import ExitCode


def add_parser(command: Any) -> None:
    """Register `schedule` with cli.py's `command(name, handler, help)` helper."""
    p = command("schedule", run_command, "list the schedules, or enqueue one's job now")
    p.add_argument("action", choices=["list", "run"], help="list, or run NAME")
    p.add_argument("name", nargs="?", help="run: the schedule to enqueue a job of")
    p.add_argument("--json", action="store_true", help="list: machine-readable output")


def run_command(args: argparse.Namespace) -> int:
    # Here, not at the top: cli.py builds every parser, and `enqueue` needs no timetable.
    from drainpool import runtime
    from drainpool.cli import UsageError
    from drainpool.schedules import describe

    loaded, _ = runtime.load_or_exit(args.config, tasks=False)
    schedules = loaded.settings.schedules
    if args.action == "run":
        if not args.name:
            raise UsageError("schedule run needs NAME")
        if args.name not in schedules:
            known = ", ".join(sorted(schedules)) or "none"
            raise UsageError(f"unknown schedule {args.name!r}; configured schedules: {known}")
    elif args.name:
        raise UsageError("schedule list takes no NAME")
    queue = runtime.open_queue(loaded)
    try:
        if args.action == "run":
            schedule = schedules[args.name]
            job_id = queue.enqueue_tick(
                args.name, schedule.task, schedule.payload, tick=None, expected=None
            )
            print(job_id)
            return ExitCode.OK
        ticks = queue.schedule_ticks()
    finally:
        queue.close()
    now = time.time()
    rows = [describe(name, s, ticks.get(name), now) for name, s in sorted(schedules.items())]
    if args.json:
        print(json.dumps(rows))
    else:
        _print_table(rows)
    return ExitCode.OK


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no schedules configured")
        return
    header = ("NAME", "TASK", "EXPRESSION", "ZONE", "LAST TICK", "NEXT TICK", "ENABLED")
    table = [header] + [
        (
            row["name"],
            row["task"],
            row["expression"],
            row["timezone"],
            _when(row["last_tick"]),
            _when(row["next_tick"]),
            "yes" if row["enabled"] else "no",
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
