"""Latency of bursts of concurrent GETs of /metrics and /healthz while a console tab polls.

Starts the daemon (an idle SQLite pool, port 0), a thread that polls what the
console polls (its four GETs every REFRESH seconds), then ROUNDS bursts of
CLIENTS parallel GETs of /metrics and CLIENTS of /healthz, each on its own
connection, all released together. Prints p50 and p99 per path for each of
RUNS runs (a fresh daemon each) and their medians:

    python bench/http_concurrency.py [--runs 3] [--daemon-src DIR]

--daemon-src runs another tree's daemon (e.g. /work/main/daemon, for the figure
before a change). Not part of bench/run.py: reported by hand in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 50
ROUNDS = 10
REFRESH = 2.0  # the console's refresh (console.js REFRESH_MS)
CONSOLE_GETS = ("/api/status", "/api/queue", "/api/outcomes?limit=30", "/api/dead?limit=100")
PATHS = ("/metrics", "/healthz")
CONFIG = """\
[pool]
workers = 4
[queue]
url = "sqlite:///queue.db"
[metrics]
host = "127.0.0.1"
port = 0
[reload]
watch = false
[tasks]
noop = "drainpool.tasks.examples:noop"
"""


TIMEOUT = 60.0  # a GET not answered by then counts as unanswered


def get(url: str) -> float:
    """Seconds to a whole 200 answer; inf when none came (an error, or TIMEOUT)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            response.read()
            if response.status != 200:
                return math.inf
    except OSError:
        return math.inf
    return time.perf_counter() - started


def burst(base: str) -> dict[str, list[float]]:
    """CLIENTS GETs of each path, released together by a barrier."""
    gate = threading.Barrier(CLIENTS * len(PATHS))
    times: dict[str, list[float]] = {path: [] for path in PATHS}

    def client(path: str) -> None:
        gate.wait()
        times[path].append(get(base + path))

    threads = [
        threading.Thread(target=client, args=(path,)) for path in PATHS for _ in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def console_tab(base: str, stop: threading.Event) -> None:
    while not stop.is_set():
        for path in CONSOLE_GETS:
            get(base + path)
        stop.wait(REFRESH)


def one_run(daemon_src: Path) -> dict[str, tuple[float, float, int]]:
    """(p50, p99, unanswered) in seconds per path, over ROUNDS bursts against a fresh daemon."""
    with tempfile.TemporaryDirectory(prefix="drainpool-http-") as tmp:
        config = Path(tmp) / "drainpool.toml"
        config.write_text(CONFIG)
        log_path = Path(tmp) / "daemon.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRAINPOOL_", "NOTIFY_"))}
        env["PYTHONPATH"] = str(daemon_src)
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "drainpool", "run", "--config", str(config)],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            base = f"http://127.0.0.1:{wait_port(log_path, daemon)}"
            stop = threading.Event()
            tab = threading.Thread(target=console_tab, args=(base, stop), daemon=True)
            tab.start()
            times: dict[str, list[float]] = {path: [] for path in PATHS}
            for _ in range(ROUNDS):
                for path, seconds in burst(base).items():
                    times[path].extend(seconds)
            stop.set()
            tab.join(30)
        finally:
            daemon.terminate()
            daemon.wait(30)
    return {path: percentiles(seconds) for path, seconds in times.items()}


def wait_port(log_path: Path, daemon: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"metrics on http://[^:]+:(\d+)/metrics", log_path.read_text())
        if match:
            return int(match.group(1))
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited: {log_path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError("the daemon did not say its port within 30 s")


def percentiles(seconds: list[float]) -> tuple[float, float, int]:
    """p50, p99 (inf when over 1 % went unanswered) and how many went unanswered."""
    ordered = sorted(seconds)

    def rank(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return rank(0.50), rank(0.99), sum(1 for s in ordered if math.isinf(s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--daemon-src", type=Path, default=REPO / "daemon")
    args = parser.parse_args()
    runs = []
    for n in range(1, args.runs + 1):
        result = one_run(args.daemon_src)
        runs.append(result)
        figures = ", ".join(
            f"{path} p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms, {lost} unanswered"
            for path, (p50, p99, lost) in result.items()
        )
        print(f"run {n}: {figures}", flush=True)
    for path in PATHS:
        p50 = statistics.median(run[path][0] for run in runs)
        p99 = statistics.median(run[path][1] for run in runs)
        print(
            f"median of {args.runs} runs: {path} p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
