"""One generation of a named pool: its workers, its dispatcher, its drain.

The pool knows nothing of signals, config files or other pools: the
supervisor starts it, begins its drain, abandons what still runs at the
deadline, and is told through `on_drained` when nothing is left. How a job
runs (on the worker thread, or in a child process) is its runner's part
(drainpool.runner); everything else here is the same for every kind.

Every job the pool holds is in exactly one place: `_handed` (leased, not yet
started), `_running` (a run its worker finished stays there, flagged, until the
dispatcher takes it from `_finished`), or `_settle` (finished, waiting to be
acked, failed or released by the dispatcher in one batch). A worker moves a job
from handed to running under the lock, so the drain's cancel and a worker's
start can never both win (CPython futures' set_running_or_notify_cancel, the
same gate); it hands the finished run over without the lock (drainpool.bell).

Pickup (issue 21): in a thread pool the listener's role passes between the
workers (leader/follower). The thread that listens is a worker; when its waiter
brings it a job (a Redis push) or, woken on SQLite or PostgreSQL, it claims one
itself, it hands the role to an idle thread and runs that job, so the thread
that read the wake-up starts the job: no hop to the dispatcher or a worker. A
thread starts a job only while another thread holds the role or waits idle for
it, so the pool has workers + 1 threads and never runs more than `workers`
jobs; a thread that wants the role takes it before any handed job, so someone
always listens (cancels heard on the channel still reach running jobs).

Over 400 lines on purpose: the workers, the dispatcher and the drain all keep
the invariant above under one lock, and it reads best where all three are.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from drainpool.bell import Bell
from drainpool.context import (
    Interrupted,
    JobStop,
    ShutdownEvent,
    StopReason,
    TimedOut,
    failure_details,
    new_context,
    task_logger,
)
from drainpool.jobwatch import CHECK_SECONDS, JobWatch
from drainpool.metrics import Metrics
from drainpool.outcomes import Outcome
from drainpool.queue.base import (
    Done,
    Failure,
    Job,
    Queue,
    QueueUnavailable,
    WorkerIdentity,
    done_with,
)
from drainpool.queue.records import encode_result
from drainpool.queue.wakeups import PollWaiter, Waiter, next_due, waiter_for
from drainpool.runner import Runner, runner_for
from drainpool.tasks import TaskSpec

if TYPE_CHECKING:
    from drainpool import observe

log = logging.getLogger("drainpool.pool")

BURST_GAP_SECONDS = 0.002  # the first gap between fetches while jobs stream in
BURST_GAP_MAX_SECONDS = 0.05
ERROR_TAIL = 2000  # characters of an error message kept with a failed job
AUTO_RESERVE_SECONDS = 0.05  # prefetch = "auto": the reserve is about this much of the pool's time
# ... and never more than this many jobs per worker: 256 on 8 workers, about 5 ms of no-ops.
# Sub-millisecond jobs need that depth: each dispatcher round has a fixed cost (a commit,
# a GIL hand-off per statement), and 72 jobs a round ran no-ops at 38,000/s, 264 at 46,000/s.
AUTO_RESERVE_PER_WORKER = 32
# A listener woken this soon after it last claimed a job itself leaves the fetch to the
# dispatcher: wake-ups this close are a burst, which the dispatcher fetches in batches (on
# SQLite each claim is a write transaction that the burst's producers wait for).
LEAD_GAP_SECONDS = 0.02
RUN_TIME_WEIGHT = 0.125  # weight of the newest run time in the pool's moving mean
# Read once: an enum member looked up on its class (Outcome.COMPLETED) is a slow attribute
# read in CPython 3.11, and the workers and the dispatcher test for this one at every job.
_COMPLETED = Outcome.COMPLETED


def auto_reserve(workers: int, mean_run_seconds: float | None) -> int:
    """prefetch = "auto": as many jobs as the workers get through in about 50 ms.

    Short jobs get a deep reserve, so that one dispatcher round feeds the
    workers until the next (each round costs a transaction); long jobs get one,
    so that few wait here, unstarted, while other daemons could run them. No
    job finished yet: one, as for long jobs.
    """
    if mean_run_seconds is None:
        return 1
    most = AUTO_RESERVE_PER_WORKER * workers
    if mean_run_seconds <= 0:
        return most
    return max(1, min(most, round(workers * AUTO_RESERVE_SECONDS / mean_run_seconds)))


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """What a generation needs to know; the supervisor derives it from Settings."""

    name: str
    workers: int
    grace_seconds: float
    lease_seconds: float
    poll_interval_seconds: float
    kind: str = "thread"  # "process": drainpool.procpool.ProcessRunner, a child per worker
    prefetch: int | Literal["auto"] = "auto"  # jobs leased beyond the free workers (see Pool)
    # A completed job's result is kept in its record up to this many bytes of JSON;
    # None: records are not kept (queue.retention_seconds = 0), so it is not even encoded.
    result_max_bytes: int | None = None
    hooks: tuple[tuple[str, str], ...] = ()  # (hook name, "module:function"): drainpool.hooks
    tracing: str | None = None  # None: off; else the exporter ref ("": OTEL_*): drainpool.tracing


class RecentOutcomes:
    """The last `size` outcomes of every generation, newest last, for the console.

    Bounded (a deque with maxlen) and cheap: workers append without a lock (a
    deque's append is atomic), since a lock that every worker took per job made
    them convoy (drainpool.bell says how); the HTTP thread's copy is retried if
    an append lands in the middle of it. A worker appends a tuple of what it
    has; the console's documents are built from them at a snapshot, not per job
    (a dict of eight and a round() were 2 us of every no-op job's 50, issue 17).
    """

    def __init__(self, size: int = 200) -> None:
        self._items: collections.deque[_Recent] = collections.deque(maxlen=size)

    def add(self, pool: Pool, job: Job, outcome: Outcome, seconds: float | None) -> None:
        # The job's id, task and attempt, not the job: its payload may be large.
        self._items.append(
            (
                job.id,
                job.task,
                job.attempt,
                outcome,
                seconds,
                time.time(),
                pool.config.name,
                pool.generation,
            )
        )

    def snapshot(self) -> list[dict[str, Any]]:
        while True:
            try:
                items = list(self._items)
                break
            except RuntimeError:  # "deque mutated during iteration": copy again
                continue
        return [
            {
                "job_id": job_id,
                "task": task,
                "attempt": attempt,
                "outcome": outcome,
                "seconds": None if seconds is None else round(seconds, 3),
                "at": at,
                "pool": pool,
                "generation": generation,
            }
            for job_id, task, attempt, outcome, seconds, at, pool, generation in items
        ]


# One outcome as a worker left it for RecentOutcomes: the job's id, task and attempt, the
# outcome, its run time (None: it never ran), the wall clock at its end, its pool's name and
# generation.
_Recent = tuple[str, str, int, Outcome, "float | None", float, str, int]


@dataclass(slots=True)
class _Running:
    job: Job
    started: float
    thread: str
    stop: JobStop  # the job's own signal: a drain sets every one, a cancel or time limit one
    limit: float | None = None  # its time limit in seconds
    stop_at: float | None = None  # pool clock: when a cancel or time limit stopped it
    cancel_asked: bool = False  # a cancel came, maybe after a drain had stopped it already
    abandoned: bool = False
    watched: observe.Watching | None = None  # hooks and span of this attempt (drainpool.observe)
    awaited: bool = False  # abandoned, and the runner is ending it: the drain waits for that
    replaced: bool = False  # abandoned alone while the pool runs: a new worker took its place
    finished: bool = False  # its worker is done with it: the dispatcher settles it next round


# A run as its worker left it, for the dispatcher to settle (Pool._take_finished): its
# entry, the job as the run began (entry.job may hold a newer lease by now), the outcome,
# the ack, the failure, the run time. A tuple: made once per job, cheaper than a class.
_Finished = tuple[_Running, Job, Outcome, "Job | Done", "Failure | None", float]


@dataclass(slots=True)
class _Settlement:
    acks: list[Job | Done] = field(default_factory=list)
    releases: list[Job] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # How each job of the batch ended, for the queue's per-minute counts (the console's chart).
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)

    def __bool__(self) -> bool:
        return bool(self.acks or self.releases or self.failures)


class Pool:
    """Workers plus a dispatcher that fetches for free slots and a reserve.

    The reserve (`prefetch` jobs, or `auto_reserve` by default) is why a worker
    that finishes starts its next job at once: without it, the worker would
    wait for the dispatcher to wake, settle, lease one job and wake it in turn
    (about half a millisecond, 5 % of a 10 ms job). Reserved jobs are handed
    but not started, so a drain cancels them at once like any other;
    prefetch = 0 leases only for free workers.
    """

    def __init__(
        self,
        config: PoolConfig,
        generation: int,
        tasks: Mapping[str, TaskSpec],
        queue: Queue,
        metrics: Metrics,
        *,
        on_drained: Callable[[Pool], None] = lambda pool: None,
        on_queue_health: Callable[[bool, str], None] = lambda ok, why: None,
        recent: RecentOutcomes | None = None,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.generation = generation
        self._identity = WorkerIdentity.here(config.name)  # recorded with each claim
        self._runner = runner or runner_for(config.kind)
        self.tasks = self._runner.prepare(f"{config.name}-g{generation}", tasks)
        self._clock = clock  # monotonic: run times, the dispatcher's deadlines and backoff
        self.shutdown = ShutdownEvent()  # the generation's cancellation token
        self._queue = queue
        self._metrics = metrics
        self._task_metrics = metrics.for_pool(config.name, self.tasks)  # series at 0 from now
        self._watch: observe.JobWatch | None = None  # None: no hooks, no tracing
        if config.hooks or config.tracing is not None:
            from drainpool.observe import job_watch  # loaded only for hooks or tracing

            self._watch = job_watch(config, generation)
        self._on_drained = on_drained
        self._on_queue_health = on_queue_health
        self._recent = recent or RecentOutcomes(1)
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # workers wait here
        self._bell = Bell()  # the dispatcher sleeps on it; workers ring it without a lock
        # Runs that workers finished, appended without the lock (end of _run); the dispatcher
        # moves them to _settle, counts and means under the lock (_take_finished).
        self._finished: collections.deque[_Finished] = collections.deque()
        self._handed: collections.deque[Job] = collections.deque()
        self._running: dict[str, _Running] = {}
        self._settle = _Settlement()
        self._stopping = False
        self._mean_run_seconds: float | None = None  # moving mean of run times, for the reserve
        self._abandon_requested = False
        self._stops_lock = threading.Lock()  # shared by the jobs' JobStops: cheap to make
        # Time limits of the tasks that have one (a job's own `timeout` wins).
        self._limits = {n: s.timeout_seconds for n, s in self.tasks.items() if s.timeout_seconds}
        # Looked up once: getLogger takes logging's module lock, at every job's start otherwise.
        self._loggers = {name: logging.getLogger(f"drainpool.task.{name}") for name in self.tasks}
        self._left_behind = 0  # abandoned runs whose worker was replaced while the pool runs
        self._jobwatch = JobWatch(self, queue, f"{config.name}-g{generation}", clock=clock)
        self._drained = False
        self._threads: list[threading.Thread] = []
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name=f"{config.name}-g{generation}-dispatch", daemon=True
        )
        # Issue 21: an idle dispatcher sleeps; the listener wakes it when the queue announces
        # work for its tasks (drainpool.queue.wakeups). Made at start, closed once drained.
        self._waiter: Waiter = PollWaiter()
        self._wake_pending = False  # the queue announced work since the last fetch began
        # While jobs stream in (the dispatcher fetches in gaps, not on wake-ups) the listener
        # waits here once it has announced work: what the queue announces meanwhile stays in
        # its channel and is read in one go once the next fetch began (a burst of enqueues
        # costs the daemon one wake-up per fetch, not one per job). Idle, it listens at once.
        self._listen_ready = threading.Condition(self._lock)
        self._streaming = False
        self._listener = threading.Thread(
            target=self._listen_loop, name=f"{config.name}-g{generation}-listen", daemon=True
        )
        # Leader/follower (module docstring): a thread pool's workers take turns listening;
        # a process pool (each worker thread owns a child) keeps the listener thread above.
        self._leads = self._runner.any_thread
        self._role_vacant = False  # nobody listens: the next free thread takes the role
        self._idle = 0  # threads waiting on _work_ready (neither running nor listening)
        self._kept: _Running | None = None  # a pushed job the listening thread runs itself
        self._leader = ""  # the name of the thread that holds the role (set as it takes it)
        # The JobStop of the next pushed job the listening thread keeps (_take_pushed), made
        # by that thread before it waits; None in a process pool, whose listener keeps none.
        self._spare_stop: JobStop | None = None
        self._unwatched: Job | None = None  # kept by the last listener: see _watch_kept
        self._last_claim = -float("inf")  # pool clock: the listener last claimed a job itself
        self._fetching = 0  # jobs being fetched now (dispatcher, listener): held already
        self.drain_started: float | None = None
        self.counts: collections.Counter[Outcome] = collections.Counter()  # of this generation
        self.unsettled = 0  # jobs left to their leases: the queue failed past the grace

    # -- lifecycle (called by the supervisor) -------------------------------

    def start(self) -> None:
        # Armed by the listener's first wait (never here: a connect to a Redis that is down
        # would hold up the start), which then wakes the dispatcher once: no announcement
        # made between the first fetch and the arming is missed.
        self._waiter = waiter_for(self._queue, self.tasks.keys())
        self._waiter.hear_cancels(functools.partial(self.stop_job, reason="cancel"))
        # Jobs an enqueue leased to this idle pool (Redis): handed over on the listener's
        # thread, which runs the first itself (leader/follower), with no fetch.
        self._waiter.hear_pushes(self._take_pushed)
        # workers + 1 threads when they take turns listening (at most `workers` run jobs).
        with self._lock:
            self._role_vacant = self._leads  # the first thread to come listens
        for i in range(self.config.workers + self._leads):
            thread = threading.Thread(
                target=self._worker_loop,
                name=f"{self.config.name}-g{self.generation}-w{i}",
                daemon=True,  # an abandoned task must not keep the process alive
            )
            self._threads.append(thread)
            thread.start()
        if not self._leads:
            self._listener.start()
        self._dispatcher.start()  # the job watch starts with the first job handed over

    def begin_drain(self) -> int:
        """Drain steps 1-2: stop fetching, set the event, cancel what never started."""
        with self._lock:
            if self._stopping:
                return 0
            self.drain_started = self._clock()
            self._stopping = True
            self.shutdown.set()
            cancelled = list(self._handed)
            self._handed.clear()
            self._settle.releases.extend(cancelled)
            self._settle.outcomes[Outcome.CANCELLED] += len(cancelled)
            self._work_ready.notify_all()
            self._bell.ring()
            self.counts[Outcome.CANCELLED] += len(cancelled)
            stops = [r.stop for r in self._running.values()]
        for stop in stops:
            stop.set("drain")
        self._jobwatch.wake()  # it ends once nothing is held
        self._runner.drain_begun()
        self._record_cancelled(cancelled)
        return len(cancelled)

    def abandon(self) -> list[Job]:
        """At the deadline: release every job still running; its late result is ignored.

        Returns at once: a runner that can end a run (a child process) only
        starts to, and the pool is drained once those runs have ended.
        """
        with self._lock:
            self._abandon_requested = True
            with self._stops_lock:  # a run its worker finished meanwhile is settled as such
                abandoned = [r for r in self._running.values() if not (r.abandoned or r.finished)]
                for entry in abandoned:
                    entry.abandoned = True
            now = self._clock()
            for entry in abandoned:
                entry.awaited = self._runner.ends(entry.job.task)
                self._settle.releases.append(entry.job)
            self._settle.outcomes[Outcome.ABANDONED] += len(abandoned)
            self.counts[Outcome.ABANDONED] += len(abandoned)  # under the lock, as workers count
            self._bell.ring()
        # Marked abandoned first, so a result that a forced stop provokes is ignored; then
        # listeners (command tasks) kill what they started.
        self.shutdown.expire()
        for entry in abandoned:
            entry.stop.expire()
        for entry in abandoned:
            watched = entry.watched
            if watched is not None:
                watched.abandoned(now - entry.started)
            self._task_metrics.finished(entry.job.task, Outcome.ABANDONED, now - entry.started)
            self._recent.add(self, entry.job, Outcome.ABANDONED, now - entry.started)
            log.warning(
                "abandoned job %s (%s) on thread %s after %.1fs: it ignored the shutdown event;"
                " the job goes back to the queue",
                entry.job.id,
                entry.job.task,
                entry.thread,
                now - entry.started,
            )
        self._runner.kill({entry.job.id for entry in abandoned}, self._stop_awaiting)
        return [entry.job for entry in abandoned]

    def _stop_awaiting(self, job_ids: set[str]) -> None:
        """The runner could not end these runs: the drain stops waiting for them."""
        with self._lock:
            for entry in self._running.values():
                if entry.job.id in job_ids:
                    entry.awaited = False
            self._bell.ring()

    # -- stopping one job (drainpool.jobwatch calls these) -------------------

    def sweep(self) -> tuple[list[Job], float | None, bool]:
        """Stop the jobs past their time limit, end those past their grace; what is held.

        Returns (jobs held, seconds until the next limit or grace ends, whether the
        pool has drained and the watch can end).
        """
        now = self._clock()
        grace = self.config.grace_seconds
        timed_out: list[str] = []
        graced: list[_Running] = []
        next_at: float | None = None
        with self._lock:
            if self._drained:
                return [], None, True
            held = [r.job for r in self._running.values() if not r.abandoned]
            held.extend(self._handed)
            for entry in self._running.values():
                if entry.abandoned or entry.finished:
                    continue
                if entry.stop_at is not None:
                    at = entry.stop_at + grace
                    if now >= at:
                        graced.append(entry)
                        continue
                elif entry.limit is not None and not entry.stop.is_set():
                    at = entry.started + entry.limit
                    if now >= at:
                        timed_out.append(entry.job.id)
                        continue
                else:
                    continue
                next_at = at if next_at is None else min(next_at, at)
        for job_id in timed_out:
            self.stop_job(job_id, "timeout")
        for entry in graced:
            self._grace_over(entry)
        return held, None if next_at is None else next_at - now, False

    def stop_job(self, job_id: str, reason: StopReason) -> None:
        """Ask one job to stop; a cancelled job that never started is dropped at once."""
        dropped: Job | None = None
        with self._lock:
            entry = self._running.get(job_id)
            if entry is None:
                dropped = next((j for j in self._handed if j.id == job_id), None)
                if dropped is None or reason != "cancel":
                    return  # ended meanwhile: its settle says how (ack wins, else cancelled)
                self._handed.remove(dropped)
                self._settle.releases.append(dropped)  # the queue ends it cancelled
                self._settle.outcomes[Outcome.ABORTED] += 1
                self.counts[Outcome.ABORTED] += 1
                self._bell.ring()
            elif entry.abandoned or entry.finished:
                return
            elif reason == "cancel":
                entry.cancel_asked = True
        if dropped is not None:
            self._record_cancelled([dropped], Outcome.ABORTED)
            log.info("job %s (%s) cancelled before it started", dropped.id, dropped.task)
            return
        assert entry is not None
        if entry.stop.set(reason):
            with self._lock:
                entry.stop_at = self._clock()  # its grace counts from now
            log.info(
                "job %s (%s) asked to stop: %s; it gets %.1fs",
                job_id,
                entry.job.task,
                reason,
                self.config.grace_seconds,
            )

    def _grace_over(self, entry: _Running) -> None:
        """A job stopped by a cancel or its time limit still runs a grace later: end it alone.

        The job is settled now (cancelled, or a failed attempt); a thread is left
        behind and a new worker takes its slot, a child or a command is killed.
        """
        job = entry.job
        cancel = entry.cancel_asked or entry.stop.reason == "cancel"
        outcome = Outcome.ABORTED if cancel else Outcome.TIMED_OUT
        now = self._clock()
        with self._lock, self._stops_lock:
            if entry.abandoned or entry.finished or self._running.get(job.id) is not entry:
                return  # ended meanwhile: its worker's outcome stands
            entry.abandoned = True
            entry.awaited = self._runner.ends(job.task)
            kind = self.tasks[job.task].kind
            entry.replaced = not entry.awaited and kind != "command" and not self._stopping
            self._left_behind += entry.replaced
            if cancel:
                self._settle.releases.append(job)
            else:
                self._settle.failures.append(self._timed_out(entry))
            self._settle.outcomes[outcome] += 1
            self.counts[outcome] += 1
            self._bell.ring()
        entry.stop.expire()  # listeners: SIGKILL to a command's group
        self._task_metrics.finished(job.task, outcome, now - entry.started)
        self._recent.add(self, job, outcome, now - entry.started)
        log.warning(
            "job %s (%s) on %s still ran %.1fs after its %s: %s; the job is %s",
            job.id,
            job.task,
            entry.thread,
            self.config.grace_seconds,
            entry.stop.reason,
            "killed" if entry.awaited or kind == "command" else "abandoned (thread left behind)",
            "cancelled" if cancel else "failed (timed out)",
        )
        if entry.awaited:
            self._runner.kill({job.id}, self._stop_awaiting)
        if entry.replaced:
            thread = threading.Thread(
                target=self._worker_loop,
                name=f"{self.config.name}-g{self.generation}-w{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    @property
    def drained(self) -> bool:
        return self._drained

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the dispatcher and the workers that are not stuck in abandoned tasks."""
        deadline = time.monotonic() + max(timeout, self._runner.join_seconds)
        self._dispatcher.join(max(deadline - time.monotonic(), 0))
        self._jobwatch.join(max(deadline - time.monotonic(), 0))
        if self._watch is not None:
            self._watch.join(deadline)  # on_outcome hooks of jobs that never started
        if self._listener.ident is not None:
            self._listener.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            stuck = {r.thread for r in self._running.values() if not r.finished}
        for thread in self._threads:
            if thread.name not in stuck:
                thread.join(max(deadline - time.monotonic(), 0))
        self._runner.join(deadline)

    def stray_threads(self) -> int:
        """Threads still alive, and child processes not yet reaped."""
        return sum(1 for t in self._threads if t.is_alive()) + self._runner.children()

    # -- introspection ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            running = [
                {
                    "job_id": r.job.id,
                    "task": r.job.task,
                    "attempt": r.job.attempt,
                    "seconds": round(now - r.started, 3),
                    "thread": r.thread,
                    "abandoned": r.abandoned,
                    # Asked to stop (drain, cancel, timeout) and for how long: status, SIGUSR1.
                    "stop_reason": r.stop.reason,
                    "stopping_seconds": None
                    if r.stop.since is None
                    else round(time.monotonic() - r.stop.since, 3),
                    "timeout": r.limit,
                }
                for r in self._running.values()
            ]
            handed = len(self._handed)
            reserve = self.reserve()
        snapshot = {
            "name": self.config.name,
            "generation": self.generation,
            "workers": self.config.workers,
            "draining": self._stopping,
            "handed": handed,
            "reserve": reserve,
            "running": running,
            "waits": self._waiter.mode,  # doorbell, blocking read, or poll (issue 21)
        }
        self._runner.describe(snapshot)
        return snapshot

    # -- workers --------------------------------------------------------------

    def _worker_loop(self) -> None:
        with self._runner.worker():
            self._serve(threading.current_thread().name)

    def _serve(self, name: str) -> None:
        while True:
            # Made before the lock, which every worker takes per job: the less runs under it,
            # the less often CPython switches threads while one of them holds it.
            stop = JobStop(self._stops_lock)
            entry: _Running | None = None
            with self._lock:
                while True:
                    # The role first: someone must listen before another job starts (the
                    # bound on running jobs, and cancels heard on the channel).
                    if self._role_vacant and not self._drained:
                        self._role_vacant = False
                        self._leader = name
                        break
                    if self._handed:
                        entry = self._start_job(self._handed.popleft(), name, stop)
                        break
                    if self._stopping:
                        return  # stopping, and nothing handed over
                    self._idle += 1
                    self._work_ready.wait()
                    self._idle -= 1
            if entry is None:
                self._watch_kept()
                entry = self._lead()
                if entry is None:
                    return  # the pool drained while this thread listened
            if self._run(entry):
                return  # abandoned alone; its replacement serves in its place

    def _watch_kept(self) -> None:
        """Wake the job watch for the job the last listener kept: done here, by the thread
        that took over the role, so that the wake is off that job's way to its start."""
        with self._lock:
            job, self._unwatched = self._unwatched, None
        if job is None:
            return
        # The dispatcher looks again: a claim in flight counted as held, and it may have
        # gone to sleep on that (until the next renewal) instead of its next fetch.
        self._bell.ring()
        if not self._jobwatch.watching:
            self._jobwatch.wake(self._first_look([job]))

    def _start_job(self, job: Job, thread: str, stop: JobStop) -> _Running:
        """The job is running from here (lock held): a drain's cancel no longer reaches it."""
        limit = job.timeout or self._limits.get(job.task)
        entry = _Running(job, self._clock(), thread, stop, limit)
        self._running[job.id] = entry
        return entry

    def _run(self, entry: _Running) -> bool:
        """Run one job and classify its end; True when this worker was replaced meanwhile."""
        job = entry.job
        spec = self.tasks[job.task]
        metrics = self._task_metrics
        metrics.started(job.task)
        task_log = self._loggers[job.task]
        logger = task_logger(job.task, job.id, task_log)
        ctx = new_context(job.id, job.attempt, job.task, logger, entry.stop)
        failure: Failure | None = None
        done: Job | Done = job
        if self._watch is not None:
            entry.watched = self._watch.begin(job, ctx)
        try:
            result = spec.handler(ctx, job.payload)
            outcome = _COMPLETED
            done = self._done(job, result)
            if task_log.isEnabledFor(logging.DEBUG):  # what the adapter would ask, one call less
                logger.debug("job %s completed: %r", job.id, result)
        except Interrupted:
            outcome, failure = self._interrupted(entry)
        except TimedOut as exc:  # a command task's own timeout_seconds
            outcome = Outcome.TIMED_OUT
            failure = Failure(job, exc.error[:ERROR_TAIL], exc.traceback[-10 * ERROR_TAIL :])
            logger.warning("job %s timed out (attempt %d): %s", job.id, job.attempt, exc.error)
        except BaseException as exc:  # a task's SystemExit is its failure, not ours
            outcome = Outcome.FAILED
            message, trace, retry = failure_details(exc)
            message = message[:ERROR_TAIL]
            failure = Failure(job, message, trace[-10 * ERROR_TAIL :], retry)
            logger.warning("job %s failed (attempt %d): %s", job.id, job.attempt, message)
        seconds = self._clock() - entry.started
        if entry.watched is not None:
            entry.watched.end(outcome, seconds, "" if failure is None else failure.error)
        # Handed to the dispatcher without the pool's lock (see drainpool.bell: a lock taken
        # by every worker per job made them convoy). The flag, under the stops' lock with no
        # call inside, decides a race with an abandon: whichever comes first wins the job.
        with self._stops_lock:
            entry.finished = True
            replaced = entry.replaced
        if not entry.abandoned:  # final now; an abandon reports through the watch
            # Let go at once, not when the dispatcher settles the entry: the collector
            # counts what outlives a young collection (a traced pool's per-job cost).
            entry.watched = None
        self._finished.append((entry, job, outcome, done, failure, seconds))
        self._bell.ring()
        if not entry.abandoned:
            metrics.finished(job.task, outcome, seconds)
            self._recent.add(self, job, outcome, seconds)
        return replaced

    def _take_finished(self) -> None:
        """Settle what the workers finished: counts, moving mean, the next batch (lock held).

        Counted in a dict of its own and added to the two Counters once per round:
        a Counter's `+= 1` is two calls into a dict subclass, twice per job.
        """
        finished = self._finished
        if not finished:
            return
        running = self._running
        settle = self._settle
        mean = self._mean_run_seconds
        counted: dict[Outcome, int] = {}
        while finished:
            entry, job, outcome, done, failure, seconds = finished.popleft()
            mean = seconds if mean is None else mean + RUN_TIME_WEIGHT * (seconds - mean)
            if running.get(job.id) is entry:  # an abandoned run's id may run anew
                del running[job.id]
            if entry.abandoned:  # settled when abandoned; it may already run elsewhere
                if entry.replaced:
                    self._left_behind -= 1
                continue
            if entry.job is not job:  # its lease lapsed and was taken again: settle with that
                job, done, failure = _with_lease(entry.job, done, failure)
            counted[outcome] = counted.get(outcome, 0) + 1
            if outcome is _COMPLETED:
                settle.acks.append(done)
            elif failure is not None:
                settle.failures.append(failure)
            else:
                settle.releases.append(job)
        self._mean_run_seconds = mean
        self.counts.update(counted)
        settle.outcomes.update(counted)

    def _interrupted(self, entry: _Running) -> tuple[Outcome, Failure | None]:
        """The outcome of a task that raised Interrupted: why was it asked to stop?"""
        reason = entry.stop.reason
        if entry.cancel_asked or reason == "cancel":
            return Outcome.ABORTED, None  # released: the queue ends a cancelled job so
        if reason == "timeout":
            return Outcome.TIMED_OUT, self._timed_out(entry)
        if reason is not None or self.shutdown.is_set():
            return Outcome.INTERRUPTED, None
        return Outcome.FAILED, Failure(
            entry.job, "raised Interrupted while no shutdown was requested"
        )

    @staticmethod
    def _timed_out(entry: _Running) -> Failure:
        return Failure(entry.job, f"timed out after {entry.limit or 0.0:.1f} s")

    def _done(self, job: Job, result: object) -> Job | Done:
        """The ack of a completed job, with its result encoded here, in the worker's thread."""
        limit = self.config.result_max_bytes
        if limit is None:
            return job
        result_json, note = encode_result(result, limit)
        return done_with(job, result_json, note)

    # -- dispatcher -----------------------------------------------------------

    def _listen_loop(self) -> None:
        """The listener thread of a pool whose workers do not take turns (kind = "process")."""
        self._lead()

    def _lead(self) -> _Running | None:
        """Listen until the pool drains (None), or until this thread has a job to run.

        Woken, it announces the work to the dispatcher, which fetches; but in a
        thread pool whose idle threads can take over the role, a pushed job
        (Redis) is kept by `_take_pushed` on this thread, and a wake-up of a waiter
        that lets any thread fetch (SQLite, PostgreSQL) is answered by a claim
        of its own (`_claim`): the role then passes to an idle thread (off the
        job's path: its wake-up costs the job only the futex call) and this
        thread runs the job it read, with no thread hop.
        """
        poll = self.config.poll_interval_seconds
        while not self._drained:
            if self._leads and self._spare_stop is None:  # made idle: off a pushed job's path
                self._spare_stop = JobStop(self._stops_lock)
            woken = self._waiter.wait(poll)
            if woken:
                waiter = self._waiter
                if self._kept is None and self._leads and waiter.fetch_anywhere:
                    # Not at a (re)arming: jobs may have piled up, a batch for the dispatcher.
                    if waiter.rearmed:
                        self._announce()
                    else:
                        self._claim()
                else:
                    self._announce(wait=self._kept is None)
            kept, self._kept = self._kept, None  # set on this thread only (_take_pushed...)
            if kept is not None:
                with self._lock:
                    self._role_vacant = True
                    self._unwatched = kept.job  # the next listener wakes the job watch
                    self._work_ready.notify()
                return kept
        return None

    def _announce(self, *, wait: bool = True) -> None:
        """Tell the dispatcher that the queue announced work: it fetches (the classic path).

        While jobs stream in, the listener then waits (`wait`) until the next fetch
        began: what the queue announces meanwhile stays in its channel and is read
        in one go (a burst costs one wake-up per fetch, not one per job).
        """
        with self._lock:
            self._wake_pending = True
            self._bell.ring()
            # At most a safety-net interval: a channel unread for long may overflow
            # (Redis drops a subscriber whose backlog grows past its buffer limit).
            while wait and self._streaming and self._wake_pending and not self._drained:
                if not self._listen_ready.wait(self.config.poll_interval_seconds):
                    break

    def _claim(self) -> None:
        """Woken (SQLite, PostgreSQL): claim a job for this thread, or leave it to the dispatcher.

        What it keeps, `_hand_over` leaves in `_kept` for `_lead`.

        Only while idle threads can take the role and the handed jobs, and not in
        a burst (streaming, or its last claim under LEAD_GAP_SECONDS ago): there
        the dispatcher's batches cost the queue less. It claims up to two: two
        found means more may wait, and the dispatcher is told as before; fewer
        answer the wake-up. A due time heard (a delayed job) goes to the
        dispatcher, which sleeps until then.
        """
        due_heard = self._waiter.due_heard()  # left for the dispatcher's take_due
        with self._lock:
            want = min(self._free_slots(), 2)
            mine = (
                not due_heard
                and want > 0
                and not self._stopping
                and not self._streaming
                and self._idle > len(self._handed)
                and self._clock() - self._last_claim >= LEAD_GAP_SECONDS
            )
            if mine:
                self._fetching += want
        if not mine:
            self._announce()
            return
        try:
            jobs = self._queue.fetch(
                want, self.tasks.keys(), self.config.lease_seconds, worker=self._identity
            )
        except Exception:
            with self._lock:
                self._fetching -= want
                self._bell.ring()  # a drain may be waiting for this fetch to come back
            self._announce()  # the dispatcher's fetch meets the fault, and reports it
            return
        # The first is kept for this thread while an idle thread can take the role; the
        # second of two, or all at a drain or with no thread free, go as the dispatcher's.
        self._hand_over(jobs, keep=True, fetched=want)
        if len(jobs) == want:
            self._announce(wait=False)
        elif self._kept is None:
            self._bell.ring()  # as in _watch_kept: the claim no longer counts as held

    def _dispatch_loop(self) -> None:
        """Settle finished jobs, renew leases, fetch for free slots; repeat.

        With free slots and nothing found, it sleeps until the listener says
        that work came, a delayed job comes due, a lease needs renewing, or the
        safety net (`poll_interval_seconds`) runs out, whichever is first.
        """
        try:
            self._dispatch_rounds()
        finally:
            with self._lock:
                self._drained = True
                self._listen_ready.notify()
            self._waiter.close()
            self._jobwatch.end()  # it sees the pool drained, and ends
        self._on_drained(self)

    def _dispatch_rounds(self) -> None:
        renew_every = self.config.lease_seconds / 3
        clock = self._clock
        next_renew = clock() + renew_every
        next_fetch = 0.0
        gap = 0.0  # > 0: jobs are streaming in; fetch at next_fetch, wake-ups wait for it
        backoff = 0.0
        while True:
            with self._lock:
                while True:
                    self._bell.arm()  # before the last look: what changes after it rings
                    self._take_finished()
                    now = clock()
                    free = self._free_slots()
                    # While jobs stream in, what finished is settled with the next fetch, in
                    # its transaction: a settle of its own per job held the SQLite write lock
                    # twice as often, and the producers of the burst waited for it.
                    batching = gap and free and not self._stopping
                    if (self._settle and not batching) or (
                        self._stopping and not self._has_active()
                    ):
                        break
                    wake_at = next_renew
                    if free and not self._stopping:
                        if now >= next_fetch or (self._wake_pending and not gap):
                            break
                        wake_at = min(wake_at, next_fetch)
                    if now >= next_renew:
                        break
                    self._sleep(wake_at - now)
                batch, self._settle = self._settle, _Settlement()
                stopping = self._stopping
                finished = stopping and not self._has_active() and not batch
                free = self._free_slots()
                woken = self._wake_pending and not gap
                # Not only woken: the due times are asked for after this fetch (a failure of
                # ours is a delayed job now, its retry due after the backoff).
                timer = clock() >= next_fetch or bool(batch.failures)
                due = free and not stopping and (woken or timer)
                if due:
                    self._wake_pending = False  # cleared before the fetch: a later ring counts
                    self._listen_ready.notify()  # so the listener listens again
                want = free if due else 0
                self._fetching += want  # held from now: a listener's claim counts them
            try:
                used_queue = bool(batch or want)
                jobs = self._exchange(batch, want)
                fetched = len(jobs)
                if finished:
                    return
                if want:
                    # A full batch: more is likely waiting. Some: jobs are streaming in (a
                    # burst of enqueues), so fetch again after a gap that doubles up to
                    # BURST_GAP_MAX_SECONDS, taking many per fetch instead of one per wake-up
                    # (on SQLite each fetch is a write lock the producers would wait for).
                    # None: sleep until woken, a delayed job is due, or the safety net.
                    hinted = self._waiter.take_due()
                    if fetched == free:
                        gap, wait = 0.0, 0.0
                    elif fetched:
                        gap = min(max(gap * 2, BURST_GAP_SECONDS), BURST_GAP_MAX_SECONDS)
                        wait = gap
                    elif timer:
                        gap, wait = 0.0, self._idle_wait()
                    else:  # only woken, and nothing for us: one round trip, as issue 21 asks
                        gap, wait = 0.0, max(next_fetch - clock(), 0.0)
                    if hinted is not None and not fetched:
                        wait = min(wait, max(hinted - time.time(), 0.0))
                    next_fetch = clock() + wait
                    self._streaming = gap > 0
                # Handed over once this round's bookkeeping is done: the workers then find
                # this thread about to sleep, not holding the GIL (issue 21: pickup latency).
                want, fetching = 0, want
                self._hand_over(jobs, fetched=fetching)
                if clock() >= next_renew:
                    used_queue = True
                    self._renew()
                    next_renew = clock() + renew_every
                if used_queue:
                    # Every success is reported, not only the first after a failure: the
                    # supervisor also hears of failures from elsewhere (stats at a scrape).
                    backoff = 0.0
                    self._on_queue_health(True, "")
            except Exception as exc:
                if want:  # the fetch failed: nothing on its way
                    with self._lock:
                        self._fetching -= want
                if batch:
                    self._requeue_settlement(batch)  # kept: acks are retried once it is back
                if isinstance(exc, QueueUnavailable):
                    self._on_queue_health(False, str(exc))  # the supervisor logs changes, once
                elif not backoff:  # one traceback per streak of errors, not one per retry
                    log.exception("pool %s: dispatcher error; retrying", self.config.name)
                if self._give_up_settling():
                    return
                if clock() >= next_renew and self._renew_alone():
                    next_renew = clock() + renew_every
                backoff = min(max(backoff * 2, 0.1), 5.0)
                with self._lock:
                    self._bell.arm()  # a drain or a finished job cuts the backoff short
                    self._sleep(backoff * (0.5 + random.random() / 2))

    def _sleep(self, seconds: float) -> None:
        """Release the lock and sleep until the bell rings or `seconds` pass (armed first)."""
        self._lock.release()
        try:
            self._bell.wait(seconds)
        finally:
            self._lock.acquire()

    def _idle_wait(self) -> float:
        """Seconds an idle dispatcher may sleep: to the next delayed job, or the safety net."""
        safety_net = self.config.poll_interval_seconds
        due_in = next_due(self._queue, self.tasks.keys())
        return safety_net if due_in is None else min(due_in, safety_net)

    def _give_up_settling(self) -> bool:
        """Once the grace is over (abandon), stop retrying a queue that keeps failing.

        Without this, a stop while Redis is down would never end. What is left
        unsettled keeps its lease in the queue and is delivered again when that
        lease expires: at-least-once, as for a crash.
        """
        with self._lock:
            if not self._abandon_requested:
                return False
            self._take_finished()
            batch, self._settle = self._settle, _Settlement()
        self.unsettled = len(batch.acks) + len(batch.releases) + len(batch.failures)
        if self.unsettled:
            log.error(
                "pool %s: the grace is over and the queue still fails: %d jobs left unsettled"
                " (%d of them completed); they run again once their leases expire",
                self.config.name,
                self.unsettled,
                len(batch.acks),
            )
        return True

    def _has_active(self) -> bool:
        """Anything still running that was not abandoned or whose end the runner brings.

        An abandoned thread may linger for ever; a killed child ends in moments. A
        listener's claim on its way counts too: what it brings at a drain is released
        in the dispatcher's next settle, which must not have been its last.
        """
        if self._fetching:
            return True
        return any(not r.abandoned or r.awaited for r in self._running.values())

    def _free_slots(self) -> int:
        """Jobs to fetch now: never below 0, though the held may exceed the wanted.

        The automatic reserve shrinks as the mean run time grows, so a pool can
        hold more than workers + reserve; a negative count read as "free" once
        made the dispatcher fetch -25 jobs, find none, and sleep the safety net.
        """
        held = len(self._running) - self._left_behind + len(self._handed) + self._fetching
        return max(self.config.workers + self.reserve() - held, 0)

    def reserve(self) -> int:
        """How many jobs to lease beyond the free workers now (caller holds the lock)."""
        if self.config.prefetch == "auto":
            return auto_reserve(self.config.workers, self._mean_run_seconds)
        return self.config.prefetch

    def _exchange(self, batch: _Settlement, want: int) -> list[Job]:
        """Settle what finished and fetch for free slots in one queue round trip."""
        lease = self.config.lease_seconds
        if batch:
            jobs = self._queue.settle_and_fetch(
                batch.acks,
                batch.releases,
                batch.failures,
                want,
                self.tasks.keys(),
                lease,
                worker=self._identity,
                outcomes=batch.outcomes,
            )
        elif want:
            jobs = self._queue.fetch(want, self.tasks.keys(), lease, worker=self._identity)
        else:
            return []
        return jobs

    def _take_pushed(self, jobs: list[Job]) -> bool:
        """Jobs an enqueue leased to this pool (Waiter.hear_pushes), on the listening thread.

        The common case, one fresh job into a thread pool with an idle thread to
        take over the role, is kept here for this thread in a few lines: this is
        the path from the enqueue to the job's start (issue 21, pickup latency).
        Everything else goes through `_hand_over`, which gives the same answer.
        """
        stop = self._spare_stop
        if stop is not None and len(jobs) == 1 and jobs[0].attempt == 1:  # 1: not ours yet
            with self._lock:
                if self._stopping:
                    return False  # the waiter releases it (see _hand_over)
                if self._idle > len(self._handed):
                    self._keep(jobs[0], stop)
                    self._spare_stop = None
                    return True
        return self._hand_over(jobs, pushed=True)

    def _keep(self, job: Job, stop: JobStop) -> None:
        """Start `job` on the listening thread, which runs it once its wait returns (lock held)."""
        kept = self._kept = self._start_job(job, self._leader, stop)
        self._last_claim = kept.started

    def _hand_over(
        self, jobs: list[Job], *, pushed: bool = False, keep: bool = False, fetched: int = 0
    ) -> bool:
        """To the workers; False for `pushed` jobs (Waiter.hear_pushes) once a drain began:
        the dispatcher may have settled for the last time, so their waiter releases them.

        Pushed jobs come on the listening thread, and so do those it claimed
        (`keep`): in a thread pool with an idle thread to take over the role, that
        thread starts the first itself (`_lead` runs it once the waiter returns),
        so no other thread is woken for it. `fetched`: what this fetch counted in
        `_fetching`, held from now on as handed or running jobs.
        """
        if not jobs and not fetched:
            return True
        stop = JobStop(self._stops_lock) if (keep or pushed) and self._leads else None
        with self._lock:
            self._fetching -= fetched
            if fetched and self._stopping:
                self._bell.ring()  # a drain may be waiting for this fetch to come back
            if pushed and self._stopping:
                return False
            jobs = self._adopt_our_own(jobs)
            stopping = self._stopping
            if not jobs:
                return True
            if stopping:
                # A drain began while we fetched: leased for this generation and never
                # started, so cancelled like the handed ones (every job gets one outcome).
                self._settle.releases.extend(jobs)
                self._settle.outcomes[Outcome.CANCELLED] += len(jobs)
                self.counts[Outcome.CANCELLED] += len(jobs)
                self._bell.ring()
            else:
                if stop is not None and self._idle > len(self._handed):
                    self._keep(jobs[0], stop)
                    jobs = jobs[1:]
                if jobs:  # none left when the listening thread kept the only one
                    self._handed.extend(jobs)
                    self._work_ready.notify(len(jobs))
        if stopping:
            self._record_cancelled(jobs)
        elif jobs and not self._jobwatch.watching:
            self._jobwatch.wake(self._first_look(jobs))
        return True

    def _first_look(self, jobs: list[Job]) -> float:
        """When an idle job watch need first look at `jobs`: CHECK_SECONDS, or a shorter limit.

        Never later than CHECK_SECONDS: a job with an hour's time limit once made the
        watch's first look an hour away, and on SQLite, where only the watch reads the
        cancels, a cancel of that job waited for it.
        """
        limits = (job.timeout or self._limits.get(job.task) for job in jobs)
        return min([CHECK_SECONDS, *(limit for limit in limits if limit)])

    def _adopt_our_own(self, jobs: list[Job]) -> list[Job]:
        """Drop from `jobs` those this pool still holds, taking their new leases (lock held).

        A job whose lease lapsed while this daemon still ran it (the process was
        stopped, the queue was out of reach, or the dispatcher was held up for
        longer than lease_seconds) is due again, and a fetch returns it to us with
        a new token (issue 23). It is not run a second time: the run in progress,
        or the reserve entry, takes the new lease and settles with it.
        """
        if all(job.attempt == 1 for job in jobs):
            # Every delivery counts an attempt, so one that we hold comes back with 2 or
            # more: a first delivery is fresh, and the common batch skips the look-ups.
            return jobs
        fresh = []
        reserved = {held.id for held in self._handed}  # one look-up per job, not a scan
        for job in jobs:
            entry = self._running.get(job.id)
            if entry is not None and not entry.abandoned:
                entry.job = job
            elif job.id in reserved:
                self._handed = collections.deque(
                    job if held.id == job.id else held for held in self._handed
                )
            else:
                fresh.append(job)
                continue
            log.warning(
                "pool %s: job %s came back while this daemon still holds it (its lease"
                " lapsed: the daemon was paused or the queue out of reach); keeping it,"
                " with its new lease, not running it twice",
                self.config.name,
                job.id,
            )
        return fresh

    def _record_cancelled(self, jobs: list[Job], outcome: Outcome = Outcome.CANCELLED) -> None:
        for job in jobs:
            self._task_metrics.cancelled(job.task, outcome)
            self._recent.add(self, job, outcome, None)
        if self._watch is not None:
            self._watch.never_started(jobs, outcome)  # their on_outcome hooks

    def _fetch(self, free: int) -> int:
        """Fetch and hand over up to `free` jobs (tests drive this directly)."""
        jobs = self._exchange(_Settlement(), free)
        self._hand_over(jobs)
        return len(jobs)

    def _renew(self) -> None:
        with self._lock:
            jobs = [r.job for r in self._running.values() if not r.abandoned]
            jobs.extend(self._handed)
        self._queue.renew(jobs, self.config.lease_seconds)

    def _renew_alone(self) -> bool:
        """Renew the leases after a failed round; True when the queue took it.

        A settle can fail while the queue still answers (on PostgreSQL, a row lock
        of another session on the one job it acks). The other jobs' leases must not
        lapse meanwhile, or another daemon would run them a second time.
        """
        try:
            self._renew()
        except Exception:  # the queue is down too: the round's failure was reported
            return False
        return True

    def _requeue_settlement(self, batch: _Settlement) -> None:
        """Keep a batch the queue refused, to settle it once the queue is back."""
        with self._lock:
            self._settle.acks[:0] = batch.acks
            self._settle.releases[:0] = batch.releases
            self._settle.failures[:0] = batch.failures
            self._settle.outcomes.update(batch.outcomes)


def _with_lease(
    job: Job, done: Job | Done, failure: Failure | None
) -> tuple[Job, Job | Done, Failure | None]:
    """The settlement of a run whose job was leased again meanwhile, under the new token."""
    done = Done(job, done.result_json, done.note) if isinstance(done, Done) else job
    if failure is not None:
        failure = dataclasses.replace(failure, job=job)
    return job, done, failure
