"""Async tasks: an `async def` task runs on its own loop and is cancelled by the shutdown event."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from drainpool import Interrupted, TaskContext
from drainpool.context import ShutdownEvent
from drainpool.tasks.asyncrun import run_async

from tests.support.daemon import DaemonFactory, queue_stats
from tests.support.joblog import count, events
from tests.support.procs import assert_nothing_left, descendants, new_marker
from tests.support.waiting import wait_until
from tests.test_e2e_stop import enqueue_jobs, generation_counts


def make_ctx(shutdown: ShutdownEvent) -> TaskContext:
    return TaskContext("1", 1, "t", logging.getLogger("t"), shutdown)


def test_listeners_run_at_set_and_at_expire_and_when_added_late() -> None:
    shutdown = ShutdownEvent()
    calls: list[str] = []
    stop = shutdown.listen(lambda: calls.append("early"))
    shutdown.set()
    assert calls == ["early"]
    shutdown.listen(lambda: calls.append("late"))  # added after set(): called at once
    assert calls == ["early", "late"]
    stop()
    shutdown.expire()
    assert shutdown.expired and calls == ["early", "late", "late"]


def test_await_ctx_sleep_is_cancelled_by_the_event_from_another_thread() -> None:
    shutdown = ShutdownEvent()
    awaiting = threading.Event()

    async def task(ctx: Any, payload: Any) -> str:
        awaiting.set()
        await ctx.sleep(3600)  # an hour: only the cancellation can end it within the timeout
        return "slept"

    outcome: list[str] = []

    def worker() -> None:
        try:
            outcome.append(run_async(task)(make_ctx(shutdown), {}))
        except Interrupted:
            outcome.append("interrupted")

    thread = threading.Thread(target=worker)
    thread.start()
    assert awaiting.wait(30)
    shutdown.set()
    thread.join(30)
    assert outcome == ["interrupted"]


def test_a_cancellation_of_its_own_is_a_failure_not_an_interruption() -> None:
    async def task(ctx: Any, payload: Any) -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(0)

    with pytest.raises(asyncio.CancelledError):
        run_async(task)(make_ctx(ShutdownEvent()), {})


def test_result_and_started_after_shutdown() -> None:
    async def task(ctx: Any, payload: Any) -> dict:
        await ctx.sleep(0)
        return {"got": payload}

    assert run_async(task)(make_ctx(ShutdownEvent()), 5) == {"got": 5}
    stopped = ShutdownEvent()
    stopped.set()
    with pytest.raises(Interrupted):
        run_async(task)(make_ctx(stopped), 5)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_async_task_interrupted_at_an_await_by_sigterm(
    factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(
        pool={"workers": 2, "kind": kind}, tasks={"arecord": "tests.support.tasks:async_record"}
    )
    jobs = [
        {"task": "arecord", "payload": {"log": str(log), "seconds": 0}},
        {"task": "arecord", "payload": {"log": str(log), "seconds": 3600}},
    ]
    enqueue_jobs(factory, config, jobs)
    marker, env = new_marker()
    daemon = factory.start(config, env=env)
    wait_until(lambda: count(log, "done") == {"1": 1}, what="the short job completed")
    wait_until(lambda: count(log, "start").get("2"), what="the long job awaits")
    seen = descendants(daemon.pid)
    daemon.terminate()
    # The CancelledError arrived at the await inside the task, which saw it and let it go.
    assert ("interrupted", "2", "CancelledError") in events(log)
    counts = generation_counts(daemon.log())
    assert (counts["completed"], counts["interrupted"], counts["abandoned"]) == (1, 1, 0)
    stats = queue_stats(factory, config)
    assert (stats["ready"], stats["leased"], stats["dead"]) == (1, 0, 0)
    assert_nothing_left(seen.values(), marker)
