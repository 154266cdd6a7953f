"""What a running task sees of the daemon: its job, a logger, and the shutdown event.

Interruption is cooperative because Python cannot kill a thread: the pool sets
the generation's event, and every `check()` or `sleep()` turns it into
`Interrupted`. Waiting is `Event.wait`, so a task wakes the moment the event is
set, with no polling interval to tune.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("drainpool.context")


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
    shutdown: threading.Event = field(repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the pool asked running tasks to stop."""
        return self.shutdown.is_set()

    def check(self) -> None:
        """Raise Interrupted if shutdown was requested; a cheap checkpoint for loops."""
        if self.shutdown.is_set():
            raise Interrupted

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`; raise Interrupted the moment shutdown is requested."""
        if self.shutdown.wait(max(seconds, 0.0)):
            raise Interrupted
