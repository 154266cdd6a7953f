"""TaskContext: check() and sleep() turn the shutdown event into Interrupted."""

from __future__ import annotations

import logging
import threading

import pytest
from drainpool import Interrupted, TaskContext


def make_ctx() -> TaskContext:
    return TaskContext("7", 2, "t", logging.getLogger("t"), threading.Event())


def test_check_raises_only_once_shutdown_is_set() -> None:
    ctx = make_ctx()
    ctx.check()
    assert not ctx.cancelled
    ctx.shutdown.set()
    assert ctx.cancelled
    with pytest.raises(Interrupted):
        ctx.check()


def test_sleep_wakes_on_the_event_itself() -> None:
    ctx = make_ctx()
    outcome: list[str] = []

    def task() -> None:
        try:
            ctx.sleep(3600)  # an hour: only the event can end this within the test's timeout
            outcome.append("slept")
        except Interrupted:
            outcome.append("interrupted")

    worker = threading.Thread(target=task)
    worker.start()
    ctx.shutdown.set()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert outcome == ["interrupted"]


def test_interrupted_escapes_a_broad_except_exception() -> None:
    ctx = make_ctx()
    ctx.shutdown.set()
    with pytest.raises(Interrupted):
        try:
            ctx.sleep(1)
        except Exception:  # a task's catch-all must not swallow the stop request
            pytest.fail("Interrupted was caught as an Exception")


def test_context_carries_job_identity() -> None:
    ctx = make_ctx()
    assert (ctx.job_id, ctx.attempt, ctx.task) == ("7", 2, "t")


def test_the_pools_quick_builders_make_the_same_frozen_objects() -> None:
    # new_context and done_with skip the generated __init__ (issue 17): what they make must
    # be equal to what the class makes, and as frozen.
    from dataclasses import FrozenInstanceError

    from drainpool.context import JobStop, new_context
    from drainpool.queue.base import Done, done_with, fetched_job

    stop = JobStop()
    logger = logging.LoggerAdapter(logging.getLogger("t"), {"job_id": "7", "task": "t"})
    ctx = new_context("7", 2, "t", logger, stop)
    assert ctx == TaskContext("7", 2, "t", logger, stop)
    job = fetched_job("7", "t", {"n": 1}, 2, "tok", 1.5, None, {})
    done = done_with(job, "null", "")
    assert done == Done(job, "null", "")
    with pytest.raises(FrozenInstanceError):
        ctx.job_id = "8"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        done.note = "x"  # type: ignore[misc]
