"""The child side of a process worker, and the JSON channel both sides speak.

A child is a fresh interpreter (the spawn way: nothing inherited but what is
passed), started by drainpool.procpool with one end of a socketpair. Messages
are JSON, one per line, never pickle: the parent sends `run` (a job),
`shutdown` (a drain) and `stop` (one job: a cancel or a time limit, with its
reason); the child answers each job with its outcome.

A reader thread owns the socket's input, so a `shutdown` or `stop` arriving
while a task runs sets that job's JobStop at once: ctx.sleep wakes,
ctx.check raises, an async task is cancelled, exactly as in a thread worker.
End of stream means the pool closed this worker or the daemon is gone; the
child then exits at once (a job it was running comes back by its lease).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sys
import threading
from typing import Any, cast

from drainpool.context import (
    Interrupted,
    JobStop,
    StopReason,
    TaskContext,
    failure_details,
    task_logger,
)
from drainpool.outcomes import Outcome

# Run with `python -c BOOTSTRAP drainpool-worker FD SYS_PATH_JSON CONFIG_JSON`: the parent's
# sys.path first, so the task modules import in the child as they did in the daemon.
BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[3]);"
    " from drainpool.procworker import main; main()"
)


class Channel:
    """JSON messages, one per line, over a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._send_lock = threading.Lock()  # the worker thread and the drain both send

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            self.sock.sendall(data)

    def take(self) -> dict[str, Any] | None:
        """A message already received in full, if any."""
        end = self._buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        message: dict[str, Any] = json.loads(line)
        return message

    def fill(self) -> bool:
        """Read what the socket has (blocking); False at end of stream."""
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            return False
        self._buffer += data
        return bool(data)

    def recv(self) -> dict[str, Any] | None:
        """The next message, or None at end of stream."""
        while (message := self.take()) is None:
            if not self.fill():
                return None
        return message


def main() -> None:
    """Entry point of a worker process (see BOOTSTRAP)."""
    fd = int(sys.argv[2])
    config = json.loads(sys.argv[4])
    os.set_inheritable(fd, False)  # a task's own children must not hold the pool's socket
    channel = Channel(socket.socket(fileno=fd))
    stops = _Stops()
    inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    threading.Thread(
        target=_read, args=(channel, inbox, stops), name="drainpool-control", daemon=True
    ).start()
    _configure_logging(config["log"])
    tasks: dict[str, str] = config["tasks"]
    handlers: dict[str, Any] = {}
    while True:
        message = inbox.get()
        try:
            reply = _run(message, tasks, handlers, stops.begin(message["id"]))
        finally:
            stops.end()
        try:
            channel.send(reply)
        except (TypeError, ValueError, RecursionError) as exc:  # a result JSON cannot hold
            reply = {"outcome": reply["outcome"], "not_json": " ".join(str(exc).split())}
            channel.send(reply)


class _Stops:
    """The child's side of stopping: the drain (every job from now on) and one job's stop.

    A `stop` for a job may arrive before its `run` is taken from the inbox (the
    parent forwards a stop the moment it is set); it is kept until that job begins.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._draining = False
        self._early: dict[str, StopReason] = {}
        self._job_id: str | None = None
        self._stop: JobStop | None = None

    def begin(self, job_id: str) -> JobStop:
        stop = JobStop()
        with self._lock:
            self._job_id, self._stop = job_id, stop
            reason = "drain" if self._draining else self._early.pop(job_id, None)
        if reason is not None:
            stop.set(reason)
        return stop

    def end(self) -> None:
        with self._lock:
            self._job_id = self._stop = None

    def received(self, message: dict[str, Any]) -> None:
        reason: StopReason = "drain"
        with self._lock:
            if message["op"] == "shutdown":
                self._draining = True
                stop = self._stop
            elif message["id"] == self._job_id:
                stop, reason = self._stop, cast(StopReason, message["reason"])  # the parent's
            else:
                self._early[message["id"]] = message["reason"]
                stop = None
        if stop is not None:
            stop.set(reason)


def _read(channel: Channel, inbox: queue.SimpleQueue[dict[str, Any]], stops: _Stops) -> None:
    while (message := channel.recv()) is not None:
        if message.get("op") in ("shutdown", "stop"):
            stops.received(message)
        else:
            inbox.put(message)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)  # closed by the pool, or the daemon is gone: nothing here is worth finishing


def _configure_logging(log: dict[str, str]) -> None:
    from drainpool.logs import configure_logging
    from drainpool.settings import LogSettings

    configure_logging(LogSettings(level=log["level"], format=log["format"]))  # type: ignore[arg-type]


def _run(
    message: dict[str, Any],
    tasks: dict[str, str],
    handlers: dict[str, Any],
    shutdown: JobStop,
) -> dict[str, Any]:
    """Run one job; its outcome as the parent's Pool._run would classify it."""
    name = message["task"]
    ctx = TaskContext(
        message["id"], message["attempt"], name, task_logger(name, message["id"]), shutdown
    )
    try:
        handler = handlers.get(name)
        if handler is None:
            from drainpool.tasks import _resolve  # the daemon's own resolver: async tasks wrapped

            handler = handlers[name] = _resolve(name, tasks[name]).handler
        result = handler(ctx, message["payload"])
    except Interrupted:
        return {"outcome": Outcome.INTERRUPTED}
    except BaseException as exc:  # SystemExit too: the task's failure, not the worker's
        error, trace, retry = failure_details(exc)
        return {"outcome": Outcome.FAILED, "error": error, "traceback": trace, "retry": retry}
    return {"outcome": Outcome.COMPLETED, "result": result}
