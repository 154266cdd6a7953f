"""drainpool's producer for the wake-up scenarios, through the documented Python API.

    python bench/wakeup_producer.py spaced URL N      N stamp jobs, 50-150 ms apart
    python bench/wakeup_producer.py burst URL TASK N  N jobs, one enqueue call each

Prints JSON: {"returned": {seq: time}} or {"started": time, "seconds": s} (CLOCK_MONOTONIC).
Run with PYTHONPATH holding daemon/ and bench/, as the daemon is.
"""

from __future__ import annotations

import json
import sys
import time

from drainpool.queue import Queue
from spaced import spaced_enqueue


def main(argv: list[str]) -> None:
    command, url, *rest = argv
    queue = Queue.from_url(url)
    try:
        if command == "spaced":
            n = int(rest[0])
            returned = spaced_enqueue(n, lambda seq: queue.enqueue("stamp", {"seq": seq}))
            print(json.dumps({"returned": returned}))
        else:
            task, n = rest[0], int(rest[1])
            started = time.monotonic()
            for _ in range(n):
                queue.enqueue(task, {})
            print(json.dumps({"started": started, "seconds": time.monotonic() - started}))
    finally:
        queue.close()


if __name__ == "__main__":
    main(sys.argv[1:])
