"""celery on Redis running the peers' jobs (run from bench/.venv-peers).

Worker: `python -m celery -A celery_app worker -P threads -c 8 --without-mingle
--without-gossip --without-heartbeat` (8 threads; the three flags only skip
cluster chatter that a single worker does not need); defaults otherwise, so
tasks are acked early and a warm shutdown waits for the running ones.
"""

from __future__ import annotations

import os

import jobs
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,  # no result backend: the peers count completions in Redis
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
QUEUE = "celery"  # the default queue's Redis list
TASKS = {name: app.task(name=name)(fn) for name, fn in jobs.JOBS.items()}


def enqueue(task: str, n: int, args: list[float]) -> None:
    fn = TASKS[task]
    for _ in range(n):
        fn.delay(*args)


def pending() -> int:
    """Messages still in the queue list, plus those kombu holds unacked for redelivery."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        return int(client.llen(QUEUE)) + int(client.hlen("unacked"))
