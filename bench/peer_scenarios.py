"""The peers (dramatiq, huey, celery) on the same bodies, against the run's Redis on loopback.

Each peer's worker runs as a child from bench/.venv-peers; bench/peers/peerctl.py
enqueues and inspects from that venv too, so the bench's own interpreter never
imports a peer. Protocol, as in the issue: jobs are enqueued first, then the
worker is started; a rate runs from the worker's start to the last completion,
counted by one Redis INCR per job (bench/completion.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

from completion import DONE_KEY, STARTED_KEY, wait_finished
from context import BENCH, Context
from harness import BenchError, Child, run_checked, tree_rss_mib
from results import Metric

SECTION = "peers"
HELD = 8  # jobs in flight when SIGTERM arrives


@dataclass(frozen=True)
class Peer:
    name: str
    worker: tuple[str, ...]  # argv after the venv's python


PEERS = {
    "dramatiq": Peer(
        "dramatiq", ("-m", "dramatiq", "--processes", "1", "--threads", "8", "dramatiq_app")
    ),
    "huey": Peer(
        "huey", ("-m", "huey.bin.huey_consumer", "huey_app.huey", "-w", "8", "-k", "thread")
    ),
    "celery": Peer(
        "celery",
        (
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-P",
            "threads",
            "-c",
            "8",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ),
    ),
}


class PeerRunner:
    """Enqueue, start, count and stop one peer, all through its venv."""

    def __init__(
        self, ctx: Context, peer: Peer, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.ctx = ctx
        self.peer = peer
        self.extra_env = dict(extra_env or {})  # BENCH_PG_URL for the PostgreSQL peers
        self.python = str(ctx.peers_python())
        self.redis = ctx.redis()
        self.cwd = ctx.work / "peers" / peer.name
        self.cwd.mkdir(parents=True, exist_ok=True)

    def env(self, expect: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BENCH_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(BENCH / "peers")])
        env["BENCH_REDIS_URL"] = self.redis.url
        env["BENCH_EXPECT"] = str(expect)
        env.update(self.extra_env)
        return env

    def ctl(self, *args: str) -> dict[str, float]:
        argv = [self.python, str(BENCH / "peers" / "peerctl.py"), *args]
        return json.loads(run_checked(argv, env=self.env(), cwd=self.cwd))

    def enqueue(self, task: str, n: int, *args: float) -> float:
        """Flush Redis, then enqueue `n` jobs; the seconds the enqueue loop took."""
        self.redis.flush()
        return self.ctl("enqueue", self.peer.name, task, str(n), *map(str, args))["seconds"]

    def pending(self) -> int:
        return int(self.ctl("pending", self.peer.name)["pending"])

    def start(self, expect: int) -> Child:
        argv = [self.python, *self.peer.worker]
        return self.ctx.children.start(self.peer.name, argv, env=self.env(expect), cwd=self.cwd)

    def finish(self, child: Child, n: int) -> float:
        """The monotonic time of the n-th completion (BENCH_EXPECT = n)."""
        finished = wait_finished(self.redis.client, child.alive, 120 + n / 50)
        if finished is None:
            raise BenchError(
                f"{self.peer.name} did not finish {n} jobs "
                f"(done {self.count(DONE_KEY)}):\n{child.tail()}"
            )
        return finished

    def count(self, key: str) -> int:
        return int(self.redis.client.get(key) or 0)

    def discard(self, child: Child) -> None:
        """Kill a worker whose figures are taken: the next enqueue flushes Redis anyway, and
        a graceful stop of an idle dramatiq takes over a second, time the run does not need."""
        self.ctx.children.kill(child)


def _metric(
    peer: str, key: str, label: str, unit: str, digits: int = 0, section: str = SECTION
) -> Metric:
    return Metric(f"{peer}.{key}", section, f"{peer}: {label}", unit, digits)


def run_peer(ctx: Context, name: str) -> None:
    """No-op and 10 ms rates, SIGTERM with 8 jobs running, idle RSS: one peer."""
    s = ctx.sizes
    runner = PeerRunner(ctx, PEERS[name])
    ctx.results.note(name, "worker: python " + " ".join(PEERS[name].worker))
    for _ in range(s.peer_reps):
        rates = (("noop", s.noop_jobs, "no-op"), ("sleep_10ms", s.sleep_jobs, "10 ms"))
        for task, n, label in rates:
            took = runner.enqueue(task, n)
            if task == "noop":
                ctx.results.add(
                    _metric(name, "enqueue", "enqueue, one call per job", "jobs/s"), n / took
                )
            child = runner.start(expect=n)
            try:
                done = runner.finish(child, n)
            finally:
                runner.discard(child)
            key = "noop" if task == "noop" else "10ms"
            ctx.results.add(
                _metric(name, key, f"{label}, worker start to last done ({n:,} jobs)", "jobs/s"),
                n / (done - child.started_at),
            )
        sigterm_fate(ctx, runner)
        _idle(ctx, runner)


def sigterm_fate(ctx: Context, runner: PeerRunner, section: str = SECTION) -> None:
    """SIGTERM with HELD jobs running: time to exit, and each job finished, back, or lost."""
    s = ctx.sizes
    name = runner.peer.name
    runner.enqueue("hold", HELD, s.hold_seconds)
    child = runner.start(expect=0)
    try:
        deadline = time.monotonic() + 60
        while runner.count(STARTED_KEY) < HELD:
            if time.monotonic() > deadline or not child.alive():
                raise BenchError(f"{name}: {HELD} jobs did not start:\n{child.tail()}")
            time.sleep(0.02)  # readiness poll with a deadline, not a measurement
        sent = child.signal(signal.SIGTERM)
        exited = child.wait_exit(s.hold_seconds + 60)
        if exited is None:
            raise BenchError(f"{name} still running {s.hold_seconds + 60:.0f} s after SIGTERM")
    finally:
        runner.discard(child)
    completed = runner.count(DONE_KEY)
    back = runner.pending()
    ctx.results.add(
        _metric(
            name, "sigterm.exit", f"SIGTERM to exit, {HELD} jobs running", "s", 3, section=section
        ),
        exited - sent,
    )
    ctx.results.add(
        _metric(
            name,
            "sigterm.completed",
            f"of {HELD}, finished during the stop",
            "jobs",
            section=section,
        ),
        completed,
    )
    ctx.results.add(
        _metric(name, "sigterm.back", f"of {HELD}, back in the queue", "jobs", section=section),
        back,
    )
    ctx.results.add(
        _metric(name, "sigterm.lost", f"of {HELD}, lost", "jobs", section=section),
        max(HELD - completed - back, 0),
    )
    ctx.results.note(
        name,
        f"SIGTERM scenario: each in-flight job is time.sleep({s.hold_seconds:g})"
        f"; exit code {child.popen.returncode}",
    )


def _idle(ctx: Context, runner: PeerRunner) -> None:
    """Idle RSS: one job queued, the worker started, its completion, a settle, then /proc."""
    s = ctx.sizes
    name = runner.peer.name
    runner.enqueue("noop", 1)
    child = runner.start(expect=1)
    try:
        first = runner.finish(child, 1)
        time.sleep(s.settle_seconds)  # deliberately idle: RSS after settling
        rss, procs = tree_rss_mib(child.pid)
    finally:
        runner.discard(child)
    ctx.results.add(
        _metric(name, "start_to_first", "start to first job done (1 queued)", "s", 3),
        first - child.started_at,
    )
    ctx.results.add(
        _metric(name, "idle_rss", f"idle RSS, {s.settle_seconds:g} s after one job", "MiB", 1), rss
    )
    ctx.results.note(name, f"RSS summed over {procs} process(es)")
