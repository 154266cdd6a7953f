"""Reading the daemon's SIGUSR1 state dump out of its text log.

The dump is the daemon's own window on what every thread is doing; the tests
use it to wait for a thread to reach a given call (for instance the dispatcher
blocked in the queue's fetch) instead of guessing with a sleep.
"""

from __future__ import annotations

import re

from tests.support.daemon import Daemon
from tests.support.waiting import wait_until

_FRAME = re.compile(r'File "[^"]+", line \d+, in (\w+)')


def state_dumps(log: str) -> list[str]:
    """Every dump in a text log, each from its "state dump:" line to the next log record."""
    dumps = []
    for match in re.finditer(r"state dump: ", log):
        rest = log[match.start() :]
        # A dump's own lines are indented; the next record starts with a timestamp.
        end = re.search(r"\n(?=\d{4}-\d\d-\d\d )", rest)
        dumps.append(rest[: end.start()] if end else rest)
    return dumps


def thread_functions(dump: str, thread: str) -> list[str]:
    """Function names on `thread`'s stack in a dump, outermost first ([] if absent)."""
    block = re.search(rf"^  thread {re.escape(thread)}:\n((?:    .*\n?)*)", dump, re.M)
    return _FRAME.findall(block.group(1)) if block else []


def dump_now(daemon: Daemon) -> str:
    """Send SIGUSR1 and return the dump it produced."""
    import signal

    before = len(state_dumps(daemon.log()))
    daemon.signal(signal.SIGUSR1)
    wait_until(lambda: len(state_dumps(daemon.log())) > before, what="a new state dump")
    # Later records may not be written yet, but the dump is one write: it is complete.
    return state_dumps(daemon.log())[before]
