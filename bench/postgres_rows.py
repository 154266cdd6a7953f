"""drainpool on PostgreSQL (issue 22): jobs/s with 1, 2, 4 daemons, and pickup latency.

The cluster is Debian's PostgreSQL 15 (scripts/setup-dev installs it), created
by initdb in bench/.work for the run and stopped by its pid at the end; under
root it runs as the `postgres` user, which PostgreSQL requires, in a
directory of its own. fsync stays on: these are the rates of a durable queue.
Completion is counted as in the Redis rows (one INCR per job, the peers' way),
so several daemons can share one count. Each run gets a fresh `queue.schema`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from context import Context
from drainpool_cli import Drainpool, config_text, jobs_file, shared_queue_rate, wait_done
from harness import BenchError, Inbox, free_port
from results import Metric

SECTION = "drainpool"
WORKERS = 8
BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PICKUPS = 10  # single jobs enqueued into an idle daemon


class BenchPostgres:
    """One postmaster on a free loopback port, trust authentication, stopped by pid."""

    def __init__(self, work: Path) -> None:
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user is None:
            self.dir = work / "postgres"
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
        else:  # the postgres user cannot enter root's 0700 directories
            self.dir = Path(tempfile.mkdtemp(prefix="drainpool-bench-pg-"))
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_user(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def url(self) -> str:
        return f"postgresql://bench@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if not (BIN_DIR / "postgres").exists():
            raise BenchError(f"{BIN_DIR}/postgres is missing: apt-get install postgresql")
        data = self.dir / "data"
        subprocess.run(
            [str(BIN_DIR / "initdb"), "-D", str(data), "-U", "bench", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            cwd=self.dir,
            **self._as_user(),  # type: ignore[arg-type]
        )
        log = (self.dir / "postgres.log").open("wb")
        argv = [str(BIN_DIR / "postgres"), "-D", str(data), "-p", str(self.port),
                "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
                "-c", "max_connections=200"]  # fmt: skip
        with log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **self._as_user(),  # type: ignore[arg-type]
            )
        import psycopg

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"postgres exited at start (see {self.dir}/postgres.log)")
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.url()):
                return
            time.sleep(0.05)  # readiness poll, with a deadline
        raise BenchError("postgres did not accept connections within 30 s")

    def version(self) -> str:
        out = subprocess.run([str(BIN_DIR / "postgres"), "--version"], capture_output=True)
        return out.stdout.decode().strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.user is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def config(ctx: Context, server: BenchPostgres, task: str, schema: str, name: str = "job") -> str:
    text = config_text({name: task}, workers=WORKERS, url=server.url())
    return text.replace("[queue]\n", f'[queue]\nschema = "{schema}"\n', 1)


def run_daemons(
    ctx: Context, server: BenchPostgres, task: str, n: int, count: int, schema: str
) -> float:
    """`count` daemons on `n` queued jobs of `task`, a fresh schema: jobs/s, start to last done."""
    redis = ctx.redis()
    redis.flush()
    directory = ctx.work / "postgres-runs" / schema
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    dp = Drainpool(ctx, directory, config(ctx, server, task, schema))
    dp.check()
    dp.enqueue_file(jobs_file(ctx, "job", n))
    return shared_queue_rate(ctx, dp, n, count, 60 + n / 50)


def _rates(ctx: Context, server: BenchPostgres) -> None:
    s = ctx.sizes
    for label, task, n in (
        ("no-op", "noop_incr", s.noop_jobs),
        ("10 ms", "sleep_10ms_incr", s.sleep_jobs),
    ):
        for count in (1, 2, 4):
            for rep in range(s.reps):
                rate = run_daemons(ctx, server, task, n, count, f"bench_{task}_{count}_{rep}")
                ctx.results.add(
                    Metric(
                        f"postgres.{'noop' if task == 'noop_incr' else 'sleep'}.{count}",
                        SECTION,
                        f"{label} + INCR on PostgreSQL, {count} daemon(s) x {WORKERS} workers,"
                        " start to last done",
                        "jobs/s",
                    ),
                    rate,
                )


def _pickup(ctx: Context, server: BenchPostgres) -> None:
    """An idle daemon (poll_interval_seconds 0.2): enqueue commit to the job's completion."""
    from drainpool.queue.postgres import PostgresQueue

    schema = "bench_pickup"
    directory = ctx.work / "postgres-runs" / schema
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    dp = Drainpool(ctx, directory, config(ctx, server, "noop", schema))
    dp.check()
    queue = PostgresQueue.from_url(server.url(), schema=schema)
    notify, events = Inbox("pgpick-notify"), Inbox("pgpick-events")
    child = None
    try:
        child = dp.start(notify, events=events, expect=PICKUPS, report_every=1)
        dp.wait_ready(child, notify, since=0)
        for k in range(1, PICKUPS + 1):
            time.sleep(0.05 + 0.037 * k)  # a different phase of the poll each time
            queue.enqueue("job", {})
            committed = time.monotonic()
            done = wait_done(events, child, k, timeout=30)
            ctx.results.add(
                Metric(
                    "postgres.pickup",
                    SECTION,
                    "pickup on an idle daemon, enqueue commit to done",
                    "ms",
                    1,
                ),
                (done - committed) * 1000,
            )
    finally:
        queue.close()
        if child is not None:
            dp.stop(child)
        notify.close()
        events.close()


def postgres_rows(ctx: Context) -> None:
    """1, 2, 4 daemons on one PostgreSQL (no-op and 10 ms), and the pickup latency."""
    server = BenchPostgres(ctx.work)
    try:
        server.start()
        _rates(ctx, server)
        _pickup(ctx, server)
    finally:
        server.stop()
