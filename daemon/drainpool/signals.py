"""Signal handlers that only hand the signal number to the supervisor's inbox.

Why so little: a handler runs on the main thread between two bytecodes, maybe
while that thread holds a lock. Logging or Event.set() there can deadlock
(cpython gh-121649, gh-126434). SimpleQueue.put_nowait is documented as
reentrant, so it is the one safe thing to do; the supervisor's loop decides.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from queue import SimpleQueue
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@contextlib.contextmanager
def forward_signals(inbox: SimpleQueue[object]) -> Iterator[None]:
    """Install the handlers (main thread only) and restore the previous ones on exit."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        inbox.put_nowait(signum)  # no lock, no log, no Event.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
