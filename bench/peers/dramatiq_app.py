"""dramatiq on Redis running the peers' jobs (run from bench/.venv-peers).

Worker: `python -m dramatiq --processes 1 --threads 8 dramatiq_app` (the issue's
1 process x 8 threads); everything else at dramatiq's defaults.
"""

from __future__ import annotations

import os

import dramatiq
import jobs
from dramatiq.brokers.redis import RedisBroker

QUEUE = "default"
broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
ACTORS = {
    name: dramatiq.actor(fn, actor_name=name, queue_name=QUEUE) for name, fn in jobs.JOBS.items()
}


def enqueue(task: str, n: int, args: list[float]) -> None:
    actor = ACTORS[task]
    for _ in range(n):
        actor.send(*args)


def pending() -> int:
    """Messages a worker would still run: queued, or unacked in a (dead) worker's ack set.

    dramatiq keeps every message body in the hash `<ns>:<queue>.msgs` until it is
    acked, and requeues the ack sets of workers whose heartbeat stopped.
    """
    return int(broker.client.hlen(f"{broker.namespace}:{QUEUE}.msgs"))
