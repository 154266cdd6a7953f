"""Process workers (`pool.kind = "process"`): each worker slot runs its tasks in a child process.

A Python thread cannot be killed, so a task that never checks its context
can only be abandoned; a process can. ProcessRunner is the Pool's runner
(drainpool.runner) for this kind: its Python tasks are proxies, the worker
thread sends the job to its own child (see drainpool.procworker) and waits
for the outcome, so the dispatcher, batching, leases, the settle step, the
drain and the metrics are the Pool's own, in the daemon. Command tasks
already run a separate program and are run by the worker thread itself, as
in a thread pool.

At a stop, the drain forwards the shutdown event to every child, where
ctx.sleep and ctx.check see it at once; a cancel or a time limit forwards
one job's stop (with its reason) to the child running it. At the grace deadline the pool's
abandon() releases the jobs still running and kill() signals their
children's process groups: SIGTERM at once, then SIGKILL after
KILL_AFTER_SECONDS from a reaper thread, so the supervisor's loop never
waits on a child. The pool counts as drained only once those children are
reaped, so no child outlives the drain. A child that dies on its own
(segfault, os._exit, the OOM killer) fails its job with that reason and is
replaced at once while the pool runs.

Just over 400 lines: the child's life (start, job, stop, kill, reap) is one
state machine, kept in one file so its lock rules can be read in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from drainpool.context import (
    Interrupted,
    JobFailed,
    JobStop,
    TaskContext,
    child_environment,
    exit_description,
)
from drainpool.logs import JsonFormatter
from drainpool.outcomes import Outcome
from drainpool.procworker import BOOTSTRAP, Channel
from drainpool.queue.records import NotJson
from drainpool.tasks import TaskSpec

log = logging.getLogger("drainpool.pool")

KILL_AFTER_SECONDS = 1.0  # a killed worker gets this long after SIGTERM before SIGKILL
CLOSE_SECONDS = 5.0  # an idle worker gets this long to exit once its socket is closed
REAP_SECONDS = 5.0  # the longest wait for a SIGKILLed child to be reaped


class WorkerDied(Exception):
    """The child ended without answering; the message says how."""


class _Worker:
    """One child process and its socket, owned by one worker thread.

    Only the owner thread reads the socket and reaps the child; other
    threads may send (the drain's `shutdown`) and signal, under `lock`, which
    the reaping also takes, so a signal never reaches a reused pid.
    """

    def __init__(self, argv: list[str], config: dict[str, Any]) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [*argv, str(theirs.fileno()), json.dumps(sys.path), json.dumps(config)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=child_environment(),
                start_new_session=True,  # no terminal or group signal reaches it; we signal it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self.proc.pid
        try:
            self.pidfd = os.pidfd_open(self.pid)  # Linux 5.3+: its end, as a readable fd
        except OSError:
            self.proc.kill()
            self.proc.wait()
            ours.close()
            raise
        self.channel = Channel(ours)
        # poll, not select: select() cannot watch fds above 1023, which a big pool can reach.
        self._either = select.poll()  # a reply or the child's end
        self._either.register(ours, select.POLLIN)
        self._either.register(self.pidfd, select.POLLIN)
        self._end = select.poll()  # the child's end only
        self._end.register(self.pidfd, select.POLLIN)
        self.lock = threading.Lock()
        self.exited = threading.Event()
        self.job_id: str | None = None  # guarded by the runner's lock
        self.killed = False  # by kill(): its death is expected, not news

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a job and wait for its outcome (or the child's death); owner thread only."""
        try:
            self.channel.send(message)
        except OSError:
            raise WorkerDied(self.death()) from None
        sock = self.channel.sock.fileno()
        while (reply := self.channel.take()) is None:
            ready = {fd for fd, _ in self._either.poll()}
            if sock in ready:
                if not self.channel.fill():
                    raise WorkerDied(self.death())
            elif ready:  # the child is gone though a grandchild may still hold its socket
                raise WorkerDied(self.death())
        return reply

    def ended(self) -> bool:
        """Whether the child has ended, reaped or not (it may die between jobs)."""
        if self.exited.is_set():
            return True
        return bool(self._end.poll(0))

    def send_shutdown(self) -> None:
        with contextlib.suppress(OSError):  # a dead child needs no telling
            self.channel.send({"op": "shutdown"})

    def send_stop(self, job_id: str, reason: str) -> None:
        """One job asked to stop (a cancel, a time limit): the child sets that job's signal."""
        with contextlib.suppress(OSError):
            self.channel.send({"op": "stop", "id": job_id, "reason": reason})

    def signal(self, signum: int) -> None:
        with self.lock:
            if not self.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signum)

    def death(self) -> str:
        """Reap a child that ended (or kill one that stopped answering); say how it ended."""
        code = self.reap(REAP_SECONDS)
        if code is None:
            self.signal(signal.SIGKILL)
            self.reap(REAP_SECONDS)
            return "closed its socket and stopped answering"
        return exit_description(code)

    def dispose(self) -> None:
        """Release the fds of a child that has been reaped."""
        self.channel.sock.close()
        os.close(self.pidfd)

    def reap(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the child to end, then reap it with its group."""
        if not self.exited.is_set():
            if not self._end.poll(timeout * 1000):
                return None
            with self.lock:
                # Its leftovers in the group go too; the unreaped leader keeps the id ours.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
                self.exited.set()
        return self.proc.returncode

    def close(self) -> None:
        """End an idle child: close its socket (it exits), or kill it; owner thread only."""
        with contextlib.suppress(OSError):
            self.channel.sock.shutdown(socket.SHUT_RDWR)
        if self.reap(CLOSE_SECONDS) is None:
            log.warning("worker process %d did not exit when closed: SIGKILL", self.pid)
            self.signal(signal.SIGKILL)
            self.reap(REAP_SECONDS)
        self.dispose()


class ProcessRunner:
    """The runner of `pool.kind = "process"`: one child process per worker thread."""

    join_seconds = CLOSE_SECONDS + 1.0
    any_thread = False  # a job runs in the child of its worker thread: the listener stays apart

    def __init__(self) -> None:
        self._label = "pool"
        self._argv = [sys.executable, "-c", BOOTSTRAP, "drainpool-worker"]
        self._child_config: dict[str, Any] = {"tasks": {}, "log": _log_config()}
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []  # every child not yet reaped; under self._lock
        self._stopping = False  # under self._lock
        self._doomed: set[str] = set()  # ids of abandoned jobs; under self._lock
        self._local = threading.local()  # the worker thread's own _Worker
        self._reapers: list[threading.Thread] = []

    def prepare(self, label: str, tasks: Mapping[str, TaskSpec]) -> dict[str, TaskSpec]:
        """Python tasks become proxies to the thread's child; commands run on the thread."""
        self._label = label
        remote = {name: s.source for name, s in tasks.items() if s.kind != "command"}
        self._child_config["tasks"] = remote
        return {
            name: spec if spec.kind == "command" else dataclasses.replace(spec, handler=self._call)
            for name, spec in tasks.items()
        }

    def ends(self, task: str) -> bool:
        """Python tasks: each runs in a child, which kill() ends.

        A command runs in its own group, which the command task kills when the
        shutdown event expires.
        """
        return task in self._child_config["tasks"]

    # -- worker threads ----------------------------------------------------------

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        # No Python task to serve (only commands): no child to keep idle.
        self._local.worker = self._spawn_logged() if self._child_config["tasks"] else None
        try:
            yield
        finally:
            worker = self._local.worker
            if worker is not None:
                worker.close()
                self._forget(worker)

    def _call(self, ctx: TaskContext, payload: Any) -> Any:
        """The handler of every Python task here: run the job in this thread's child."""
        worker = self._local.worker
        if worker is not None and worker.ended():  # died between jobs: not this job's fault
            self._replace(worker, worker.death(), "while idle")
            worker = self._local.worker
        if worker is None:
            worker = self._local.worker = self._spawn()
        message = {
            "op": "run",
            "id": ctx.job_id,
            "task": ctx.task,
            "attempt": ctx.attempt,
            "payload": payload,
        }
        with self._lock:
            if ctx.job_id in self._doomed:  # abandoned before it reached its child
                self._doomed.discard(ctx.job_id)  # a later attempt (a retry) runs as usual
                raise Interrupted
            worker.job_id = ctx.job_id
        stop = ctx.shutdown
        stop_listening = (
            stop.listen(lambda: worker.send_stop(ctx.job_id, stop.reason or "drain"))
            if isinstance(stop, JobStop)
            else lambda: None
        )
        try:
            reply = worker.call(message)
        except WorkerDied as died:
            self._replace(worker, str(died), f"running job {ctx.job_id} ({ctx.task})")
            if worker.killed:  # by kill(): the job is already released, the outcome ignored
                raise Interrupted from None
            raise JobFailed(f"worker process died: {died}") from None
        finally:
            stop_listening()
            with self._lock:
                worker.job_id = None
                self._doomed.discard(ctx.job_id)
        outcome = reply["outcome"]
        if outcome == Outcome.COMPLETED:
            if "not_json" in reply:  # the child could not send it: the record says why
                return NotJson(reply["not_json"])
            return reply.get("result")
        if outcome == Outcome.INTERRUPTED:
            raise Interrupted
        raise JobFailed(reply["error"], traceback=reply["traceback"], retry=reply["retry"])

    def _spawn(self) -> _Worker:
        worker = _Worker(self._argv, self._child_config)
        with self._lock:
            self._workers.append(worker)
            stopping = self._stopping
        if stopping:  # born after the drain told the others
            worker.send_shutdown()
        return worker

    def _spawn_logged(self) -> _Worker | None:
        try:
            return self._spawn()
        except OSError as exc:  # tried again at the next job, which fails if it fails again
            log.error("pool %s: cannot start a worker process: %s", self._label, exc)
            return None

    def _replace(self, worker: _Worker, reason: str, doing: str) -> None:
        """Forget a dead child; start its successor unless the pool is stopping."""
        self._forget(worker)
        worker.dispose()
        self._local.worker = None
        with self._lock:
            stopping = self._stopping
        if worker.killed:
            # Killed for one job (a cancel or time limit past its grace): the slot lives on.
            if not stopping:
                self._local.worker = self._spawn_logged()
            return
        log.warning(
            "worker process %d died %s: %s%s",
            worker.pid,
            doing,
            reason,
            "" if stopping else "; starting a new one",
        )
        if not stopping:
            self._local.worker = self._spawn_logged()

    def _forget(self, worker: _Worker) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._workers.remove(worker)

    # -- what the pool asks at a drain ---------------------------------------------

    def drain_begun(self) -> None:
        """Forward the shutdown event to every child, where ctx.sleep and ctx.check see it."""
        with self._lock:
            self._stopping = True
            workers = list(self._workers)
        for worker in workers:
            worker.send_shutdown()

    def kill(self, job_ids: set[str], given_up: Callable[[set[str]], None]) -> None:
        """SIGTERM the children of these jobs now; a reaper thread escalates and waits.

        The caller is the supervisor's loop, which must go on reading signals
        and pinging the watchdog: each child's owner thread reaps it when it
        ends, and the reaper sends SIGKILL to any child still there after
        KILL_AFTER_SECONDS.
        """
        with self._lock:
            self._doomed |= job_ids
            victims: dict[_Worker, str] = {
                w: job for w in self._workers if (job := w.job_id) is not None and job in job_ids
            }
        if not victims:
            return
        for worker in victims:
            worker.killed = True
            worker.signal(signal.SIGTERM)
        reaper = threading.Thread(
            target=self._finish_off,
            args=(victims, given_up),
            name=f"{self._label}-reaper",
            daemon=True,  # bounded by KILL_AFTER_SECONDS + REAP_SECONDS; joined by the pool
        )
        self._reapers.append(reaper)
        reaper.start()

    def _finish_off(
        self, victims: dict[_Worker, str], given_up: Callable[[set[str]], None]
    ) -> None:
        """SIGKILL what outlived SIGTERM; give up on what outlives SIGKILL."""
        stubborn = _wait_exited(list(victims), KILL_AFTER_SECONDS)
        for worker in stubborn:
            log.warning("worker process %d ignored SIGTERM: SIGKILL", worker.pid)
            worker.signal(signal.SIGKILL)
        survivors = _wait_exited(stubborn, REAP_SECONDS)
        for worker in survivors:
            log.error("worker process %d survived SIGKILL for %.0fs", worker.pid, REAP_SECONDS)
        log.warning(
            "killed worker processes %s of abandoned jobs",
            ", ".join(str(w.pid) for w in victims),
        )
        if survivors:
            given_up({victims[w] for w in survivors})

    def join(self, deadline: float) -> None:
        for reaper in self._reapers:
            reaper.join(max(deadline - time.monotonic(), 0))

    def children(self) -> int:
        with self._lock:
            return len(self._workers)

    def describe(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            pids = {w.job_id: w.pid for w in self._workers if w.job_id is not None}
            snapshot["processes"] = sorted(w.pid for w in self._workers)
        snapshot["kind"] = "process"
        for running in snapshot["running"]:
            running["pid"] = pids.get(running["job_id"])


def _wait_exited(workers: list[_Worker], seconds: float) -> list[_Worker]:
    """Wait until each has been reaped by its owner thread; return those that were not."""
    deadline = time.monotonic() + seconds
    for worker in workers:
        worker.exited.wait(max(deadline - time.monotonic(), 0))
    return [w for w in workers if not w.exited.is_set()]


def _log_config() -> dict[str, str]:
    """The daemon's log level and format, for the children to log the same way."""
    root = logging.getLogger()
    level = logging.getLevelName(root.getEffectiveLevel())
    json_format = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return {
        "level": level if level in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"} else "INFO",
        "format": "json" if json_format else "text",
    }
