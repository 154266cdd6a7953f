"""`drainpool job show|wait|list|cancel`: a job's record, and stopping one job (issues 18, 19).

The commands are the queue's own calls (`job`, `wait`, `jobs`), as /api/jobs
is; this module parses their options and prints. `job wait` says how the job
ended by its exit code (drainpool.exitcodes), so a script need not parse text.
Bad options are refused by argparse, naming the option (exit 2); an unknown id
is one line and exit 1, as the issue asks; a stored payload or result that
cannot be decoded is printed raw with the reason (the record says it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from drainpool.exitcodes import ExitCode
from drainpool.queue import JobInfo, JobNotFound, JobState, Queue, WorkerIdentity
from drainpool.queue.base import CancelEffect, QueueError, QueueUnavailable
from drainpool.queue.records import MAX_LIST_LIMIT

LIST_DEFAULT_LIMIT = 50
WAIT_EXIT = {
    JobState.COMPLETED: ExitCode.OK,
    JobState.DEAD: ExitCode.JOB_DEAD,
    JobState.CANCELLED: ExitCode.JOB_CANCELLED,
}


def register(sub: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `job` and its actions to the top-level subparsers `sub`."""
    job = sub.add_parser(
        "job", help="a job's record: show, wait for, list", description=__doc__.splitlines()[0]
    )
    job.set_defaults(handler=lambda _args: _usage(job))
    actions = job.add_subparsers(metavar="ACTION")

    show = actions.add_parser("show", help="print one job's record")
    show.add_argument("id", metavar="ID", help="the job id that enqueue printed")
    show.add_argument("--json", action="store_true", help="the record as JSON")
    show.set_defaults(handler=_show)

    wait = actions.add_parser(
        "wait",
        help="wait until the job ends; print its result (exit 0 completed, 3 dead, "
        "4 cancelled, 5 timed out)",
    )
    wait.add_argument("id", metavar="ID", help="the job id that enqueue printed")
    wait.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (default: never)"
    )
    wait.set_defaults(handler=_wait)

    listing = actions.add_parser("list", help="list job records, newest first")
    listing.add_argument("--state", choices=[str(state) for state in JobState])
    listing.add_argument("--task", metavar="T", help="only jobs of this task")
    listing.add_argument(
        "--limit",
        type=_limit,
        default=LIST_DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N records, 1..{MAX_LIST_LIMIT} (default {LIST_DEFAULT_LIMIT})",
    )
    listing.add_argument("--json", action="store_true", help="the records as a JSON list")
    listing.set_defaults(handler=_list)

    cancel = actions.add_parser(
        "cancel",
        help="stop one job: never run if waiting, stopped if running (exit 1 if it had ended)",
    )
    cancel.add_argument("id", metavar="ID", help="the job id that enqueue printed")
    cancel.add_argument("--reason", default="", metavar="TEXT", help="kept in the job's record")
    cancel.add_argument(
        "--wait",
        action="store_true",
        help="wait until a running job has stopped; say whether it ended cancelled",
    )
    cancel.add_argument(
        "--timeout", type=_seconds, metavar="S", help="with --wait: give up after S seconds"
    )
    cancel.set_defaults(handler=_cancel)
    for parser in (show, wait, listing, cancel):
        add_config(parser)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return ExitCode.USAGE


def _seconds(text: str) -> float:
    """--timeout: a finite number of seconds >= 0 (argparse names the option)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds >= 0 (omit it to wait without end), not {text!r}"
        )
    return seconds


def _limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIST_LIMIT}, not {text}")
    return limit


def _open(args: argparse.Namespace) -> Queue:
    from drainpool import runtime

    loaded, _ = runtime.load_or_exit(args.config, tasks=False)
    return runtime.open_queue(loaded)


def _not_found(exc: JobNotFound) -> int:
    print(f"drainpool: {exc}", file=sys.stderr)
    return ExitCode.FAILURE


def _show(args: argparse.Namespace) -> int:
    queue = _open(args)
    try:
        info = queue.job(args.id)
    finally:
        queue.close()
    if info is None:
        return _not_found(JobNotFound(args.id))
    if args.json:
        print(json.dumps(info.as_dict()))
    else:
        print(describe(info))
    return ExitCode.OK


def _wait(args: argparse.Namespace) -> int:
    queue = _open(args)
    try:
        info = queue.wait(args.id, args.timeout)
    except JobNotFound as exc:
        return _not_found(exc)
    except TimeoutError as exc:
        print(f"drainpool: {exc}", file=sys.stderr)
        return ExitCode.JOB_TIMED_OUT
    finally:
        queue.close()
    if info.state is JobState.COMPLETED:
        print(json.dumps(info.result if info.result_kept else None))
        if info.result_note:
            print(f"drainpool: job {info.id} completed; {info.result_note}", file=sys.stderr)
    else:
        error = f": {_first_line(info.error)}" if info.error else ""
        print(f"drainpool: job {info.id} is {info.state}{error}", file=sys.stderr)
    return WAIT_EXIT[info.state]


def _cancel(args: argparse.Namespace) -> int:
    queue = _open(args)
    try:
        return cancel_job(queue, args.id, args.reason, args.wait, args.timeout)
    except JobNotFound as exc:
        return _not_found(exc)
    except QueueUnavailable:
        raise
    except QueueError as exc:  # not an id of this queue at all
        print(f"drainpool: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    finally:
        queue.close()


def cancel_job(queue: Queue, job_id: str, reason: str, wait: bool, timeout: float | None) -> int:
    """Cancel, print what happened in one line, and exit 0 only if the job ends cancelled."""
    result = queue.cancel(job_id, reason=reason, by=asker())
    info = result.job
    if result.effect is CancelEffect.CANCELLED:
        print(f"job {info.id} cancelled; it had not started")
        return ExitCode.OK
    if result.effect is CancelEffect.ENDED:
        print(f"drainpool: job {info.id} had already ended ({info.state}); nothing changed",
              file=sys.stderr)  # fmt: skip
        return ExitCode.FAILURE
    again = " (asked before)" if result.effect is CancelEffect.ALREADY_REQUESTED else ""
    if not wait:
        print(f"job {info.id}: cancel requested{again}; {_worker(info.worker)} stops it")
        return ExitCode.OK
    try:
        ended = queue.wait(info.id, timeout)
    except TimeoutError as exc:
        print(f"drainpool: {exc}", file=sys.stderr)
        return ExitCode.JOB_TIMED_OUT
    if ended.state is JobState.CANCELLED:
        print(f"job {ended.id} cancelled; it was stopped while running")
        return ExitCode.OK
    print(f"drainpool: job {ended.id} ended {ended.state} before the cancel took effect",
          file=sys.stderr)  # fmt: skip
    return ExitCode.FAILURE


def asker() -> str:
    """Who asked, for the record: the user and host the command runs as."""
    import getpass  # here: only a cancel names its user, and every command imports this module

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return f"cli {user}@{socket.gethostname()}"


def _list(args: argparse.Namespace) -> int:
    queue = _open(args)
    try:
        records = queue.jobs(args.state, args.task, args.limit)
    finally:
        queue.close()
    if args.json:
        print(json.dumps([info.as_dict() for info in records]))
    elif not records:
        print("no jobs")
    else:
        print(table(records))
    return ExitCode.OK


def describe(info: JobInfo) -> str:
    """One record for people: a field a line; payload and result as JSON; raw text marked."""
    rows = [
        ("id", info.id),
        ("task", info.task),
        ("state", str(info.state)),
        ("attempts", str(info.attempts)),
        ("key", info.key or "-"),
        ("enqueued", _when(info.enqueued_at)),
        ("started", _when(info.started_at)),
        ("finished", _when(info.finished_at)),
        ("worker", _worker(info.worker)),
        ("payload", _stored(info.payload, info.payload_error)),
    ]
    if info.state is JobState.COMPLETED or info.result_kept or info.result_note:
        rows.append(("result", _result(info)))
    if info.result_note:
        rows.append(("result note", info.result_note))
    if info.error:
        rows.append(("error", info.error))
    if info.timeout is not None:
        rows.append(("time limit", f"{info.timeout:g} s"))
    if info.cancel_requested_at is not None:
        by = f" by {info.cancelled_by}" if info.cancelled_by else ""
        why = f": {info.cancel_reason}" if info.cancel_reason else ""
        rows.append(("cancel", f"asked {_when(info.cancel_requested_at)}{by}{why}"))
    lines = [f"{name:<12}{value}" for name, value in rows]
    if info.traceback:
        lines.append("traceback")
        lines.extend("  " + line for line in info.traceback.rstrip().splitlines())
    return "\n".join(lines)


def table(records: list[JobInfo]) -> str:
    """Records as aligned columns, one line each, the last error's first line at the end."""
    header = ("ID", "STATE", "TASK", "ATTEMPTS", "ENQUEUED", "WORKER", "ERROR")
    rows = [
        (
            info.id,
            str(info.state),
            info.task,
            str(info.attempts),
            _when(info.enqueued_at),
            _worker(info.worker),
            _first_line(info.error),
        )
        for info in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        return "  ".join([*cells, row[-1]]).rstrip()

    return "\n".join(line(row) for row in (header, *rows))


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds).astimezone().isoformat(" ", timespec="milliseconds")


def _worker(worker: WorkerIdentity | None) -> str:
    if worker is None:
        return "-"
    pool = f" pool {worker.pool}" if worker.pool else ""
    return f"{worker.host} pid {worker.pid}{pool}"


def _stored(value: Any, error: str) -> str:
    """A decoded value as JSON, or raw text that could not be decoded, with the reason."""
    return f"{value} ({error})" if error else json.dumps(value)


def _result(info: JobInfo) -> str:
    if info.result_kept:
        return json.dumps(info.result)
    # Not kept (the note says why), or stored but unreadable: then its raw text.
    return "-" if info.result is None else str(info.result)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
