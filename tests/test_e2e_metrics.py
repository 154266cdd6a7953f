"""The live exposition of a real daemon that has seen every outcome, and a real Prometheus.

One daemon (module scope) runs jobs that complete, fail, are interrupted,
cancelled and abandoned, the last three in one reload drain. Its /metrics must
pass `promtool check metrics`, export every metric of the contract and every
metric the dashboard and the alert rules name; then a real Prometheus scrapes
it under load and every dashboard and alert expression returns data.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from drainpool.queue.sqlite import SqliteQueue
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import (
    REPO,
    Daemon,
    DaemonFactory,
    base_config,
    daemons,
    enqueue,
    render_config,
    write_atomic,
)
from tests.support.expressions import names_not_in
from tests.support.metric_names import SCRAPE_SERIES, missing_from_exposition
from tests.support.prometheus import (
    Prometheus,
    PrometheusError,
    dashboard_and_alert_expressions,
    promtool_check_metrics,
    running_prometheus,
)
from tests.support.promql import selectors
from tests.support.statedump import dump_now, thread_functions
from tests.support.waiting import wait_until

OVERRIDES: dict[str, dict[str, object]] = {
    "pool": {"workers": 3},
    "shutdown": {"grace_seconds": 1.0},
    "reload": {"watch": False},
    # A long lease: no renewal (a write) falls inside the test's hold of the write lock.
    "queue": {"max_attempts": 2, "retry_backoff_seconds": 0.05, "lease_seconds": 600},
    # A schedule that never ticks during the test (1 January): its series are exported.
    "schedules": {"yearly": {"cron": "0 0 1 1 *", "task": "noop"}},
}


@dataclass
class Scene:
    factory: DaemonFactory
    daemon: Daemon
    config: Path
    tmp: Path


def exposition(daemon: Daemon) -> str:
    code, body = daemon.get("/metrics")
    assert code == 200, body
    return body


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """A sample's value; a single-pool daemon's per-pool series carry pool="default"."""
    found = samples(text)
    exact = found.get((name, frozenset(labels.items())))
    if exact is None and "pool" not in labels:
        exact = found.get((name, frozenset({**labels, "pool": "default"}.items())))
    return exact


def running_tasks(daemon: Daemon) -> set[str]:
    return {r["task"] for pool in daemon.status()["pools"] for r in pool["running"]}


def reload_with(scene: Scene, **overrides: dict[str, object]) -> None:
    sections = {**OVERRIDES, **overrides}
    write_atomic(scene.config, render_config(base_config(scene.tmp, **sections)))
    scene.daemon.signal(signal.SIGHUP)


def cancel_in_a_reload_drain(scene: Scene) -> None:
    """Interrupt `sleep`, abandon `stray` and cancel one fetched job in one reload drain.

    A job is cancelled when the pool leased it but never started it before the
    drain began. With threads a handed job is picked up within microseconds, so
    the test makes the window wide and certain: it holds SQLite's write lock so
    the dispatcher's claim of a due job blocks, waits until the daemon's own
    state dump shows the dispatcher inside that fetch, starts the drain, and only
    then lets the claim through.
    """
    queue = SqliteQueue(scene.tmp / "queue.db")
    due = time.time() + 1.0
    queue.enqueue("noop", {}, delay=1.0)
    queue.close()
    lock = sqlite3.connect(scene.tmp / "queue.db", isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")
        wait_until(lambda: time.time() > due, what="the delayed job to fall due")

        def dispatcher_blocked_in_fetch() -> bool:
            functions = thread_functions(dump_now(scene.daemon), "default-g1-dispatch")
            # Innermost Python frame: the transaction runner, waiting in BEGIN IMMEDIATE.
            return any("fetch" in f for f in functions) and functions[-1] in ("_once", "run")

        # Twice in a row: a dump that caught the fetch's lock-free read in passing is not enough.
        wait_until(
            lambda: dispatcher_blocked_in_fetch() and dispatcher_blocked_in_fetch(),
            what="the dispatcher blocked on the write lock inside fetch",
        )
        reload_with(scene, pool={"workers": 4})
        scene.daemon.wait_log(r"pool default generation 1 draining \(reload\)")
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")  # lets the blocked claim through, into the drain
        lock.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("metrics")
    with daemons(tmp) as factory:
        config = factory.config(**OVERRIDES)
        daemon = factory.start(config)
        scene = Scene(factory, daemon, config, tmp)
        for _ in range(3):
            enqueue(factory, config, "noop")
        enqueue(factory, config, "fail", {"attempts": 1})  # fails once, then completes
        enqueue(factory, config, "fail")  # fails twice (max_attempts 2): dead
        wait_until(lambda: daemon.status()["queue"]["dead"] == 1, what="a dead job")
        wait_until(
            lambda: daemon.metric("drainpool_tasks_completed_total", task="fail") == 1,
            what="the retried job completed",
        )
        enqueue(factory, config, "sleep", {"seconds": 3600})
        enqueue(factory, config, "stray", {"first": 3600, "later": 0, "log": str(tmp / "s.log")})
        wait_until(lambda: running_tasks(daemon) == {"sleep", "stray"}, what="sleep and stray")
        cancel_in_a_reload_drain(scene)
        wait_until(
            lambda: (
                daemon.status()["state"] == "running"
                and daemon.status()["pools"][0]["generation"] == 2
            ),
            what="generation 2 running",
        )
        yield scene


def test_every_outcome_is_counted(scene: Scene) -> None:
    match = scene.daemon.wait_log(r"pool default generation 1 ended: (.*)")
    ended = dict(part.split() for part in match.group(1).split(", "))
    assert (ended["interrupted"], ended["cancelled"], ended["abandoned"]) == ("1", "1", "1")
    # Generation 2 runs the released jobs again: stray (quick now) and the cancelled noop.
    wait_until(
        lambda: scene.daemon.metric("drainpool_tasks_completed_total", task="noop") == 4,
        what="the cancelled job completed in generation 2",
    )
    wait_until(
        lambda: scene.daemon.metric("drainpool_tasks_completed_total", task="stray") == 1,
        what="the abandoned job completed in generation 2",
    )
    text = exposition(scene.daemon)
    for outcome, task in (
        ("completed", "noop"),
        ("failed", "fail"),
        ("interrupted", "sleep"),
        ("cancelled", "noop"),
        ("abandoned", "stray"),
    ):
        assert value(text, f"drainpool_tasks_{outcome}_total", task=task) >= 1, outcome
        if outcome != "cancelled":  # a cancelled job never ran, so it has no duration
            count = value(text, "drainpool_task_duration_seconds_count", task=task, outcome=outcome)
            assert count and count >= 1, outcome
    assert value(text, "drainpool_tasks_failed_total", task="fail") == 3
    assert value(text, "drainpool_tasks_in_flight", task="sleep") == 1
    assert value(text, "drainpool_drain_duration_seconds_count", reason="reload") == 1
    assert value(text, "drainpool_drain_duration_seconds_count", reason="shutdown") == 0
    assert value(text, "drainpool_pool_restarts_total", reason="sighup") == 1
    assert value(text, "drainpool_pool_generation") == 2
    assert value(text, "drainpool_pool_workers") == 4
    assert value(text, "drainpool_stray_threads") == 1  # the abandoned first run sleeps on
    assert value(text, "drainpool_queue_jobs", state="dead") == 1
    assert value(text, "drainpool_config_reloads_total", result="applied") == 1
    assert value(text, "drainpool_config_last_reload_successful") == 1
    assert value(text, "drainpool_state", drainpool_state="running") == 1


def test_exposition_passes_promtool_check_metrics(scene: Scene) -> None:
    assert promtool_check_metrics(exposition(scene.daemon)) == []


def test_every_contract_dashboard_and_alert_metric_is_exported(scene: Scene) -> None:
    text = exposition(scene.daemon)
    assert missing_from_exposition(text) == []
    exported = {name for name, _ in samples(text)} | SCRAPE_SERIES
    absent = names_not_in(exported)
    assert not absent, f"named by the dashboard or the alerts but not exported: {absent}"


def test_labels_are_bounded(scene: Scene) -> None:
    """`task` is a configured name, never a job id; buckets reach an hour-long task."""
    text = exposition(scene.daemon)
    tasks = {dict(labels)["task"] for _, labels in samples(text) if "task" in dict(labels)}
    assert tasks == set(base_config(scene.tmp)["tasks"])
    buckets = {
        float(dict(labels)["le"])
        for name, labels in samples(text)
        if name == "drainpool_task_duration_seconds_bucket"
    }
    assert max(buckets - {float("inf")}) >= 3600


def test_prometheus_evaluates_every_expression_against_the_daemon_under_load(
    scene: Scene,
) -> None:
    factory, daemon, config = scene.factory, scene.daemon, scene.config
    load = "".join(
        json.dumps({"task": "sleep", "payload": {"seconds": 0.1}}) + "\n" for _ in range(400)
    )
    done = factory.cli("enqueue", "--file", "-", config=config, input=load)
    assert done.returncode == 0, done.stderr
    with running_prometheus(f"127.0.0.1:{daemon.port}", scene.tmp / "prometheus") as prom:
        prom.wait_for_targets_up()
        # Four scrapes while tasks complete, so every rate() window holds an increase.
        prom.wait_for('increase(drainpool_tasks_completed_total{task="sleep"}[4s]) > 0')
        assert daemon.status()["queue"]["ready"] > 0, "the load ran out before the checks"
        check_every_expression(prom)
        assert_rules_evaluated(prom)


def check_every_expression(prom: Prometheus) -> None:
    for expression in dashboard_and_alert_expressions():
        try:
            prom.query(expression.expr)
        except PrometheusError as error:
            pytest.fail(f"{expression.origin}: {error}\n{expression.expr}")
        if expression.origin.startswith(("panel", "variable")):
            prom.wait_for(expression.expr, timeout=20)
        # Rules and annotations are conditions, quiet while all is well; what they read
        # must still be there: each of their selectors returns series from the daemon.
        for selector in selectors(expression.expr):
            matchers = ", ".join(f"{m.label}{m.op}{json.dumps(m.value)}" for m in selector.matchers)
            prom.wait_for(f"{selector.name}{{{matchers}}}", timeout=20)


def assert_rules_evaluated(prom: Prometheus) -> None:
    def evaluated() -> bool:
        rules = prom.rules()
        return bool(rules) and all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
        )

    wait_until(evaluated, what="every alert rule evaluated without error")


def test_metrics_module_registers_nothing_at_import() -> None:
    """One registry per Metrics(): importing registers nothing, and two never collide."""
    probe = (
        "import prometheus_client\n"
        "names = lambda: {m.name for m in prometheus_client.REGISTRY.collect()}\n"
        "before = names()\n"
        "from drainpool.metrics import Metrics\n"
        "assert names() == before, names() - before\n"
        "first, second = Metrics(), Metrics()\n"
        "assert names() == before\n"
        "first.declare_pool('default', 2, 1, 10.0)\n"
        "generation = lambda m: m.registry.get_sample_value(\n"
        "    'drainpool_pool_generation', {'pool': 'default'})\n"
        "assert generation(first) == 1 and generation(second) is None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
