"""The `drainpool` command: run, check-config, reload, enqueue, queue, status, job.

Exit codes follow drainpool.exitcodes: 0 ok, 1 failure, 2 usage or bad input,
3, 4, 5 how a waited-for job ended (drainpool.jobs_cli), 78 invalid config (EX_CONFIG).

A little over 400 lines: each command's options and its handler are read together,
and a parser module apart would put them a file away from each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
from collections.abc import Sequence
from queue import SimpleQueue
from typing import Any

from drainpool import __version__
from drainpool.exitcodes import ExitCode
from drainpool.queue.base import QueueError, QueueUnavailable, check_timeout


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(int(dispatch(argv)))


def dispatch(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(words[0] if words else None)
    args = parser.parse_args(words)
    if not getattr(args, "handler", None):
        parser.print_usage(sys.stderr)
        return ExitCode.USAGE
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"drainpool: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except QueueUnavailable as exc:  # a fault of the storage, not of the command: exit 1
        print(f"drainpool: queue unavailable: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except QueueError as exc:  # a request the queue refuses: a payload, an id, a time
        print(f"drainpool: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return 130


class UsageError(Exception):
    """Bad arguments or bad input: one line to stderr, exit 2."""


COMMANDS = ("run", "check-config", "reload", "enqueue", "queue", "schedule", "status", "job")


def _parser(named: str | None = None) -> argparse.ArgumentParser:
    """The command line. When `named` is a command, only its own parser is built.

    Each subparser costs start-up time (argparse's and gettext's work: some 6 ms for
    the dozen, issue 17); the others only show in the top-level help or in the
    error about an unknown command, and for those every one is built.
    """

    def wanted(name: str) -> bool:
        return named not in COMMANDS or name == named

    parser = argparse.ArgumentParser(prog="drainpool", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"drainpool {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_config(p)
        p.set_defaults(handler=handler)
        return p

    if wanted("run"):
        command("run", _cmd_run, "run the daemon in the foreground")

    if wanted("check-config"):
        p = command(
            "check-config", _cmd_check_config, "validate the config; print the effective one"
        )
        p.add_argument(
            "--diff",
            action="store_true",
            help="print what a reload of the running daemon would do, pool by pool, instead",
        )
        p.add_argument("--pid", type=int, help="with --diff: the daemon's pid")

    if wanted("reload"):
        p = command(
            "reload", _cmd_reload, "reload a running daemon's config and wait for the result"
        )
        p.add_argument("--pid", type=int, help="the daemon's pid (default: ask its endpoint)")
        p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (default 90)")
        p.add_argument(
            "--dry-run", action="store_true", help="print what would restart; change nothing"
        )

    if wanted("enqueue"):
        p = command("enqueue", _cmd_enqueue, "add jobs to the queue")
        p.epilog = (
            "A payload is checked against its task's payload type (a pydantic model or TypedDict)"
            " when this machine can import the task's module: one line per error, exit 2, nothing"
            " queued. When it cannot, the job is queued unchecked and the daemon checks it."
        )
        p.add_argument("task", nargs="?", help="a configured task name")
        p.add_argument(
            "payload", nargs="?", help="the job's payload as JSON (default {}), checked if typed"
        )
        p.add_argument("--delay", type=float, default=0.0, metavar="S", help="run after S seconds")
        p.add_argument("--at", metavar="TIME", help="run at TIME (ISO 8601, or Unix seconds)")
        p.add_argument(
            "--key", metavar="K", help="idempotency key: a live job with K is not added twice"
        )
        p.add_argument(
            "--timeout",
            type=_time_limit,
            metavar="S",
            help="the job's time limit in seconds (over its task's timeout_seconds)",
        )
        p.add_argument(
            "--file", metavar="JOBS.jsonl", help="bulk: one {task, payload} per line; - for stdin"
        )
        p.add_argument(
            "--skip-invalid", action="store_true", help="bulk: enqueue good lines, report bad"
        )

    if wanted("queue"):
        p = command(
            "queue", _cmd_queue, "inspect the queue and its dead letters; migrate its tables"
        )
        p.add_argument(
            "action",
            nargs="?",
            choices=["stats", "dead", "migrate"],
            help="stats, dead list|retry|purge, or migrate (create or upgrade PostgreSQL tables)",
        )
        p.add_argument("dead_action", nargs="?", choices=["list", "retry", "purge"])
        p.add_argument("ids", nargs="*", help="job ids for dead retry/purge (default: all)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--limit", type=int, default=100, help="dead list: at most this many")

    if wanted("schedule"):
        from drainpool.schedule_cli import add_parser as add_schedule_parser

        add_schedule_parser(command)

    if wanted("status"):
        p = command("status", _cmd_status, "show a running daemon's state")
        p.add_argument("--pid", type=int, help="the daemon's pid (default: ask its endpoint)")
        p.add_argument("--watch", action="store_true", help="refresh in place every second")
        p.add_argument("--json", action="store_true", help="print the raw status JSON")

    if wanted("job"):
        from drainpool import jobs_cli  # like schedule_cli: loaded for its own command

        jobs_cli.register(sub, _add_config)

    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $DRAINPOOL_CONFIG, else /etc/drainpool/drainpool.toml)",
    )


def _load(args: argparse.Namespace, *, tasks: bool = True) -> Any:
    """Load the config or exit 78 with every problem on its own line."""
    from drainpool import runtime

    return runtime.load_or_exit(args.config, tasks=tasks)


def _cmd_run(args: argparse.Namespace) -> int:
    # Handlers first, so a signal during start-up is queued for the supervisor, not fatal.
    from drainpool.malloc_arenas import cap_arenas
    from drainpool.signals import forward_signals

    cap_arenas()  # before any thread of the daemon's starts
    inbox: SimpleQueue[object] = SimpleQueue()
    with forward_signals(inbox):
        loaded, registry = _load(args)
        from drainpool.logs import configure_logging
        from drainpool.supervisor import Supervisor

        configure_logging(loaded.settings.log)
        from drainpool import tracing
        from drainpool.endpoint import EndpointError

        # What start-up built so far (modules, classes, the first config and task
        # registry) lives about as long as the process. Frozen, the cycle collector no
        # longer walks it in each full collection nor in those at exit, which were most
        # of the CPU from an idle daemon's SIGTERM to its exit (issue 17). Reference
        # counting still frees a frozen object (a config a reload replaced); the
        # supervisor, its pools and the queue are built below, collected as before.
        # OpenTelemetry, when on, is imported first so that it is frozen too.
        tracing.preload(loaded.settings.tracing)
        gc.freeze()
        try:
            code = Supervisor(loaded, registry, inbox=inbox).run()
        except (OSError, EndpointError) as exc:
            import logging

            logging.getLogger("drainpool").error("cannot start: %s", exc)
            # The endpoint's address or files are the config's fault: 78, not restarted.
            return ExitCode.CONFIG if isinstance(exc, EndpointError) else ExitCode.FAILURE
    _exit_now_if_threads_linger(code)
    return code


def _exit_now_if_threads_linger(code: int) -> None:
    """Exit with `code` now if a task left a non-daemon thread running (issue 23, item 5).

    The interpreter's shutdown would wait for that thread for ever, past the grace
    and systemd's stop timeout. The supervisor has closed everything by now, so
    the process ends here without that wait, after flushing what it printed.
    """
    import logging
    import os
    import threading

    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if not lingering:
        return
    names = ", ".join(sorted(t.name for t in lingering))
    logging.getLogger("drainpool").warning(
        "exiting without waiting for threads a task left running: %s", names
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def _cmd_check_config(args: argparse.Namespace) -> int:
    from drainpool.runtime import redacted_effective
    from drainpool.settings import to_toml

    if args.diff:
        from drainpool import control

        return control.dry_run(args)
    loaded, _ = _load(args)
    effective = redacted_effective(loaded.settings)
    print(f"# effective config of {loaded.path} (environment overrides applied)")
    print(to_toml(effective), end="")
    return ExitCode.OK


def _time_limit(text: str) -> float:
    """--timeout: seconds in (0, a year]; argparse names the option and exits 2."""
    try:
        seconds = float(text)
        check_timeout(seconds)
    except (ValueError, QueueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return seconds


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from drainpool import bulk
    from drainpool.runtime import open_queue

    if not 0 <= args.delay < float("inf"):  # also NaN
        raise UsageError(f"--delay must be 0 or more seconds (a finite number), not {args.delay:g}")
    loaded, _ = _load(args, tasks=False)
    known = sorted(loaded.settings.tasks)
    if args.file is not None:
        given = (args.task, args.payload, args.key, args.delay, args.timeout)
        if any(given) or args.at is not None:
            raise UsageError("--file takes no TASK, JSON, --key, --delay, --at or --timeout")
        queue = open_queue(loaded)
        try:
            checks = {
                name: _payload_spec(ref) for name, ref in sorted(loaded.settings.tasks.items())
            }
            return bulk.enqueue_file(queue, args.file, checks, skip_invalid=args.skip_invalid)
        except QueueUnavailable:
            raise
        except (QueueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        finally:
            queue.close()
    if not args.task:
        raise UsageError("enqueue needs TASK (or --file)")
    if args.task not in known:
        raise UsageError(
            f"unknown task {args.task!r}; configured tasks: {', '.join(known) or 'none'}"
        )
    try:
        payload = bulk.parse_json(args.payload) if args.payload is not None else {}
    except ValueError as exc:
        raise UsageError(f"payload is {exc}") from None
    errors = _payload_errors(loaded.settings.tasks[args.task], payload)
    if errors:
        for line in errors:
            print(f"drainpool: {args.task}: {line}", file=sys.stderr)
        return ExitCode.USAGE
    delay = args.delay
    if args.at is not None:
        if args.delay:
            raise UsageError("give --delay or --at, not both")
        delay = bulk.seconds_until(args.at)
    queue = open_queue(loaded)
    try:
        job_id = queue.enqueue(args.task, payload, delay=delay, key=args.key, timeout=args.timeout)
    except QueueUnavailable:
        raise
    except QueueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        queue.close()
    print(job_id)
    return ExitCode.OK


def _payload_spec(ref: object) -> Any:
    """A Python task's payload check, or None: a command task, or not importable here."""
    from drainpool.payloads import spec_for_ref
    from drainpool.settings import python_ref

    function = python_ref(ref)
    spec = spec_for_ref(function) if function is not None else None
    return spec if spec is not None and spec.typed else None


def _payload_errors(ref: object, payload: Any) -> list[str]:
    """Why `payload` cannot fit a typed task; empty when it fits or cannot be checked here."""
    spec = _payload_spec(ref)
    return [] if spec is None else spec.errors(payload)


def _cmd_queue(args: argparse.Namespace) -> int:
    from drainpool import deadletters
    from drainpool.runtime import open_queue

    if args.action is None:
        raise UsageError(
            "queue needs an action: stats, or dead list|retry|purge [ID...], or migrate"
        )
    loaded, _ = _load(args, tasks=False)
    queue = open_queue(loaded)
    try:
        if args.action == "stats":
            return _print_stats(queue, args.json)
        if args.action == "migrate":
            return _migrate(queue)
        if args.dead_action is None:
            raise UsageError("queue dead needs list, retry or purge")
        if args.dead_action == "list":
            return _print_dead(queue, args.json, args.limit)
        done = deadletters.apply(queue, args.dead_action, args.ids or None)
        print(done.summary())
        if done.problem():
            print(f"drainpool: {done.problem()}", file=sys.stderr)
            return ExitCode.FAILURE
        return ExitCode.OK
    finally:
        queue.close()


def _migrate(queue: Any) -> int:
    """Create or upgrade the queue's tables now (PostgreSQL: for a service without DDL rights)."""
    migrate = getattr(queue, "migrate", None)
    if migrate is None:  # SQLite and Redis upgrade themselves when opened
        print(f"{type(queue).__name__}: nothing to migrate (upgraded when opened)")
        return ExitCode.OK
    found, now = migrate()
    if found == now:
        print(f"schema {queue.schema}: at version {now}, nothing to do")
    else:
        print(f"schema {queue.schema}: version {found} -> {now}")
    return ExitCode.OK


def _print_stats(queue: Any, as_json: bool) -> int:
    stats = queue.stats()
    if as_json:
        print(json.dumps(stats.as_dict()))
        return ExitCode.OK
    age = stats.oldest_ready_age_seconds
    for label, value in (
        ("ready", stats.ready),
        ("delayed", stats.delayed),
        ("leased", stats.leased),
        ("dead", stats.dead),
        ("oldest ready", "-" if age is None else f"{age:.1f}s"),
    ):
        print(f"{label:<13}{value}")
    return ExitCode.OK


def _print_dead(queue: Any, as_json: bool, limit: int) -> int:
    dead = queue.dead_list(limit)
    if as_json:
        print(json.dumps([dataclasses.asdict(job) for job in dead]))
        return ExitCode.OK
    if not dead:
        print("no dead jobs")
    for job in dead:
        error = job.error.splitlines()[0] if job.error else ""
        print(f"{job.id}\t{job.task}\tattempts={job.attempts}\t{error}")
    return ExitCode.OK


def _cmd_reload(args: argparse.Namespace) -> int:
    from drainpool import control

    return control.reload(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from drainpool import control

    return control.status(args)


if __name__ == "__main__":
    main()
