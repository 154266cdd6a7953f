"""A producer process for the wait() latency: enqueue a job, wait on it, note how late it returned.

Run by bench/record_scenarios.py beside a running daemon whose `stamp` task
(bench/drainpool_tasks.py) returns the CLOCK_MONOTONIC time it finished.
Latency = wait() returning here - that time: one clock for every process of
the host, so the figure includes the daemon's settle and the wake-up of the
waiter, nothing of the bench. Prints one JSON object: {"latencies": [...]}.

    python bench/wait_probe.py URL JOBS

The jobs run for spread-out lengths (0 to MAX_SECONDS), one at a time, so a
polling wait meets each end at a different point of its backoff.
"""

from __future__ import annotations

import json
import sys
import time

MAX_SECONDS = 0.3
GOLDEN = 0.6180339887  # steps of the golden ratio spread the lengths evenly over [0, 1)
WAIT_TIMEOUT = 60.0


def job_seconds(i: int) -> float:
    return (i * GOLDEN) % 1.0 * MAX_SECONDS


def main(argv: list[str]) -> int:
    from drainpool.queue import from_url  # the tree under test, from the bench's PYTHONPATH

    url, jobs = argv[0], int(argv[1])
    queue = from_url(url)
    latencies: list[float] = []
    try:
        for i in range(jobs):
            job_id = queue.enqueue("stamp", {"seconds": job_seconds(i)})
            info = queue.wait(job_id, timeout=WAIT_TIMEOUT)
            returned = time.monotonic()
            if not isinstance(info.result, dict) or "finished" not in info.result:
                print(f"job {job_id} ended {info.state} without a stamp: {info}", file=sys.stderr)
                return 1
            latencies.append(returned - float(info.result["finished"]))
    finally:
        queue.close()
    print(json.dumps({"latencies": latencies}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
