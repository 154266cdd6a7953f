"""Drive drainpool through its documented command line only (README, "Command line").

The bench never imports the daemon: it writes a TOML config, fills the queue
with `enqueue --file`, reads `queue stats --json`, and runs `run --config` as a
child with NOTIFY_SOCKET pointing at an inbox of its own. `check` raises
Unavailable with the reason when `check-config` cannot run at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from completion import wait_finished
from context import BENCH, REPO, Context, Unavailable
from harness import BenchError, Child, Inbox, notify_is, run_checked

TASKS_MODULE = "drainpool_tasks"  # bench/drainpool_tasks.py, on the daemon's PYTHONPATH
EX_CONFIG = 78


def config_text(
    tasks: dict[str, str],
    *,
    workers: int = 8,
    grace_seconds: float = 10.0,
    watch: bool = False,
    debounce_ms: int = 50,
    url: str = "sqlite:///queue.db",
    level: str = "INFO",
    retention_seconds: float | None = None,
) -> str:
    """A complete config with every documented key; tasks map names to adapter functions.

    `retention_seconds` None leaves the key out (the daemon's default, 86400).
    """
    task_lines = "\n".join(f'{name} = "{TASKS_MODULE}:{fn}"' for name, fn in tasks.items())
    retention = "" if retention_seconds is None else f"retention_seconds = {retention_seconds:g}\n"
    return f"""# written by bench/run.py
[pool]
workers = {workers}

[shutdown]
grace_seconds = {grace_seconds}

[reload]
watch = {"true" if watch else "false"}
debounce_ms = {debounce_ms}

[queue]
url = "{url}"
lease_seconds = 60
max_attempts = 5
retry_backoff_seconds = 1.0
{retention}
[metrics]
host = "127.0.0.1"
port = 0

[log]
level = "{level}"
format = "text"

[tasks]
{task_lines}
"""


def write_config(path: Path, text: str) -> None:
    """Write atomically (temp file + rename), as editors do, so a watcher never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def jobs_file(ctx: Context, task: str, n: int, payload: object = None) -> Path:
    """A JSONL file of `n` identical jobs, kept for the run (a million lines take a moment)."""
    body = json.dumps(payload if payload is not None else {}, sort_keys=True)
    tag = f"{task}-{n}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"
    path = ctx.work / "jobs" / f"{tag}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f'{{"task": {json.dumps(task)}, "payload": {body}}}'
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as out:
            for _ in range(n // 10_000):
                out.write((line + "\n") * 10_000)
            out.write((line + "\n") * (n % 10_000))
        os.replace(tmp, path)
    return path


class Drainpool:
    """One config directory of the daemon: its config file, its queue, its runs."""

    def __init__(
        self, ctx: Context, directory: Path, config: str, name: str = "drainpool.toml"
    ) -> None:
        self.ctx = ctx
        self.dir = directory
        self.config = directory / name
        write_config(self.config, config)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRAINPOOL_", "NOTIFY_"))}
        path = [str(REPO / "daemon"), str(BENCH), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        env.update(extra)
        return env

    def cli(self, *args: str, timeout: float = 900.0) -> str:
        argv = [sys.executable, "-m", "drainpool", *args, "--config", str(self.config)]
        return run_checked(argv, env=self.env(), cwd=self.dir, timeout=timeout)

    def check(self) -> None:
        """Fail clearly, once per config text, when the daemon or its config is not usable."""
        text = self.config.read_text()
        if text in self.ctx.accepted_configs:
            return
        try:
            self.cli("check-config", timeout=60)
        except BenchError as exc:
            message = str(exc)
            if f"exited {EX_CONFIG}" in message:
                raise BenchError(
                    f"the daemon rejects the bench's config {self.config}: {exc}"
                ) from exc
            raise Unavailable(
                f"`python -m drainpool check-config` does not work yet: {exc}"
            ) from exc
        self.ctx.accepted_configs.add(text)

    def enqueue_file(self, path: Path) -> float:
        """`enqueue --file`; the wall time of the whole command, start-up included."""
        start = time.monotonic()
        self.cli("enqueue", "--file", str(path))
        return time.monotonic() - start

    def enqueue_one(self, task: str, payload: object) -> float:
        start = time.monotonic()
        self.cli("enqueue", task, json.dumps(payload))
        return time.monotonic() - start

    def stats(self) -> dict[str, int]:
        out = self.cli("queue", "stats", "--json", timeout=120)
        try:
            data = json.loads(out)
        except json.JSONDecodeError as exc:
            raise BenchError(f"`queue stats --json` printed no JSON: {out[:200]!r}") from exc
        return {k: int(data[k]) for k in ("ready", "delayed", "leased", "dead")}

    def fill_to(self, task: str, depth: int) -> int:
        """Top the queue up to `depth` waiting jobs; returns how many were added."""
        counts = self.stats()
        missing = depth - counts["ready"] - counts["delayed"]
        if missing > 0:
            self.enqueue_file(jobs_file(self.ctx, task, missing))
        return max(missing, 0)

    def start(
        self,
        notify: Inbox,
        *,
        events: Inbox | None = None,
        expect: int = 0,
        redis_url: str | None = None,
        report_every: int = 100,
    ) -> Child:
        """`run --config` as a child; the bench's task adapters report to `events`."""
        extra = {
            "NOTIFY_SOCKET": notify.path,
            "BENCH_EXPECT": str(expect),
            "BENCH_REPORT_EVERY": str(report_every),
        }
        if events is not None:
            extra["BENCH_EVENTS"] = events.path
        if redis_url is not None:
            extra["BENCH_REDIS_URL"] = redis_url
        argv = [sys.executable, "-m", "drainpool", "run", "--config", str(self.config)]
        return self.ctx.children.start("drainpool", argv, env=self.env(**extra), cwd=self.dir)

    def wait_ready(self, child: Child, notify: Inbox, since: int, timeout: float = 60.0) -> float:
        """The arrival time of READY=1 after `since`; BenchError if the daemon died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = notify.wait_for(notify_is("READY"), timeout=0.5, since=since)
            if ready is not None:
                return ready.received
            if not child.alive():
                raise BenchError(
                    f"drainpool exited {child.popen.returncode} before READY=1:\n{child.tail()}"
                )
        raise BenchError(f"no READY=1 from drainpool within {timeout:.0f} s:\n{child.tail()}")

    def stop(self, child: Child, timeout: float = 60.0) -> int:
        return self.ctx.children.stop(child, timeout=timeout)


def wait_done(events: Inbox, child: Child, n: int, timeout: float) -> float:
    """The task adapters' timestamp of the n-th completion (BENCH_EXPECT = n)."""
    deadline = time.monotonic() + timeout
    want = f"done {n} "
    while time.monotonic() < deadline:
        message = events.wait_for(lambda m: m.text.startswith(want), timeout=0.5)
        if message is not None:
            return float(message.text.split()[2])
        if not child.alive():
            raise BenchError(
                f"drainpool exited {child.popen.returncode} before job {n} was done:"
                f"\n{child.tail()}"
            )
    raise BenchError(f"drainpool did not finish {n} jobs within {timeout:.0f} s")


def steady_rate(events: Inbox, upto: int) -> float | None:
    """Jobs/s between the first and the last progress report up to `upto` completions.

    Start-up and the first fetch are outside this window, so it is the pool's
    sustained rate; None when fewer than two reports arrived.
    """
    points = []
    for message in events.messages():
        parts = message.text.split()
        if parts[0] == "done" and int(parts[1]) <= upto:
            points.append((int(parts[1]), float(parts[2])))
    if len(points) < 2:
        return None
    (n0, t0), (n1, t1) = min(points), max(points)
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def shared_queue_rate(ctx: Context, dp: Drainpool, n: int, count: int, timeout: float) -> float:
    """`count` daemons of `dp` on its `n` queued jobs: jobs/s, first start to last done.

    Each done is counted by a Redis INCR, the one counter daemons sharing a
    queue share (the tasks are the `_incr` adapters).
    """
    redis = ctx.redis()
    boxes = [Inbox(f"notify{i}") for i in range(count)]
    children: list[Child] = []
    try:
        children.extend(dp.start(box, expect=n, redis_url=redis.url) for box in boxes)
        finished = wait_finished(redis.client, lambda: all(c.alive() for c in children), timeout)
        if finished is None:
            raise BenchError(f"{count} daemons did not finish {n} jobs ({dp.dir.name})")
    finally:
        for child in children:
            dp.stop(child)
        for box in boxes:
            box.close()
    return n / (finished - children[0].started_at)
