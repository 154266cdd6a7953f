"""Process workers (`pool.kind = "process"`): each worker slot runs its tasks in a child process.

A Python thread cannot be killed, so a task that never checks its context
can only be abandoned; a process can. ProcessPool is a Pool whose Python
tasks are proxies: the worker thread sends the job to its own child (see
drainpool.procworker) and waits for the outcome, so the dispatcher, batching,
leases, the settle step, the drain and the metrics are the Pool's own, in
the daemon. Command tasks already run a separate program and are run by the
worker thread itself, as in a thread pool.

At a stop, begin_drain forwards the shutdown event to every child, where
ctx.sleep and ctx.check see it at once. At the grace deadline abandon()
releases the jobs still running and kills their children's process groups:
SIGTERM, then SIGKILL after KILL_AFTER_SECONDS; it returns once they are
reaped, so no child outlives the drain. A child that dies on its own
(segfault, os._exit, the OOM killer) fails its job with that reason and is
replaced at once while the pool runs.
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
from typing import Any

from drainpool.context import (
    Interrupted,
    JobFailed,
    TaskContext,
    child_environment,
    exit_description,
)
from drainpool.logs import JsonFormatter
from drainpool.pool import Pool
from drainpool.procworker import BOOTSTRAP, Channel
from drainpool.queue.base import Job

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
        self.job_id: str | None = None  # guarded by the pool's lock
        self.killed = False  # by abandon(): its death is expected, not news

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


class ProcessPool(Pool):
    """A Pool whose Python tasks run in one child process per worker slot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        remote = {name: s.source for name, s in self.tasks.items() if s.kind != "command"}
        self.tasks = {
            name: spec if spec.kind == "command" else dataclasses.replace(spec, handler=self._call)
            for name, spec in self.tasks.items()
        }
        self._argv = [sys.executable, "-c", BOOTSTRAP, "drainpool-worker"]
        self._child_config = {"tasks": remote, "log": _log_config()}
        self._workers: list[_Worker] = []  # every child not yet reaped; under self._lock
        self._local = threading.local()  # the worker thread's own _Worker

    # -- worker threads ----------------------------------------------------------

    def _worker_loop(self) -> None:
        # No Python task to serve (only commands): no child to keep idle.
        self._local.worker = self._spawn_logged() if self._child_config["tasks"] else None
        try:
            super()._worker_loop()
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
            worker.job_id = ctx.job_id
        try:
            reply = worker.call(message)
        except WorkerDied as died:
            self._replace(worker, str(died), f"running job {ctx.job_id} ({ctx.task})")
            if worker.killed:  # by abandon(): the job is already released, the outcome ignored
                raise Interrupted from None
            raise JobFailed(f"worker process died: {died}") from None
        finally:
            with self._lock:
                worker.job_id = None
        outcome = reply["outcome"]
        if outcome == "completed":
            return reply.get("result")
        if outcome == "interrupted":
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
            log.error("pool %s: cannot start a worker process: %s", self.config.name, exc)
            return None

    def _replace(self, worker: _Worker, reason: str, doing: str) -> None:
        """Forget a dead child; start its successor unless the pool is stopping."""
        self._forget(worker)
        worker.dispose()
        self._local.worker = None
        if worker.killed:
            return  # abandoned at the deadline: the pool is stopping
        log.warning(
            "worker process %d died %s: %s%s",
            worker.pid,
            doing,
            reason,
            "" if self._stopping else "; starting a new one",
        )
        if not self._stopping:
            self._local.worker = self._spawn_logged()

    def _forget(self, worker: _Worker) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._workers.remove(worker)

    # -- lifecycle (the supervisor's interface, as Pool) ---------------------------

    def begin_drain(self) -> int:
        cancelled = super().begin_drain()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.send_shutdown()
        return cancelled

    def abandon(self) -> list[Job]:
        """Release what still runs, then kill those children and wait until they are reaped."""
        jobs = super().abandon()  # marked abandoned first: the deaths below change no outcome
        ids = {job.id for job in jobs}
        with self._lock:
            victims = [w for w in self._workers if w.job_id in ids]
        for worker in victims:
            worker.killed = True
            worker.signal(signal.SIGTERM)
        stubborn = _wait_exited(victims, KILL_AFTER_SECONDS)
        for worker in stubborn:
            log.warning("worker process %d ignored SIGTERM: SIGKILL", worker.pid)
            worker.signal(signal.SIGKILL)
        for worker in _wait_exited(stubborn, REAP_SECONDS):
            log.error("worker process %d survived SIGKILL for %.0fs", worker.pid, REAP_SECONDS)
        if victims:
            log.warning(
                "killed worker processes %s of abandoned jobs",
                ", ".join(str(w.pid) for w in victims),
            )
        return jobs

    def join(self, timeout: float = 5.0) -> None:
        """Wait for every thread: none can be stuck, abandon() killed what they waited for."""
        deadline = time.monotonic() + max(timeout, CLOSE_SECONDS + 1.0)
        self._dispatcher.join(max(deadline - time.monotonic(), 0))
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def stray_threads(self) -> int:
        with self._lock:
            children = len(self._workers)
        return super().stray_threads() + children

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        with self._lock:
            pids = {w.job_id: w.pid for w in self._workers if w.job_id is not None}
            snap["processes"] = sorted(w.pid for w in self._workers)
        snap["kind"] = "process"
        for running in snap["running"]:
            running["pid"] = pids.get(running["job_id"])
        return snap


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
