"""Cancel latency, and the no-op cost of the per-job stop signal (issue 19).

Latency: from `queue.cancel(id)` returning in a producer to the running task
seeing its stop signal (the task writes time.time() the moment ctx.sleep()
raises). Real daemons (`python -m drainpool run`), one job at a time, on a
SQLite file and on a Redis of its own; with one daemon, and with two daemons
sharing the queue (the job runs on either; the cancel reaches the one holding
it). Reports p50 and p99 per case.

No-op throughput: a Pool (thread kind, 8 workers) on a fresh SQLite file runs
N no-op jobs, in a child process, for this tree and for a baseline tree
without the per-job signal (default /work/main), alternating A/B in the same
run; medians and the ratio.

    python bench/cancel_latency.py [--samples 100] [--noop-jobs 20000] [--reps 3]
        [--baseline /work/main]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
START_TIMEOUT = 60.0
STEP_TIMEOUT = 30.0

TASK = """
import time
from pathlib import Path
from drainpool import Interrupted

def wait_then_stamp(ctx, payload):
    Path(payload["started"]).write_text("1")
    try:
        ctx.sleep(3600)
    except Interrupted:
        Path(payload["stamp"]).write_text(repr(time.time()))
        raise
"""

NOOP_POOL = r"""
import sys, time, json
from drainpool.metrics import Metrics
from drainpool.pool import Pool, PoolConfig
from drainpool.queue.sqlite import SqliteQueue
from drainpool.tasks import TaskSpec
from drainpool.outcomes import Outcome

path, n = sys.argv[1], int(sys.argv[2])
queue = SqliteQueue(path, durable_commits=False, retention_seconds=0)
queue.enqueue_many(("noop", None) for _ in range(n))
spec = TaskSpec("noop", "bench:noop", "function", lambda ctx, payload: None)
config = PoolConfig("default", 8, 5.0, 60.0, 0.05)
pool = Pool(config, 1, {"noop": spec}, queue, Metrics())
started = time.perf_counter()
cpu = time.process_time()
pool.start()
while pool.counts[Outcome.COMPLETED] < n:
    time.sleep(0.005)
seconds = time.perf_counter() - started
cpu = time.process_time() - cpu
pool.begin_drain()
pool.join()
queue.close()
print(json.dumps({"jobs_per_second": n / seconds, "cpu_us_per_job": cpu / n * 1e6}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check, what: str, timeout: float = STEP_TIMEOUT):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.001)  # the bench's own poll of a file; the daemon does not poll


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        wait_for(lambda: _pings(client), "redis-server up")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(client) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def daemons(work: Path, url: str, count: int) -> Iterator[None]:
    config = work / "drainpool.toml"
    config.write_text(
        f'[pool]\nworkers = 1\n[queue]\nurl = "{url}"\npoll_interval_seconds = 0.05\n'
        f'[metrics]\nport = 0\n[log]\nlevel = "WARNING"\n'
        '[tasks]\nstamp = "bench_cancel_task:wait_then_stamp"\n'
    )
    (work / "bench_cancel_task.py").write_text(TASK)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'daemon'}:{work}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "drainpool", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / f"daemon{i}.log", "w"),  # noqa: SIM115
        )
        for i in range(count)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def latencies(work: Path, url: str, daemon_count: int, samples: int) -> list[float]:
    sys.path.insert(0, str(REPO / "daemon"))
    from drainpool.queue import from_url

    measured: list[float] = []
    with daemons(work, url, daemon_count):
        queue = from_url(url, base_dir=work)
        try:
            for n in range(samples + 1):
                started, stamp = work / f"started{n}", work / f"stamp{n}"
                job_id = queue.enqueue("stamp", {"started": str(started), "stamp": str(stamp)})
                timeout = START_TIMEOUT if n == 0 else STEP_TIMEOUT  # the first waits for start
                wait_for(started.exists, f"job {job_id} started", timeout)
                queue.cancel(job_id, by="bench")
                returned = time.time()
                seen = float(wait_for(lambda s=stamp: s.exists() and s.read_text(), "stamp"))
                queue.wait(job_id, STEP_TIMEOUT)
                if n:  # the first sample includes the watch thread's first wake
                    measured.append(seen - returned)
        finally:
            queue.close()
    return measured


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def noop_rate(tree: Path, jobs: int) -> tuple[float, float]:
    """(jobs/s, the child's CPU µs per job: all its threads, less moved by other load)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", NOOP_POOL, str(Path(tmp) / "q.db"), str(jobs)],
            env={**os.environ, "PYTHONPATH": str(tree / "daemon")},
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    found = json.loads(done.stdout.splitlines()[-1])
    return float(found["jobs_per_second"]), float(found["cpu_us_per_job"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--noop-jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"))
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if not args.skip_latency:
        for backend in ("sqlite", "redis"):
            for count in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    with contextlib.ExitStack() as stack:
                        if backend == "redis":
                            url = stack.enter_context(redis_server(work))
                        else:
                            url = f"sqlite:///{work / 'queue.db'}"
                        measured = latencies(work, url, count, args.samples)
                ms = [v * 1000 for v in measured]
                print(
                    f"cancel latency {backend}, {count} daemon(s), {len(ms)} cancels:"
                    f" p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms,"
                    f" max {max(ms):.1f} ms"
                )
    rates: dict[str, list[float]] = {"per-job signal": [], "baseline": []}
    cpus: dict[str, list[float]] = {"per-job signal": [], "baseline": []}
    trees = {"per-job signal": REPO, "baseline": args.baseline}
    for rep in range(args.reps):
        # ABBA: whichever runs first in a pair alternates, so a drift in load favours neither.
        for name in sorted(trees, reverse=rep % 2 == 1):
            rate, cpu = noop_rate(trees[name], args.noop_jobs)
            rates[name].append(rate)
            cpus[name].append(cpu)
    for name, values in rates.items():
        print(f"no-op jobs/s, {name}: " + ", ".join(f"{v:,.0f}" for v in values))
    ratio = statistics.median(rates["per-job signal"]) / statistics.median(rates["baseline"])
    print(f"no-op ratio (median per-job signal / median baseline): {ratio:.3f}")
    for name, values in cpus.items():
        print(f"CPU us per job, {name}: " + ", ".join(f"{v:.1f}" for v in values))
    cpu_ratio = statistics.median(cpus["baseline"]) / statistics.median(cpus["per-job signal"])
    print(f"CPU ratio (median baseline / median per-job signal, per job): {cpu_ratio:.3f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
