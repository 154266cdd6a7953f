"""Issue 21 on Redis: what an idle round costs, the enqueue's group, and cancels as wake-ups.

Counts come from the server's INFO commandstats (the commands a script runs are
counted too); windows are measured, never assumed, so the bounds hold on a slow
machine as well as on a fast one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis
from drainpool.queue.redis import RedisQueue

from tests.support.daemon import DaemonFactory, base_config
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.test_wakeups import commands

PROMPT = 10.0  # a generous deadline for something announced at once
SAFETY_NET = 1.0  # poll_interval_seconds of the idle daemon: many rounds in a short window
IDLE_WINDOW = 5.0  # seconds of idling whose commands are counted
EXTRA_TASKS = {"other": "tests.support.tasks:record"}  # a second stream for "record"


def test_an_idle_safety_net_round_is_one_script_and_reads_no_clock(
    factory: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    """One fetch per round (it brings the next due time along), nothing more.

    Per round and task the fetch reads the delayed set's head, the expired leases
    and the stream past the last delivered entry (GET, XRANGE): 1 + 4 per task.
    The pool's idle registration for pushes (drainpool.queue.redis_push) costs
    such a round nothing: it stands while nothing changed. Before, a round was
    two scripts (fetch, then the due time) and read TIME. The daemon's pruner
    runs at start and then once a minute: at most one script more.
    """
    config = factory.config(
        queue={"url": redis_server.url, "poll_interval_seconds": SAFETY_NET},
        pool={"workers": 2},
        reload={"watch": False},
        tasks=EXTRA_TASKS,
    )
    tasks = base_config(tmp_path, tasks=EXTRA_TASKS)["tasks"]
    factory.start(config)
    queue = RedisQueue.from_url(redis_server.url)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for task in ("record", "other"):  # streams that exist: the fetch reads each one
            queue.enqueue(task, {"log": str(tmp_path / "jobs.log"), "seconds": 0})
        wait_until(lambda: queue.stats().ready == 0 == queue.stats().leased, PROMPT, "idle")
        before, began = commands(client), time.monotonic()
        threading.Event().wait(IDLE_WINDOW)  # the window is the measurement
        after, window = commands(client), time.monotonic() - began
    finally:
        client.close()
        queue.close()
    spent = {k: n - before.get(k, 0) for k, n in after.items() if k != "cmdstat_info"}
    spent = {k: n for k, n in spent.items() if n}
    rounds = int(window / SAFETY_NET) + 1
    assert 0 < spent.get("cmdstat_evalsha", 0) <= rounds + 1, spent
    assert spent.get("cmdstat_time", 0) <= 1, spent
    prune = 10  # a prune script's own commands, should it fall in the window
    assert sum(spent.values()) <= rounds * (1 + 4 * len(tasks)) + prune + 1, spent  # 1 PING


def test_the_enqueue_makes_the_group_with_the_stream_and_never_again(
    redis_server: RedisServer,
) -> None:
    queue = RedisQueue.from_url(redis_server.url, prefix="grp")
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        first = queue.enqueue("t", 1)  # a new stream: its group is made with it
        created = commands(raw).get("cmdstat_xgroup|create", 0)
        assert created == 1
        ids = [first] + [queue.enqueue("t", n) for n in range(5)]
        queue.enqueue_many([("t", 9)])
        assert commands(raw).get("cmdstat_xgroup|create", 0) == created
        # Gone later (destroyed by hand): the enqueue still does not try; the fetch, told
        # NOGROUP, makes it again, and every job is delivered.
        raw.xgroup_destroy("grp:stream:t", "grp")
        ids.append(queue.enqueue("t", 10))
        assert commands(raw).get("cmdstat_xgroup|create", 0) == created
        fetched = queue.fetch(20, ["t"], 60)
        assert {job.id for job in fetched} >= set(ids)
        assert commands(raw)["cmdstat_xgroup|create"] == created + 1
    finally:
        raw.close()
        queue.close()


def test_a_cancel_of_a_leased_job_reaches_the_waiters_of_its_task_at_once(
    redis_server: RedisServer,
) -> None:
    """Issue 19 on the wake-up channel: a cancel message, which is not work to fetch."""
    queue = RedisQueue.from_url(redis_server.url, prefix="cw")
    waiter = queue.waiter(["t"])
    other = queue.waiter(["u"])
    heard_here: list[str] = []
    heard_there: list[str] = []
    waiter.hear_cancels(heard_here.append)
    other.hear_cancels(heard_there.append)
    try:
        assert waiter.wait(PROMPT) and other.wait(PROMPT)  # armed
        job_id = queue.enqueue("t", 1)
        assert waiter.wait(PROMPT)  # the enqueue: work
        (job,) = queue.fetch(1, ["t"], 60)
        assert queue.cancel(job.id, reason="test").effect.value == "requested"

        def heard() -> list[str]:
            waiter.wait(0.1)  # the waiting thread reads the channel and hears it
            return heard_here

        assert wait_until(heard, PROMPT, "the cancel on the wake-up channel") == [job_id]
        assert not waiter.wait(0.2)  # nothing else came: the cancel woke no fetch
        other.wait(0.2)
        assert heard_there == []  # another task's waiter is not told
        assert queue.cancel_requests([job]) == {job_id}  # the safety net still sees it
        assert waiter.mode == "blocking read"
    finally:
        waiter.close()
        other.close()
        queue.close()
