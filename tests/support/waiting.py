"""Wait for a condition with a deadline: the one poll loop of the test suite.

Tests never sleep a fixed time as a check; they wait for what they expect and
fail with what they waited for once the deadline has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

DEFAULT_TIMEOUT = 30.0  # seconds: generous, the machine is shared and noisy

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    every: float = 0.2,
) -> T:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`.

    Returns that value. The pause grows from 10 ms to `every` (raise it for
    costly checks, such as a command run inside a container; lower it for a
    condition that must be seen soon after it holds). A predicate may raise to
    end the wait early (the process it waits on has exited, say).
    """
    deadline = time.monotonic() + timeout
    pause = min(0.01, every)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(pause)  # pacing between polls, not the check
        pause = min(pause * 1.5, every)
