"""Running `async def` tasks: one event loop per job, cancelled when the job's stop is set.

An async task waits on its own loop, not on the threading.Event, so the
event reaches it through a listener: the moment the pool sets it, the job's
asyncio task is cancelled at whatever it awaits, and the CancelledError it
raises becomes `Interrupted` (the job is released, its attempt not counted).
A fresh loop per job keeps one task's leftovers (pending callbacks, a
blocked executor) from leaking into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from drainpool.context import Interrupted, JobStop, ShutdownEvent, TaskContext

AsyncHandler = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class AsyncTaskContext(TaskContext):
    """TaskContext for `async def` tasks: `await ctx.sleep(s)` instead of `ctx.sleep(s)`."""

    async def sleep(self, seconds: float) -> None:  # type: ignore[override]
        """Wait up to `seconds`; interrupted the moment shutdown is requested (no polling)."""
        self.check()
        await asyncio.sleep(max(seconds, 0.0))


def run_async(function: AsyncHandler) -> Callable[[TaskContext, Any], Any]:
    """Wrap an `async def (ctx, payload)` task into the pool's `(ctx, payload) -> result`."""

    @functools.wraps(function)
    def handler(ctx: TaskContext, payload: Any) -> Any:
        if not isinstance(ctx.shutdown, ShutdownEvent | JobStop):
            raise TypeError("async tasks need the pool's JobStop to be cancellable")
        actx = AsyncTaskContext(ctx.job_id, ctx.attempt, ctx.task, ctx.logger, ctx.shutdown)
        return asyncio.run(_supervised(function, actx, payload))

    return handler


async def _supervised(function: AsyncHandler, ctx: AsyncTaskContext, payload: Any) -> Any:
    ctx.check()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    shutdown = ctx.shutdown
    assert isinstance(shutdown, ShutdownEvent | JobStop)

    def cancel() -> None:
        # Runs on the supervisor's thread: hand the cancellation to the loop's own thread.
        with contextlib.suppress(RuntimeError):  # a closed loop: the task is already over
            loop.call_soon_threadsafe(task.cancel)

    stop_listening = shutdown.listen(cancel)
    try:
        return await function(ctx, payload)
    except asyncio.CancelledError:
        if shutdown.is_set():
            raise Interrupted from None
        raise  # cancelled by the task's own code: a failure like any other exception
    finally:
        stop_listening()
