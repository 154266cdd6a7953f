"""Command tasks: run a program from an argv template filled by the job's payload, never a shell.

    [tasks.transcode]
    command = ["ffmpeg", "-i", "{input}", "{output}"]
    timeout_seconds = 3600        # optional
    cwd = "/srv/media"            # optional
    env = { LC_ALL = "C" }        # optional, added to the daemon's environment

Each payload field fills one `{name}` and nothing else: the argv goes to
execve as a list, so `"; rm -rf /"` is one literal argument. A payload that
does not fit the template (a missing or extra field, a value that is not a
string or number) can never succeed, so its job goes straight to the dead
letters.

The command runs in its own session, so the whole process group can be
signalled: when its job is asked to stop (a drain, a cancel of the job, a
time limit given at enqueue) it gets SIGTERM at once, and SIGKILL when the
pool gives up on it a grace later. Its own timeout_seconds ends it the same
way, with the outcome timed_out. Its stdout and stderr go to the log line by
line; a non-zero exit fails the job with the tail of stderr. Waiting is on the
pipes and a pidfd (Linux 5.3+) in one selector: nothing polls.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import string
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from drainpool.context import (
    Interrupted,
    JobFailed,
    JobStop,
    ShutdownEvent,
    StopSignal,
    TaskContext,
    TimedOut,
    child_environment,
    exit_description,
)
from drainpool.settings import CommandTask

KILL_AFTER_TIMEOUT_SECONDS = 5.0  # SIGTERM at timeout_seconds, SIGKILL this much later
REAP_WAIT_SECONDS = 1.0  # how long abandon() waits for a SIGKILLed command to be reaped
OUTPUT_DRAIN_SECONDS = 1.0  # reading what is left in the pipes after the program exited
STDERR_TAIL = 1500  # characters of stderr in a failed job's error (the pool keeps 2000)
STDOUT_TAIL = 4000  # characters of stdout kept in a completed job's result
LINE_MAX = 8192  # a longer line is logged in pieces
_LINE_END = re.compile(rb"[\r\n]")  # \r too: progress meters (ffmpeg) rewrite one line


def command_source(ref: CommandTask) -> str:
    """What identifies the task for a reload: any change of argv, timeout, cwd or env restarts."""
    env = hashlib.sha256(json.dumps(ref.env, sort_keys=True).encode()).hexdigest()[:12]
    return f"{json.dumps(ref.command)} timeout={ref.timeout_seconds} cwd={ref.cwd} env={env}"


def command_handler(ref: CommandTask) -> Callable[[TaskContext, Any], dict[str, Any]]:
    """Check the template and the program once, at config load; return the task's handler."""
    template = Template(ref.command)
    _check_program(ref)

    def run_command(ctx: TaskContext, payload: Any) -> dict[str, Any]:
        argv = template.render(payload)
        return _run(ctx, argv, ref)

    return run_command


class Template:
    """An argv whose arguments may hold `{field}` placeholders (never the program itself)."""

    def __init__(self, command: list[str]) -> None:
        self.command = list(command)
        self.fields: set[str] = set()
        self.bare: set[str] = set()  # fields that fill an option position on their own
        end_of_options = len(command)  # a literal "--" ends the options, as getopt does
        for index, arg in enumerate(command):
            if arg == "--" and end_of_options == len(command):
                end_of_options = index
            try:
                parts = list(string.Formatter().parse(arg))
            except ValueError as exc:
                raise ValueError(
                    f"command argument {arg!r}: {exc} (write {{{{ for a brace)"
                ) from None
            for _literal, name, spec, conversion in parts:
                if name is None:
                    continue
                if index == 0:
                    raise ValueError("the program (first argument) cannot be a placeholder")
                if not name.isidentifier() or spec or conversion:
                    raise ValueError(
                        f"command argument {arg!r}: placeholders are plain names like {{input}};"
                        " write {{ and }} for literal braces"
                    )
                self.fields.add(name)
            if re.fullmatch(r"\{[A-Za-z_]\w*\}", arg) and index < end_of_options:
                self.bare.add(arg[1:-1])

    def render(self, payload: Any) -> list[str]:
        """The argv for one job; JobFailed(retry=False) when the payload cannot fit."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise _unfit(f"the payload must be a JSON object, not {type(payload).__name__}")
        missing = sorted(self.fields - payload.keys())
        extra = sorted(payload.keys() - self.fields)
        if missing or extra:
            problems = [f"missing field {name!r}" for name in missing]
            problems += [f"unexpected field {name!r}" for name in extra]
            raise _unfit(", ".join(problems))
        values = {}
        for name, value in payload.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise _unfit(f"field {name!r} must be a string or a number")
            text = str(value)
            if "\0" in text:
                raise _unfit(f"field {name!r} contains a NUL byte")
            values[name] = text
        for name in self.bare:
            if isinstance(payload[name], str) and values[name].startswith("-"):
                # It would be read as an option (argument injection); "--" or "--opt={x}" is safe.
                raise _unfit(
                    f"field {name!r} starts with '-' and would be read as an option;"
                    " put '--' before it in the command, or write it as --option={field}"
                )
        return [arg.format_map(values) for arg in self.command]


def _unfit(reason: str) -> JobFailed:
    return JobFailed(f"payload does not fit the command: {reason}", retry=False)


def _check_program(ref: CommandTask) -> None:
    program = ref.command[0]
    if ref.cwd is not None and not os.path.isdir(ref.cwd):
        raise ValueError(f"cwd {ref.cwd!r} is not a directory")
    if "/" in program:
        path = os.path.join(ref.cwd or "", program)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ValueError(f"program {program!r} is not an executable file")
    elif shutil.which(program, path=ref.env.get("PATH", os.environ.get("PATH"))) is None:
        raise ValueError(f"program {program!r} is not found on PATH")


def _run(ctx: TaskContext, argv: list[str], ref: CommandTask) -> dict[str, Any]:
    shutdown = ctx.shutdown
    if not isinstance(shutdown, ShutdownEvent | JobStop):
        raise TypeError("command tasks need the pool's JobStop to stop their program")
    ctx.check()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ref.cwd,
            env=child_environment(ref.env),
            start_new_session=True,  # its own process group, signalled as a whole
        )
    except OSError as exc:
        raise JobFailed(f"cannot start {argv[0]!r}: {exc}") from None
    ctx.logger.info("command started, pid %d: %s", proc.pid, shlex.join(argv))
    child = _Child(proc, shutdown, ctx.logger)
    stop_listening = shutdown.listen(child.on_shutdown)
    try:
        child.wait(ref.timeout_seconds)
    finally:
        stop_listening()
        child.close()
    seconds = time.monotonic() - started
    if child.stopped_for_shutdown:
        raise Interrupted
    tail = child.tail("stderr", STDERR_TAIL * 2)
    if child.timed_out:
        message = f"{argv[0]} timed out after {ref.timeout_seconds:g}s{_stderr(tail)}"
        raise TimedOut(message, traceback=tail)
    if proc.returncode != 0:
        how = exit_description(proc.returncode)
        raise JobFailed(f"{argv[0]} {how}{_stderr(tail)}", traceback=tail)
    stdout = child.tail("stdout", STDOUT_TAIL)[-STDOUT_TAIL:]
    return {"exit_code": 0, "seconds": round(seconds, 3), "stdout_tail": stdout}


def _stderr(tail: str) -> str:
    return f"; stderr: {tail[-STDERR_TAIL:]}" if tail else ""


class _Child:
    """One running command: its pipes, its pidfd, and the signals sent to its group."""

    def __init__(self, proc: subprocess.Popen[bytes], shutdown: StopSignal, logger: Any) -> None:
        self.proc = proc
        self.shutdown = shutdown
        self.logger = logger
        self.pidfd = os.pidfd_open(proc.pid)
        self.owner = threading.get_ident()
        self.lock = threading.Lock()  # signals and the reaping never cross: no pid reuse race
        self.reaped = threading.Event()
        self.stopped_for_shutdown = False
        self.timed_out = False
        self.selector = selectors.DefaultSelector()
        self.lines: dict[int, bytearray] = {}
        # The last lines of each stream: stderr for a failure's error, stdout for the result.
        self.last_lines: dict[str, collections.deque[str]] = {
            "stdout": collections.deque(maxlen=200),
            "stderr": collections.deque(maxlen=200),
        }
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            assert stream is not None
            self.selector.register(stream.fileno(), selectors.EVENT_READ, name)
            self.lines[stream.fileno()] = bytearray()

    def signal_group(self, signum: int) -> bool:
        """Signal the group while its leader runs; False once the leader has exited."""
        with self.lock:
            if self.reaped.is_set():
                return False
            # WNOWAIT: look without reaping, so the leader's pid stays ours to signal.
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            if os.waitid(os.P_PID, self.proc.pid, flags) is not None:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)
            return True

    def on_shutdown(self) -> None:
        """Listener: SIGTERM when the drain begins, SIGKILL when the grace is over."""
        signum = signal.SIGKILL if self.shutdown.expired else signal.SIGTERM
        if self.signal_group(signum):
            # Stopped by us: whatever it exits with, its work may be unfinished (run again).
            self.stopped_for_shutdown = True
            reason = getattr(self.shutdown, "reason", None) or "drain"
            why = "the grace is over" if signum == signal.SIGKILL else f"stop asked ({reason})"
            log = self.logger.warning if signum == signal.SIGKILL else self.logger.info
            log("%s: %s to command pid %d and its group", why, signum.name, self.proc.pid)
        if signum == signal.SIGTERM:
            return
        if threading.get_ident() != self.owner:
            # abandon() returns only once the group is gone, so the daemon can exit after it.
            self.reaped.wait(REAP_WAIT_SECONDS)

    def wait(self, timeout: float | None) -> None:
        """Log output until the program exits (killing it on timeout), then reap its group."""
        self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")
        deadline = None if timeout is None else time.monotonic() + timeout
        kill_at: float | None = None
        exited = False
        try:
            while not exited:
                wake = min((t for t in (deadline, kill_at) if t is not None), default=None)
                pause = None if wake is None else max(wake - time.monotonic(), 0.0)
                for key, _ in self.selector.select(pause):
                    if key.data == "exit":
                        exited = True
                    else:
                        self._read(key.fd, key.data)
                now = time.monotonic()
                if not exited and deadline is not None and now >= deadline:
                    self.timed_out, deadline = True, None
                    self.logger.warning("command timed out after %gs: SIGTERM", timeout)
                    self.signal_group(signal.SIGTERM)
                    kill_at = now + KILL_AFTER_TIMEOUT_SECONDS
                if not exited and kill_at is not None and now >= kill_at:
                    kill_at = None
                    self.signal_group(signal.SIGKILL)
        finally:
            self._reap()
        self.selector.unregister(self.pidfd)
        self._drain_output()

    def _reap(self) -> None:
        with self.lock:
            if not self.reaped.is_set():
                # Whatever it left behind in its group goes with it; the leader, a zombie until
                # reaped below, keeps the group id from being reused meanwhile.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.reaped.set()

    def _drain_output(self) -> None:
        end = time.monotonic() + OUTPUT_DRAIN_SECONDS
        while self.selector.get_map() and (left := end - time.monotonic()) > 0:
            for key, _ in self.selector.select(left):
                self._read(key.fd, key.data)
        for fd in list(self.lines):
            self._flush(fd, self._name(fd))

    def _name(self, fd: int) -> str:
        assert self.proc.stdout is not None
        return "stdout" if fd == self.proc.stdout.fileno() else "stderr"

    def _read(self, fd: int, name: str) -> None:
        data = os.read(fd, 65536)
        if not data:
            self.selector.unregister(fd)
            return
        buffer = self.lines[fd]
        buffer += data
        while True:
            if match := _LINE_END.search(buffer, 0, LINE_MAX + 1):
                self._emit(name, bytes(buffer[: match.start()]))
                del buffer[: match.end()]
            elif len(buffer) > LINE_MAX:
                self._emit(name, bytes(buffer[:LINE_MAX]))
                del buffer[:LINE_MAX]
            else:
                break

    def _flush(self, fd: int, name: str) -> None:
        buffer = self.lines[fd]
        if buffer:
            self._emit(name, bytes(buffer))
            buffer.clear()

    def _emit(self, name: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if not line:
            return
        self.logger.info("%s: %s", name, line)
        self.last_lines[name].append(line)

    def tail(self, name: str, limit: int) -> str:
        """The last lines of stdout or stderr, about `limit` characters (at least one line)."""
        tail: list[str] = []
        size = 0
        for line in reversed(self.last_lines[name]):
            size += len(line) + 1
            if size > limit and tail:
                break
            tail.append(line)
        return "\n".join(reversed(tail))

    def close(self) -> None:
        self._reap()
        self.selector.close()
        os.close(self.pidfd)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
