"""A producer process for the contention test: one enqueue (one transaction) per job.

    python -m tests.support.producer URL COUNT LOG NAME

Enqueues COUNT `record` jobs through the documented producer API,
`Queue.from_url(url).enqueue(...)`, each with the default durable commit, so
several of these at once contend for SQLite's write lock with the daemon as
hard as producers can. Any exception is printed and exits 1.
"""

from __future__ import annotations

import sys

from drainpool.queue import Queue


def main(url: str, count: int, log: str, name: str) -> None:
    queue = Queue.from_url(url)
    try:
        for n in range(count):
            queue.enqueue("record", {"log": log, "producer": name, "n": n})
    finally:
        queue.close()
    print(f"{name}: {count} enqueued")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
