"""drainpool on PostgreSQL against procrastinate and pgqueuer: one database, one run (issue 22).

The same cluster (postgres_rows.BenchPostgres, fsync on) serves all three; each
system has its own tables (drainpool a fresh `queue.schema` per run, the peers
their own tables, emptied before each enqueue). The bodies are bench/bodies.py
and every completion is one Redis INCR, for drainpool (`noop_incr`,
`sleep_10ms_incr`) as for the peers (bench/peers/jobs.py), so the rate compares
the frameworks, not the work or the counting. Jobs are enqueued first (each
system's bulk call), then one worker with 8 threads is started; the rate runs
from its start to the last completion. The order of the three rotates from one
repetition to the next, so a load change on a shared machine is spread over all.

SIGTERM: 8 `hold` jobs running (drainpool's through ctx.sleep, the peers' in
time.sleep: they have no cooperative hook), then SIGTERM; each job is finished,
back in the queue (would run again with no operator), or lost.
"""

from __future__ import annotations

import signal

from context import Context
from drainpool_cli import Drainpool, jobs_file
from drainpool_scenarios import wait_started
from harness import BenchError, Inbox
from peer_scenarios import HELD, Peer, PeerRunner, sigterm_fate
from postgres_rows import BenchPostgres, config, run_daemons
from results import Metric

SECTION = "postgres"
DRAINPOOL = "drainpool-postgres"
PEERS = {
    "procrastinate": Peer("procrastinate", ("-m", "procrastinate_app")),
    "pgqueuer": Peer("pgqueuer", ("-m", "pgqueuer_app")),
}
SYSTEMS = (DRAINPOOL, *PEERS)
RATES = (("noop", "noop_incr", "no-op"), ("10ms", "sleep_10ms_incr", "10 ms"))


def _metric(system: str, key: str, label: str, unit: str, digits: int = 0) -> Metric:
    return Metric(f"{system}.{key}", SECTION, f"{system}: {label}", unit, digits)


def _rate(
    ctx: Context,
    server: BenchPostgres,
    runners: dict[str, PeerRunner],
    system: str,
    key: str,
    rep: int,
) -> float:
    task = dict((k, t) for k, t, _ in RATES)[key]
    n = ctx.sizes.noop_jobs if key == "noop" else ctx.sizes.sleep_jobs
    if system == DRAINPOOL:
        return run_daemons(ctx, server, task, n, 1, f"peers_{key}_{rep}")
    runner = runners[system]
    runner.enqueue(task.removesuffix("_incr"), n)
    child = runner.start(expect=n)
    try:
        done = runner.finish(child, n)
    finally:
        runner.discard(child)
    return n / (done - child.started_at)


def _drainpool_sigterm(ctx: Context, server: BenchPostgres, rep: int) -> None:
    """As sigterm_fate, for the daemon: its hold jobs report by datagram, its queue by stats."""
    s = ctx.sizes
    schema = f"peers_sigterm_{rep}"
    directory = ctx.work / "postgres-runs" / schema
    directory.mkdir(parents=True, exist_ok=True)
    dp = Drainpool(ctx, directory, config(ctx, server, "hold", schema, name="hold"))
    dp.check()
    dp.enqueue_file(jobs_file(ctx, "hold", HELD, {"seconds": s.hold_seconds}))
    notify, events = Inbox("pgpeers-notify"), Inbox("pgpeers-events")
    try:
        child = dp.start(notify, events=events)
        try:
            dp.wait_ready(child, notify, since=0)
            wait_started(events, child, HELD)
            sent = child.signal(signal.SIGTERM)
            exited = child.wait_exit(s.hold_seconds + 60)
            if exited is None:
                raise BenchError(
                    f"drainpool still running {s.hold_seconds + 60:.0f} s after SIGTERM"
                )
        finally:
            code = dp.stop(child)
        completed = sum(m.text.startswith("done ") for m in events.messages())
    finally:
        notify.close()
        events.close()
    left = dp.stats()
    back = left["ready"] + left["delayed"] + left["leased"]
    for key, label, unit, value in (
        ("sigterm.exit", f"SIGTERM to exit, {HELD} jobs running", "s", exited - sent),
        ("sigterm.completed", f"of {HELD}, finished during the stop", "jobs", completed),
        ("sigterm.back", f"of {HELD}, back in the queue", "jobs", back),
        ("sigterm.lost", f"of {HELD}, lost", "jobs", max(HELD - completed - back, 0)),
    ):
        ctx.results.add(_metric(DRAINPOOL, key, label, unit, 3 if unit == "s" else 0), value)
    ctx.results.note(
        DRAINPOOL, f"SIGTERM: each in-flight job is ctx.sleep({s.hold_seconds:g}); exit code {code}"
    )


def postgres_peers(ctx: Context) -> None:
    """No-op and 10 ms jobs/s and the SIGTERM fate: drainpool, procrastinate, pgqueuer."""
    server = BenchPostgres(ctx.work)
    try:
        server.start()
        ctx.peers_python()  # set up (or refresh) the peers' venv before the clock matters
        env = {"BENCH_PG_URL": server.url()}
        runners = {name: PeerRunner(ctx, peer, env) for name, peer in PEERS.items()}
        ctx.results.note(SECTION, f"{server.version()}; 1 worker x 8 threads per system")
        for name, peer in PEERS.items():
            ctx.results.note(SECTION, f"{name} worker: python " + " ".join(peer.worker))
        for rep in range(ctx.sizes.peer_reps):
            order = SYSTEMS[rep % len(SYSTEMS) :] + SYSTEMS[: rep % len(SYSTEMS)]
            for key, _, label in RATES:
                n = ctx.sizes.noop_jobs if key == "noop" else ctx.sizes.sleep_jobs
                for system in order:
                    ctx.results.add(
                        _metric(
                            system,
                            key,
                            f"{label} + INCR, start to last done ({n:,} jobs)",
                            "jobs/s",
                        ),
                        _rate(ctx, server, runners, system, key, rep),
                    )
            for system in order:
                if system == DRAINPOOL:
                    _drainpool_sigterm(ctx, server, rep)
                else:
                    sigterm_fate(ctx, runners[system], section=SECTION)
    finally:
        server.stop()
