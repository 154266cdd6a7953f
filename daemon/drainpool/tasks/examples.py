"""Example tasks used by the demo config, the tests and the benchmarks.

Each shows one behaviour at a stop: `sleep` and `checksum` cooperate, `fail`
fails on demand, and `stubborn` ignores the event, so it is abandoned at the
grace deadline (its job goes back to the queue and its late result is ignored).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from typing_extensions import TypedDict  # pydantic validates typing's only from Python 3.12

from drainpool.context import TaskContext

BLOCK_SIZE = 1 << 20


def noop(ctx: TaskContext, payload: Any) -> None:
    """Returns at once: measures the daemon's own overhead."""


class SleepRequest(TypedDict, total=False):
    """`sleep`'s payload: typed, so `drainpool enqueue sleep '[1, 2]'` is refused at once."""

    seconds: float


def sleep(ctx: TaskContext, payload: SleepRequest) -> dict[str, float]:
    """Waits `seconds` (default 1) on the shutdown event: interrupted the moment it is set."""
    seconds = float(payload.get("seconds", 1.0))
    ctx.sleep(seconds)
    return {"slept": seconds}


def checksum(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of a file, checking for shutdown between 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(payload["path"], "rb") as f:
        while block := f.read(BLOCK_SIZE):
            ctx.check()
            digest.update(block)
    return {"sha256": digest.hexdigest()}


class DemandedFailure(RuntimeError):
    """The failure `fail` was asked for."""


def fail(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Raises while the attempt is at most `attempts` (default: always)."""
    attempts = payload.get("attempts")
    if attempts is None or ctx.attempt <= int(attempts):
        raise DemandedFailure(payload.get("message", f"failing on demand (attempt {ctx.attempt})"))
    return "succeeded after failing"


def stubborn(ctx: TaskContext, payload: dict[str, Any]) -> str:
    """Sleeps `seconds` without ever checking the event: the case the grace deadline is for."""
    time.sleep(float(payload.get("seconds", 30.0)))
    return "finished late"
