"""The chaos run: thousands of jobs through a daemon that is reloaded, stopped and killed.

`run_chaos` drives the real daemon with a seeded random schedule (config
rewrites, bad configs, SIGHUP, SIGTERM, a second SIGTERM, kill -9, each stop
followed by a restart) while producers add jobs with the real CLI; then it
lets the last daemon finish the queue and stops it. `verify` checks what the
O_APPEND task log, the daemons' own logs and counters, and the queue say.
The schedule is a function of the seed; the timing of the machine is not, so
a seed replays the same actions in the same order, not the same interleaving.

The test module and bench/chaos.py both call `run_chaos`, then
tests/support/chaos_verify.py's `verify`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.daemon import LABEL, Daemon, DaemonFactory, render_config, write_atomic
from tests.support.tasks import append
from tests.support.waiting import wait_until

TASKS = "tests.support.chaos_tasks"
MAX_ATTEMPTS = 5
LEASE_SECONDS = 5.0  # short, so a killed daemon's jobs come back soon
GRACES = (0.2, 0.5, 1.0, 2.0)
STOP_TIMEOUT = 60.0  # a stop takes at most the grace; the rest is the machine's noise

# (action, weight): mostly reloads, a stop or a kill every few seconds.
ACTIONS = (
    ("rewrite", 30),  # a new valid config; the watcher reloads it
    ("rewrite_hup", 15),  # a new valid config and a SIGHUP at once
    ("hup", 10),  # SIGHUP with nothing changed
    ("bad", 5),  # an invalid config: rejected, the running one stays
    ("pause", 10),
    ("term", 7),
    ("double_term", 2),
    ("kill", 7),
)


@dataclass
class Lifetime:
    """One daemon process, from its start to its end."""

    index: int
    daemon: Daemon
    ended: str = ""  # term, double_term, kill, final
    rc: int | None = None


@dataclass
class ChaosResult:
    seed: int
    jobs: int
    seconds: float
    log: Path
    kinds: dict[int, str]  # job number -> coop, slow, flaky, doomed, stubborn
    lifetimes: list[Lifetime]
    actions: collections.Counter[str]
    dead: list[dict[str, Any]]
    stats: dict[str, Any]
    final_counters: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        ends = collections.Counter(lt.ended for lt in self.lifetimes)
        why = collections.Counter(" ".join(job["error"].split()[:2]) for job in self.dead)
        return (
            f"chaos seed {self.seed}: {self.jobs} jobs, {self.seconds:.0f}s of chaos,"
            f" {len(self.lifetimes)} daemon lifetimes {dict(ends)}, actions {dict(self.actions)},"
            f" {len(self.dead)} dead {dict(why)}"
        )


def make_jobs(rng: random.Random, count: int, log: Path) -> tuple[list[dict[str, Any]], dict]:
    """The job mix: mostly short cooperative jobs, some slow, flaky, doomed and stubborn."""
    jobs = []
    kinds = {}
    for n in range(count):
        kind = rng.choices(("coop", "slow", "flaky", "doomed", "stubborn"), (70, 5, 12, 4, 9))[0]
        payload: dict[str, Any] = {"log": str(log), "n": n}
        if kind == "coop":
            payload["seconds"] = round(rng.uniform(0, 0.03), 3)
        elif kind == "slow":
            payload["seconds"] = round(rng.uniform(0.3, 1.2), 3)
        elif kind == "flaky":
            payload.update(seconds=round(rng.uniform(0, 0.02), 3), fail=rng.randint(1, 2))
        elif kind == "doomed":
            payload.update(seconds=0, fail=10 * MAX_ATTEMPTS)
        else:
            payload["seconds"] = round(rng.uniform(0.05, 0.8), 3)
        task = "flaky" if kind == "doomed" else kind
        jobs.append({"task": task, "payload": payload})
        kinds[n] = kind
    return jobs, kinds


def make_config(rng: random.Random, queue_url: str) -> dict[str, dict[str, Any]]:
    """A valid config: one pool or two named ones, random workers and grace, task refs."""
    tasks = {
        "coop": f"{TASKS}:{rng.choice(('coop', 'coop_again'))}",
        "slow": f"{TASKS}:slow",
        "flaky": f"{TASKS}:flaky",
        "stubborn": f"{TASKS}:stubborn",
    }
    if rng.random() < 0.3:
        tasks["spare"] = "drainpool.tasks.examples:noop"  # a task no job uses: added and removed
    config: dict[str, dict[str, Any]] = {
        "shutdown": {"grace_seconds": rng.choice(GRACES)},
        "reload": {"watch": True, "debounce_ms": 50},
        "queue": {
            "url": queue_url,
            "lease_seconds": LEASE_SECONDS,
            "max_attempts": MAX_ATTEMPTS,
            "retry_backoff_seconds": 0.05,
            "retry_backoff_max_seconds": 0.5,
            "poll_interval_seconds": 0.05,
        },
        "metrics": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "INFO"},
    }
    if rng.random() < 0.5:
        config["pool"] = {"workers": rng.randint(2, 8)}
    else:
        fast = ["coop", "flaky", *(["spare"] if "spare" in tasks else [])]
        config["pools"] = {
            "fast": {"workers": rng.randint(2, 6), "tasks": fast},
            "slow": {
                "workers": rng.randint(1, 4),
                "tasks": ["slow", "stubborn"],
                "grace_seconds": rng.choice(GRACES),
            },
        }
    config["tasks"] = tasks
    return config


def one_pool_config(queue_url: str, workers: int) -> dict[str, dict[str, Any]]:
    """Every task, one pool: for the producers' CLI and for the calm at the end."""
    config = make_config(random.Random(0), queue_url)
    config.pop("pools", None)
    config["pool"] = {"workers": workers}
    return config


def bad_config(good: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    bad = {section: dict(values) for section, values in good.items()}
    bad["shutdown"]["grace_seconds"] = -1.0
    return bad


class _Chaos:
    """The state of one run: the config file, the current daemon, what was done."""

    def __init__(
        self, factory: DaemonFactory, tmp: Path, seed: int, queue_url: str, out: Callable
    ) -> None:
        self.factory = factory
        self.tmp = tmp
        self.rng = random.Random(f"{seed}-schedule")
        self.queue_url = queue_url
        self.out = out
        self.log = tmp / "tasks.log"
        self.config = tmp / "drainpool.toml"
        self.producer = tmp / "producer.toml"  # always valid: the CLI reads it, not the daemon
        self.good = make_config(self.rng, queue_url)
        self.bad = False
        self.lifetimes: list[Lifetime] = []
        self.actions: collections.Counter[str] = collections.Counter()
        write_atomic(self.config, render_config(self.good))
        write_atomic(self.producer, render_config(one_pool_config(queue_url, 1)))

    @property
    def current(self) -> Lifetime:
        return self.lifetimes[-1]

    def start(self) -> None:
        """Start the next lifetime (on a valid config), marking its start in the task log."""
        if self.bad:
            self.write(make_config(self.rng, self.queue_url))
        index = len(self.lifetimes)
        append(str(self.log), f"lifetime {index}")  # every line below is this lifetime's
        self.lifetimes.append(Lifetime(index, self.factory.start(self.config)))

    def write(self, config: dict[str, dict[str, Any]], *, bad: bool = False) -> None:
        write_atomic(self.config, render_config(config))
        self.bad = bad
        if not bad:
            self.good = config

    def enqueue(self, jobs: list[dict[str, Any]], chunk: int) -> None:
        path = self.tmp / f"jobs-{chunk}.jsonl"
        path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
        result = self.factory.cli("enqueue", "--file", str(path), config=self.producer)
        assert result.returncode == 0, result.stderr

    def stop(self, how: str) -> None:
        daemon = self.current.daemon
        if how == "kill":
            daemon.signal(signal.SIGKILL)
        else:
            daemon.signal(signal.SIGTERM)
            if how == "double_term":
                time.sleep(self.rng.uniform(0, 0.3))  # pacing: somewhere in the drain
                with contextlib.suppress(ProcessLookupError):
                    daemon.signal(signal.SIGTERM)
        self.current.rc = daemon.wait_exit(STOP_TIMEOUT)
        self.current.ended = how

    def act(self, action: str) -> None:
        self.actions[action] += 1
        daemon = self.current.daemon
        if action in ("rewrite", "rewrite_hup"):
            self.write(make_config(self.rng, self.queue_url))
            if action == "rewrite_hup":
                daemon.signal(signal.SIGHUP)
        elif action == "hup":
            daemon.signal(signal.SIGHUP)
        elif action == "bad":
            self.write(bad_config(self.good), bad=True)
        elif action in ("term", "double_term", "kill"):
            self.stop(action)
            self.start()

    def queue_stats(self) -> dict[str, Any]:
        result = self.factory.cli("queue", "stats", "--json", config=self.producer)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def run_chaos(
    factory: DaemonFactory,
    tmp: Path,
    *,
    jobs: int,
    seconds: float,
    seed: int,
    queue_url: str = "sqlite:///queue.db",
    out: Callable[[str], None] = print,
) -> ChaosResult:
    """Run the schedule for `seconds` while `jobs` jobs are added; finish the queue; stop."""
    out(f"chaos seed {seed} (replay: DRAINPOOL_CHAOS_SEED={seed}, or bench/chaos.py --seed {seed})")
    chaos = _Chaos(factory, tmp, seed, queue_url, out)
    all_jobs, kinds = make_jobs(random.Random(f"{seed}-jobs"), jobs, chaos.log)
    # Two fifths at once, the rest in chunks over the first two thirds of the run.
    chunks = [all_jobs[: jobs * 2 // 5]]
    rest = all_jobs[jobs * 2 // 5 :]
    size = max(len(rest) // 6, 1)
    chunks += [rest[i : i + size] for i in range(0, len(rest), size)]
    chaos.enqueue(chunks[0], 0)
    chaos.start()
    begin = time.monotonic()
    due = [begin + seconds * 2 / 3 * i / max(len(chunks) - 1, 1) for i in range(len(chunks))]
    next_chunk = 1
    names = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]
    while time.monotonic() < begin + seconds:
        if next_chunk < len(chunks) and time.monotonic() >= due[next_chunk]:
            chaos.enqueue(chunks[next_chunk], next_chunk)
            next_chunk += 1
            continue
        chaos.act(chaos.rng.choices(names, weights)[0])
        time.sleep(chaos.rng.uniform(0.1, 1.0))  # pacing of the schedule, not a check
    for i in range(next_chunk, len(chunks)):
        chaos.enqueue(chunks[i], i)
    for how in ("term", "kill"):  # whatever the dice said, each kind of stop happens
        if how not in chaos.actions:
            chaos.act(how)
    # Calm: one pool with 8 workers (the dice may have left a slow pool with one), then
    # the last daemon finishes everything (killed daemons' leases run out within
    # LEASE_SECONDS).
    chaos.write(one_pool_config(queue_url, 8))
    chaos.current.daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: chaos.current.daemon.metric("drainpool_pool_workers") == 8,
        what=f"the daemon on the calm config (seed {seed})",
    )

    def drained() -> dict[str, Any] | None:
        stats = chaos.queue_stats()
        return stats if stats["ready"] + stats["delayed"] + stats["leased"] == 0 else None

    calm = time.monotonic()
    wait_until(drained, timeout=max(180.0, jobs / 10), what=f"the queue to drain (seed {seed})")
    out(f"chaos seed {seed}: the queue drained {time.monotonic() - calm:.1f}s after the chaos")
    final = chaos.current.daemon
    counters = per_task(final.metrics())
    final.signal(signal.SIGTERM)
    chaos.current.rc = final.wait_exit(STOP_TIMEOUT)
    chaos.current.ended = "final"
    dead = factory.cli(
        "queue", "dead", "list", "--json", "--limit", "1000000", config=chaos.producer
    )
    assert dead.returncode == 0, dead.stderr
    result = ChaosResult(
        seed,
        jobs,
        seconds,
        chaos.log,
        kinds,
        chaos.lifetimes,
        chaos.actions,
        json.loads(dead.stdout),
        chaos.queue_stats(),
        counters,
    )
    out(result.summary())
    return result


def per_task(samples: dict[str, float]) -> dict[str, float]:
    """drainpool_tasks_* samples keyed `name{task="T"}`, summed over the pools that served T."""
    counters: collections.Counter[str] = collections.Counter()
    for key, value in samples.items():
        name, _, rest = key.partition("{")
        if name.startswith("drainpool_tasks_"):
            task = dict(LABEL.findall(rest)).get("task")
            counters[f'{name}{{task="{task}"}}'] += value
    return dict(counters)
