"""What a running task sees of the daemon: its job, a logger, and its stop signal.

Interruption is cooperative because Python cannot kill a thread: the pool sets
the job's stop signal (`JobStop`: every running job of a generation at a drain,
one job at a cancel or at its time limit), and every `check()` or `sleep()`
turns it into `Interrupted`. Waiting is `Event.wait`, so a task wakes the
moment the signal is set, with no polling interval to tune.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from drainpool.queue.base import slot_setters

log = logging.getLogger("drainpool.context")


# Why a job was asked to stop: the pool drains, an operator cancelled it, or its time ran out.
StopReason = Literal["drain", "cancel", "timeout"]


class Interrupted(BaseException):
    """Raised by `TaskContext.check()` and `.sleep()` once shutdown is requested.

    A BaseException, like asyncio.CancelledError, so that a task's broad
    `except Exception:` does not swallow the request to stop.
    """


# systemd's variables for the main process: a child that used them would speak for the unit.
_MAIN_PROCESS_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for processes the daemon starts for tasks (workers, commands)."""
    env = {k: v for k, v in os.environ.items() if k not in _MAIN_PROCESS_ONLY}
    env.update(extra or {})
    return env


class JobFailed(Exception):
    """Fail the job with exactly this message; `retry=False` sends it straight to the dead letters.

    Raised by handlers that know why a job failed better than a traceback
    would say: a command's exit status and stderr, a worker process that
    died, a payload that can never fit its task.
    """

    def __init__(self, error: str, *, traceback: str = "", retry: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.traceback = traceback
        self.retry = retry


class TimedOut(JobFailed):
    """A task that ran out of its own time (a command's timeout_seconds): outcome timed_out."""


def failure_details(exc: BaseException) -> tuple[str, str, bool]:
    """(message, traceback, retry) to keep with a job whose task raised `exc`."""
    if isinstance(exc, JobFailed):
        return exc.error, exc.traceback, exc.retry
    return f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)), True


def exit_description(returncode: int) -> str:
    """How a child process ended, from its Popen returncode (negative: the signal)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:  # a real-time signal has no name
        name = str(-returncode)
    return f"killed by signal {name}"


class ShutdownEvent(threading.Event):
    """A pool generation's cancellation token: an Event that can also wake listeners.

    Threads wait on the event itself. Work that cannot block in `wait()` (an
    event loop, the waiter of a child process) registers a listener instead,
    which is called the moment the event is set and again when the grace
    runs out (`expire()`, when the pool abandons what still runs), so nothing
    has to poll.
    """

    def __init__(self) -> None:
        super().__init__()
        self.expired = False
        self._listeners: dict[object, Callable[[], None]] = {}
        self._listeners_lock = threading.Lock()

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` at set() and at expire(); returns a function that stops it.

        If the event is already set, `callback` runs at once as well, so a
        listener added during a drain is not missed; it may therefore run more
        than once and must be idempotent. It runs on the thread that sets the
        event (the supervisor's), so it must be quick.
        """
        key = object()
        with self._listeners_lock:
            self._listeners[key] = callback
        if self.is_set():
            callback()

        def stop() -> None:
            with self._listeners_lock:
                self._listeners.pop(key, None)

        return stop

    def set(self) -> None:
        super().set()
        self._notify()

    def expire(self) -> None:
        """The grace is over: what still runs is abandoned; listeners stop it by force."""
        self.expired = True
        super().set()
        self._notify()

    def _notify(self) -> None:
        with self._listeners_lock:
            callbacks = list(self._listeners.values())
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one broken listener must not keep the others from stopping
                log.exception("shutdown listener failed")


class JobStop:
    """One running job's stop signal: the shutdown event of a single job, and why it was set.

    The pool makes one per job it starts, so it must cost next to nothing: a
    few slots, and a threading.Event only once something waits on it (a task
    that never sleeps never needs one). `lock` is shared by the pool's jobs;
    a signal of its own gets one. The first `set()` wins: a job asked to stop
    for a cancel keeps that reason when a drain follows.
    """

    __slots__ = ("_event", "_listeners", "_lock", "expired", "reason", "since")

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.reason: StopReason | None = None
        self.since: float | None = None  # time.monotonic() at the set
        self.expired = False  # its grace is over: listeners stop what they started by force
        self._event: threading.Event | None = None
        self._listeners: dict[object, Callable[[], None]] | None = None
        self._lock = lock or threading.Lock()

    def is_set(self) -> bool:
        return self.reason is not None

    def set(self, reason: StopReason = "drain") -> bool:
        """Ask the job to stop; False when it already was (the first reason stays)."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            self.since = time.monotonic()
            event = self._event
        if event is not None:
            event.set()
        self._notify()
        return True

    def expire(self) -> None:
        """The grace is over: listeners end the run by force (SIGKILL to a command's group)."""
        self.set()
        self.expired = True
        self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or `timeout`; True when set, as Event.wait."""
        if self.reason is not None:
            return True
        with self._lock:
            if self.reason is not None:
                return True
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        return event.wait(timeout)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """As ShutdownEvent.listen: called at set() and expire(), at once if already set."""
        key = object()
        with self._lock:
            if self._listeners is None:
                self._listeners = {}
            self._listeners[key] = callback
        if self.reason is not None:
            callback()

        def stop() -> None:
            with self._lock:
                if self._listeners is not None:
                    self._listeners.pop(key, None)

        return stop

    def _notify(self) -> None:
        with self._lock:
            callbacks = list(self._listeners.values()) if self._listeners else []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one broken listener must not keep the others from stopping
                log.exception("stop listener failed")


# What a context's `shutdown` may be: a job's own signal, or (tests, old callers) an Event.
StopSignal = ShutdownEvent | JobStop


def task_logger(
    task: str, job_id: str, base: logging.Logger | None = None
) -> logging.LoggerAdapter[logging.Logger]:
    """A job's logger: `drainpool.task.<task>` (or `base`), its records tagged with job and task."""
    logger = base or logging.getLogger(f"drainpool.task.{task}")
    return logging.LoggerAdapter(logger, {"job_id": job_id, "task": task})


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Handed to every task as its first argument.

    Returning from a task means done: a task that stops early because of the
    event must let `Interrupted` propagate, or its job is acked as completed.
    """

    job_id: str
    attempt: int
    task: str
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    shutdown: threading.Event | JobStop = field(repr=False)  # the job's JobStop in a pool

    @property
    def cancelled(self) -> bool:
        """True once the job was asked to stop: a drain, a cancel of this job, or its time limit."""
        return self.shutdown.is_set()

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the job was asked to stop ("drain", "cancel", "timeout"), None while it runs on.

        Lets a task clean up differently: keep partial work at a drain (it runs
        again), throw it away at a cancel (it never will).
        """
        reason: StopReason | None = getattr(self.shutdown, "reason", None)
        if reason is None and self.shutdown.is_set():
            return "drain"  # a generation-wide event: only a drain sets it
        return reason

    def check(self) -> None:
        """Raise Interrupted if shutdown was requested; a cheap checkpoint for loops."""
        if self.shutdown.is_set():
            raise Interrupted

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`; raise Interrupted the moment shutdown is requested."""
        if self.shutdown.wait(max(seconds, 0.0)):
            raise Interrupted


# For new_context: the pool makes one TaskContext per job (drainpool.queue.base.slot_setters).
_CONTEXT_SETTERS = slot_setters(TaskContext, ("job_id", "attempt", "task", "logger", "shutdown"))


def new_context(
    job_id: str,
    attempt: int,
    task: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    shutdown: JobStop,
) -> TaskContext:
    """TaskContext(...) as the pool makes one per job: the same object, built quicker."""
    set_job_id, set_attempt, set_task, set_logger, set_shutdown = _CONTEXT_SETTERS
    ctx = object.__new__(TaskContext)
    set_job_id(ctx, job_id)
    set_attempt(ctx, attempt)
    set_task(ctx, task)
    set_logger(ctx, logger)
    set_shutdown(ctx, shutdown)
    return ctx
