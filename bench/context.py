"""What every scenario gets: sizes for this mode, paths, the results, children, Redis, peers."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import Children, RedisServer
from results import Results

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_VENV = BENCH / ".venv-peers"


class Unavailable(Exception):
    """A scenario's prerequisite is missing here (not a failed measurement)."""


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: the full run and --quick differ only here."""

    reps: int  # repetitions of the daemon's and the baselines' scenarios
    peer_reps: int  # repetitions of the peers' scenarios (the slow ones)
    noop_jobs: int  # no-op jobs per end-to-end run, the same for drainpool and the peers
    sleep_jobs: int  # 10 ms jobs per rate measurement
    depths: tuple[int, ...]  # jobs already queued when the daemon starts
    depth_noop_window: int  # no-op completions measured per run at a depth
    flat_reps: int  # interleaved pairs of short runs at the smallest and largest depth
    hold_seconds: float  # length of the in-flight jobs the SIGTERM scenario interrupts
    settle_seconds: float  # idle time before reading RSS
    tpe_jobs: int
    sqlite_jobs: int
    enqueue_cli_calls: int  # single-job `enqueue` invocations
    enqueue_bulk_jobs: int
    reloads: int
    redis_daemons: tuple[int, ...]  # the later Redis rows: that many daemons on one queue
    retained_records: int  # completed records beside the queued jobs (record flat scaling)
    wait_jobs: int  # jobs a producer waits on, per backend (wait() latency)
    record_size_jobs: int  # no-op jobs per file for SQLite bytes per retained record


FULL = Sizes(
    reps=5,
    peer_reps=3,
    noop_jobs=20_000,
    sleep_jobs=2_000,
    depths=(1_000, 100_000, 1_000_000),
    depth_noop_window=20_000,
    flat_reps=12,
    hold_seconds=30.0,
    settle_seconds=2.0,
    tpe_jobs=100_000,
    sqlite_jobs=50_000,
    enqueue_cli_calls=20,
    enqueue_bulk_jobs=100_000,
    reloads=10,
    redis_daemons=(1, 2, 4),
    retained_records=1_000_000,
    wait_jobs=100,
    record_size_jobs=100_000,
)
QUICK = Sizes(  # a smoke run of every scenario in under a minute, not a measurement
    reps=1,
    peer_reps=1,
    noop_jobs=2_000,
    sleep_jobs=400,
    depths=(1_000, 10_000),
    depth_noop_window=2_000,
    flat_reps=2,
    hold_seconds=1.0,
    settle_seconds=0.5,
    tpe_jobs=10_000,
    sqlite_jobs=5_000,
    enqueue_cli_calls=3,
    enqueue_bulk_jobs=10_000,
    reloads=3,
    redis_daemons=(1, 2),
    retained_records=20_000,
    wait_jobs=10,
    record_size_jobs=5_000,
)


@dataclass
class Context:
    sizes: Sizes
    work: Path  # bench/.work: git-ignored scratch on the same disk as the repo
    results: Results
    children: Children
    quick: bool = False
    accepted_configs: set[str] = field(default_factory=set)  # texts `check-config` accepted
    _redis: RedisServer | None = field(default=None)
    _peers_python: Path | None = field(default=None)

    def redis(self) -> RedisServer:
        """The run's redis-server, started on first use and stopped by `close`."""
        if self._redis is None:
            server = RedisServer(self.children, self.work)
            server.start()
            self._redis = server
        return self._redis

    def peers_python(self) -> Path:
        """bench/.venv-peers' interpreter, creating or refreshing the venv when needed."""
        if self._peers_python is None:
            setup = BENCH / "peers" / "setup.sh"
            log = self.work / "logs" / "peers-setup.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as out:
                done = subprocess.run(
                    ["bash", str(setup)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)},
                    check=False,
                )
            if done.returncode != 0:
                raise Unavailable(f"bench/peers/setup.sh failed (see {log})")
            self._peers_python = PEERS_VENV / "bin" / "python"
        return self._peers_python

    def peers_python_if_ready(self) -> Path | None:
        """The peers' interpreter if this run already set it up (for the report's versions)."""
        return self._peers_python

    def close(self) -> None:
        try:
            if self._redis is not None:
                self._redis.stop()
        finally:
            self.children.kill_all()
