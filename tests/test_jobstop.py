"""JobStop, one job's stop signal (issue 19): the first reason wins, waits wake, listeners run."""

from __future__ import annotations

import logging
import threading

import pytest
from drainpool import Interrupted, TaskContext
from drainpool.context import JobStop, ShutdownEvent

from tests.support.waiting import wait_until


def context(stop: JobStop | ShutdownEvent) -> TaskContext:
    return TaskContext("1", 1, "t", logging.getLogger("test"), stop)


def test_the_first_reason_wins_and_the_context_says_it() -> None:
    stop = JobStop()
    ctx = context(stop)
    assert not ctx.cancelled and ctx.stop_reason is None
    ctx.check()
    assert stop.set("cancel") is True
    assert stop.set("drain") is False  # a drain after a cancel: still a cancel
    assert ctx.cancelled and ctx.stop_reason == "cancel" and stop.since is not None
    with pytest.raises(Interrupted):
        ctx.check()
    with pytest.raises(Interrupted):
        ctx.sleep(60)


def test_a_sleeping_task_wakes_at_the_set() -> None:
    stop = JobStop()
    ctx = context(stop)
    woke: list[str | None] = []

    def task() -> None:
        try:
            ctx.sleep(60)
        except Interrupted:
            woke.append(ctx.stop_reason)

    thread = threading.Thread(target=task)
    thread.start()
    wait_until(lambda: stop._event is not None, what="the task waiting on its signal")
    stop.set("timeout")
    thread.join(10)
    assert woke == ["timeout"]


def test_listeners_run_at_set_and_expire_and_at_once_when_late() -> None:
    stop = JobStop()
    calls: list[bool] = []
    stop_listening = stop.listen(lambda: calls.append(stop.expired))
    assert calls == []
    stop.set("cancel")
    stop.expire()
    assert calls == [False, True]
    late: list[bool] = []
    stop.listen(lambda: late.append(True))
    assert late == [True]
    stop_listening()
    stop.expire()
    assert calls == [False, True]  # stopped listening: not called again


def test_a_generation_event_reads_as_a_drain() -> None:
    event = ShutdownEvent()
    ctx = context(event)
    assert ctx.stop_reason is None
    event.set()
    assert ctx.stop_reason == "drain" and ctx.cancelled
