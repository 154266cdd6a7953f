"""Bulk enqueue from a JSON-lines file: bounded memory, one transaction per batch.

By default a file with any bad line is rejected whole, so a first pass
validates everything before a second pass enqueues; standard input (or any
file that cannot seek, such as a pipe) is spooled to a temporary file during
the first pass so it can be read twice. With --skip-invalid one pass enqueues
the good lines and reports the bad ones. Lines are read as bytes and decoded
one by one, so a line that is not UTF-8 is a bad line like any other.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from drainpool.exitcodes import ExitCode
from drainpool.queue.base import Queue, QueueError, QueueUnavailable, encode_payload, loads

if TYPE_CHECKING:
    from drainpool.payloads import PayloadSpec

Known = list[str] | Mapping[str, "PayloadSpec | None"]  # configured task names (see parse_line)
BATCH = 1000
MAX_REPORTED = 20  # bad lines printed one by one before a count takes over
_LINE_KEYS = frozenset(("task", "payload"))


def seconds_until(when: str) -> float:
    """Delay until an ISO 8601 time (naive means local) or a Unix timestamp."""
    try:
        target = float(when)
    except ValueError:
        try:
            target = datetime.fromisoformat(when).timestamp()
        except ValueError:
            raise QueueError(f"--at {when!r}: not an ISO 8601 time or Unix seconds") from None
    return max(target - time.time(), 0.0)


def parse_json(text: str) -> Any:
    """JSON from the command line or a file; ValueError says what is wrong with it.

    Input is read with surrogateescape, so bytes that are not UTF-8 arrive as
    lone surrogates: refused here rather than stored and handed to a task.
    """
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not UTF-8 text") from None
    try:
        return loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:  # json.loads does not turn this one into a ValueError
        raise ValueError("nested too deeply") from None


def parse_line(raw: bytes | str, known: Known) -> tuple[str, Any]:
    """One job from one line; ValueError says what is wrong with it.

    `known` maps each task name to its payload check (drainpool.payloads), or
    None for a task whose payload cannot be checked here.
    """
    try:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    entry = parse_json(line)
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    if not entry.keys() <= _LINE_KEYS:
        extra = sorted(set(entry) - _LINE_KEYS)
        raise ValueError(f"unknown keys {extra}: a line holds only task and payload")
    task = entry.get("task")
    if not isinstance(task, str):
        raise ValueError('missing "task"')
    if task not in known:
        raise ValueError(f"unknown task {task!r}; configured tasks: {', '.join(known) or 'none'}")
    payload = entry.get("payload", {})
    try:
        encode_payload(payload)
    except QueueError as exc:
        raise ValueError(str(exc)) from None
    spec = known.get(task) if isinstance(known, Mapping) else None
    if spec is not None and (errors := spec.errors(payload)):
        raise ValueError("; ".join(errors))
    return task, payload


class _Progress:
    """A progress line on a terminal; silence otherwise (the summary line says it all)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self._tty or now - self._last < 0.1:
            return
        self._last = now
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            self._stream.write(f"\r[{bar}] {done}/{total}")
        else:
            self._stream.write(f"\r{done} enqueued")
        self._stream.flush()

    def done(self) -> None:
        if self._tty:
            self._stream.write("\r\033[K")


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(source, start=1):
        if line.strip():
            yield number, line


def enqueue_file(queue: Queue, name: str, known: Known, *, skip_invalid: bool) -> int:
    """Enqueue every line of `name` ('-' is stdin); print a summary; return the exit code."""
    err = sys.stderr
    source: IO[bytes] = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
    spool: IO[bytes] | None = None
    bad = 0
    added = [0]  # grows batch by batch, so a failure can say how far it got

    def report(number: int, reason: str) -> None:
        nonlocal bad
        bad += 1
        if bad <= MAX_REPORTED:
            print(f"{name}:{number}: {reason}", file=err)

    try:
        total = None
        if not skip_invalid:
            if name == "-" or not source.seekable():
                spool = tempfile.TemporaryFile("w+b")  # noqa: SIM115
            total = 0
            for number, line in _lines(source):
                try:
                    parse_line(line, known)
                    total += 1
                except ValueError as exc:
                    report(number, str(exc))
                if spool is not None:
                    spool.write(line if line.endswith(b"\n") else line + b"\n")
            if bad:
                more = f" ({bad - MAX_REPORTED} more not shown)" if bad > MAX_REPORTED else ""
                print(f"{name}: {bad} bad lines{more}: nothing enqueued", file=err)
                return ExitCode.USAGE
            if spool is not None:
                spool.seek(0)
                source, spool = spool, source
            else:
                source.seek(0)
        _enqueue_stream(queue, source, known, report, total, added)
    except QueueUnavailable as exc:
        print(f"{name}: {added[0]} jobs enqueued, then the queue failed: {exc}", file=err)
        return ExitCode.FAILURE
    finally:
        for stream in (source, spool):
            if stream is not None and stream is not sys.stdin.buffer:
                stream.close()
    skipped = f", {bad} bad lines skipped" if bad else ""
    print(f"{name}: {added[0]} jobs enqueued{skipped}", file=err)
    return ExitCode.OK


def _enqueue_stream(
    queue: Queue,
    source: IO[bytes],
    known: Known,
    report: Callable[[int, str], None],
    total: int | None,
    added: list[int],
) -> None:
    progress = _Progress(sys.stderr)
    batch: list[tuple[str, Any]] = []
    for number, line in _lines(source):
        try:
            batch.append(parse_line(line, known))
        except ValueError as exc:
            report(number, str(exc))
            continue
        if len(batch) >= BATCH:
            added[0] += queue.enqueue_many(batch)
            batch.clear()
            progress.update(added[0], total)
    if batch:
        added[0] += queue.enqueue_many(batch)
    progress.done()
