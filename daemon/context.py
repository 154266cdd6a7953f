"""What a running task sees of the daemon: its job, a logger, and the shutdown event.

Interruption is cooperative because Python cannot kill a thread: the pool sets
the generation's event, and every `check()` or `sleep()` turns it into
`Interrupted`. Waiting is `Event.wait`, so a task wakes the moment the event is
set, with no polling interval to tune.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field


class Interrupted(BaseException):
    """Raised by `TaskContext.check()` and `.sleep()` once shutdown is requested.

    A BaseException, like asyncio.CancelledError, so that a task's broad
    `except Exception:` does not swallow the request to stop.
    """


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
