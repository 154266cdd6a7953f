"""The application's side (issue 24): typed payloads, the Client, hooks, OpenTelemetry.

Real parts throughout: the real daemon as a subprocess, a real SQLite file, the
real OpenTelemetry SDK in this process (the producer) and in the daemon (which
exports through tests/support/appside_tasks.py to a file read here), real mypy.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from drainpool import Client
from drainpool.payloads import PayloadInvalid
from drainpool.queue.base import JobFailed, JobState
from drainpool.queue.sqlite import SCHEMA_VERSION, SqliteQueue

from tests.support.appside_tasks import ExportRequest, ExportResult, export, greet
from tests.support.daemon import REPO, DaemonFactory, queue_stats, write_atomic
from tests.support.waiting import wait_until

TASKS = {
    "export": "tests.support.appside_tasks:export",
    "export_async": "tests.support.appside_tasks:export_async",
    "greet": "tests.support.appside_tasks:greet",
    "inner_span": "tests.support.appside_tasks:inner_span",
}


def config(factory: DaemonFactory, **sections: dict[str, Any]) -> Path:
    return factory.config(tasks=TASKS, **sections)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- typed payloads -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_typed_task_gets_its_model_and_its_result_is_stored_through_it(
    factory: DaemonFactory, kind: str
) -> None:
    path = config(factory, pool={"kind": kind, "workers": 2})
    factory.start(path)
    with Client.from_config(path) as client:
        handle = client.enqueue(export, ExportRequest(path="a.csv", rows=3))
        async_handle = client.enqueue("export_async", {"path": "b", "rows": "4"})  # lax: "4"
        greeting = client.enqueue(greet, {"name": "ada"})
        result = handle.result(timeout=60)
        assert result == ExportResult(path="A.CSV", lines=6)
        assert handle.status() is JobState.COMPLETED
        assert handle.wait(timeout=5).result == {"path": "A.CSV", "lines": 6}  # stored as JSON
        assert async_handle.result(timeout=60) == ExportResult(path="b", lines=4)
        assert greeting.result(timeout=60) == "hello ada"


def test_payload_that_cannot_fit_is_refused_by_the_producers(factory: DaemonFactory) -> None:
    path = config(factory)
    with Client.from_config(path) as client:
        with pytest.raises(PayloadInvalid) as refused:
            client.enqueue(export, {"rows": -1})
        assert refused.value.errors == [
            "payload.path: Field required",
            "payload.rows: Input should be greater than or equal to 0",
        ]
        with pytest.raises(PayloadInvalid, match=r"payload\.name: Field required"):
            client.enqueue("greet", {"nom": "ada"})
    done = factory.cli("enqueue", "export", '{"rows": "many"}', config=path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "drainpool: export: payload.path: Field required",
        "drainpool: export: payload.rows: Input should be a valid integer, unable to parse string"
        " as an integer",
    ]
    # The first example: the example `sleep` task is typed now.
    as_list = factory.cli("enqueue", "sleep", "[1, 2]", config=path)
    assert as_list.returncode == 2
    assert as_list.stderr == "drainpool: sleep: payload: Input should be a valid dictionary\n"
    jobs = factory.tmp / "jobs.jsonl"
    jobs.write_text(
        '{"task": "greet", "payload": {"name": "a"}}\n{"task": "greet", "payload": {}}\n'
    )
    bulk = factory.cli("enqueue", "--file", str(jobs), config=path)
    assert bulk.returncode == 2
    assert f"{jobs}:2: payload.name: Field required" in bulk.stderr.splitlines()
    assert queue_stats(factory, path)["ready"] == 0  # nothing was queued
    assert "when this machine can import" in factory.cli("enqueue", "--help").stdout


def test_producer_that_cannot_import_the_task_still_enqueues(factory: DaemonFactory) -> None:
    path = factory.config(tasks={"remote": "tests.support.not_on_this_machine:task"})
    done = factory.cli("enqueue", "remote", '{"anything": [1]}', config=path)
    assert done.returncode == 0, done.stderr
    with Client.from_config(path) as client:
        client.enqueue("remote", [1, 2])
    assert queue_stats(factory, path)["ready"] == 2


def test_payload_that_cannot_fit_in_the_queue_is_dead_at_once(factory: DaemonFactory) -> None:
    path = config(factory, queue={"max_attempts": 5})
    with Client.from_url(f"sqlite:///{factory.tmp / 'queue.db'}") as unchecked:  # no task names
        handle = unchecked.enqueue("export", {"path": "x", "rows": "many"})
        factory.start(path)
        with pytest.raises(JobFailed) as dead:
            handle.result(timeout=60)
    info = dead.value.info
    assert info.attempts == 1  # no retries: no attempt could ever fit
    assert info.error == (
        "payload does not fit ExportRequest: payload.rows: Input should be a valid integer,"
        " unable to parse string as an integer"
    )


def test_model_the_daemon_cannot_resolve_is_a_config_error_naming_the_task(
    factory: DaemonFactory,
) -> None:
    path = config(factory)
    text = path.read_text().replace(
        'export = "tests.support.appside_tasks:export"',
        'export = "tests.support.appside_tasks:unresolved"',
    )
    write_atomic(path, text)
    checked = factory.cli("check-config", config=path)
    assert checked.returncode == 78
    (line,) = checked.stderr.splitlines()
    assert "tasks.export: cannot resolve its annotations: NameError" in line
    assert "NoSuchModel" in line and str(path) in line


# -- hooks ------------------------------------------------------------------------


def test_hooks_run_around_each_job_never_fail_it_and_reload(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    hook_log = tmp_path / "hooks.log"
    hooks = "tests.support.appside_tasks"
    path = config(
        factory,
        hooks={"before_job": f"{hooks}:broken", "on_outcome": f"{hooks}:outcome"},
        shutdown={"grace_seconds": 1.0},
    )
    daemon = factory.start(path, env={"APPSIDE_HOOK_LOG": str(hook_log)})
    with Client.from_config(path) as client:
        first = client.enqueue(export, ExportRequest(path="p", rows=1))
        assert first.result(timeout=60).lines == 2  # the broken hook did not fail the job
        daemon.wait_log(f"hook before_job failed for job {first.id} \\(export\\)")
        assert "RuntimeError: a hook that always fails" in daemon.log()
        wait_until(lambda: len(lines(hook_log)) == 1, what="on_outcome ran")
        assert lines(hook_log) == [
            {"hook": "on_outcome", "job": first.id, "task": "export", "outcome": "completed"}
        ]
        # Reload: a stuck before_job is bounded by the grace (1 s); jobs still complete.
        text = path.read_text()
        for old, new in (("broken", "stuck"), (f'"{hooks}:outcome"', f'"{hooks}:after"')):
            text = text.replace(old, new)
        text = text.replace("on_outcome =", "after_job =")
        write_atomic(path, text)
        daemon.wait_log("pools restarted|generation 2|reload applied")
        second = client.enqueue("export", {"path": "q", "rows": 2})
        assert second.result(timeout=60).lines == 4
        daemon.wait_log(f"hook before_job still runs for job {second.id} after 1.0s")
        wait_until(lambda: any(e["hook"] == "after_job" for e in lines(hook_log)), what="after")
        assert {"hook": "stuck", "job": second.id, "task": "export", "outcome": None} in lines(
            hook_log
        )
        assert {
            "hook": "after_job",
            "job": second.id,
            "task": "export",
            "outcome": "completed",
            "error": "",
        } in lines(hook_log)


def test_on_outcome_hears_of_jobs_that_never_started(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """A reserved job dropped by a cancel (aborted) or by the drain (cancelled) is reported."""
    hook_log = tmp_path / "hooks.log"
    run_log = tmp_path / "runs.log"
    path = factory.config(
        tasks={"record": "tests.support.tasks:record"},
        pool={"workers": 1, "prefetch": 2},
        hooks={"on_outcome": "tests.support.appside_tasks:outcome"},
    )
    daemon = factory.start(path, env={"APPSIDE_HOOK_LOG": str(hook_log)})
    with Client.from_config(path) as client:
        running, dropped, drained = (
            client.enqueue("record", {"log": str(run_log), "seconds": 60}) for _ in range(3)
        )
        wait_until(
            lambda: run_log.exists() and f"start {running.id} 1" in run_log.read_text(),
            what="job 1 runs",
        )
        # Leased into the pool's reserve: the record says running, though it has not started.
        wait_until(
            lambda: all(h.status() is JobState.RUNNING for h in (dropped, drained)),
            what="two jobs in the reserve",
        )
        dropped.cancel()
        wait_until(lambda: dropped.status() is JobState.CANCELLED, what="the cancel landed")
        wait_until(lambda: len(lines(hook_log)) == 1, what="on_outcome of the dropped job")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    reported = {(e["job"], e["outcome"]) for e in lines(hook_log)}
    assert reported == {
        (dropped.id, "aborted"),
        (drained.id, "cancelled"),
        (running.id, "interrupted"),
    }
    assert f"start {dropped.id}" not in run_log.read_text()


def test_hook_that_does_not_import_is_a_config_error(factory: DaemonFactory) -> None:
    path = config(factory, hooks={"after_job": "tests.support.no_such_module:hook"})
    checked = factory.cli("check-config", config=path)
    assert checked.returncode == 78
    (line,) = checked.stderr.splitlines()
    assert f"{path}:" in line and "hooks.after_job: cannot import" in line
    assert "no_such_module" in line


# -- OpenTelemetry ------------------------------------------------------------------


def test_trace_runs_from_the_enqueuing_span_to_each_attempt_across_processes(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans_file = tmp_path / "spans.jsonl"
    path = config(
        factory,
        tracing={"enabled": True, "exporter": "tests.support.appside_tasks:span_file_exporter"},
        log={"level": "DEBUG"},
    )
    env = {"APPSIDE_SPAN_FILE": str(spans_file), "OTEL_BSP_SCHEDULE_DELAY": "50"}
    daemon = factory.start(path, env=env)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("the-application")
    with Client.from_config(path) as client:
        with tracer.start_as_current_span("POST /exports") as request:
            handle = client.enqueue(export, ExportRequest(path="t", rows=1))
        handle.result(timeout=60)
        # A traceparent that is not one: ignored, the attempt starts a trace of its own.
        bad = client.queue.enqueue("greet", {"name": "x"}, meta={"traceparent": "00-zz-yy-01"})
        client.enqueue(greet, {"name": "y"}).result(timeout=60)
        inner = client.enqueue("inner_span", {})
        inner.result(timeout=60)
        failing = client.enqueue("inner_span", {"fail": True})
    (producer,) = memory.get_finished_spans()
    assert producer.name == "POST /exports"
    wanted = f"{request.get_span_context().trace_id:032x}"

    def job_spans() -> dict[str, dict[str, Any]]:
        return {
            s["attributes"]["drainpool.job.id"]: s
            for s in lines(spans_file)
            if s["name"].startswith("drainpool.job")
        }

    wait_until(lambda: len(job_spans()) == 5, what="five attempt spans exported")
    span = job_spans()[handle.id]
    assert span["trace_id"] == wanted
    assert span["parent_id"] == f"{request.get_span_context().span_id:016x}"
    assert span["attributes"] == {
        "drainpool.task": "export",
        "drainpool.job.id": handle.id,
        "drainpool.job.attempt": 1,
        "drainpool.pool": "default",
        "drainpool.generation": 1,
        "drainpool.outcome": "completed",
    }
    assert span["status"] == "UNSET"  # success leaves it unset, as the spec asks
    orphan = job_spans()[bad]
    assert orphan["parent_id"] is None and orphan["trace_id"] != wanted
    assert daemon.log().count("malformed traceparent") == 1
    # The task's own span is a child of its attempt's; a failed attempt says so.
    works = {s["parent_id"]: s for s in lines(spans_file) if s["name"] == "task work"}
    attempt = job_spans()[inner.id]
    assert works[attempt["span_id"]]["trace_id"] == attempt["trace_id"]
    assert (attempt["status"], attempt["events"]) == ("UNSET", [])
    failed = job_spans()[failing.id]
    assert failed["attributes"]["drainpool.outcome"] == "failed"
    assert (failed["status"], failed["events"]) == ("ERROR", ["failed"])
    # Drains and reloads are spans of their own.
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reload")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    names = {s["name"] for s in lines(spans_file)}
    assert {"drainpool.reload", "drainpool.drain"} <= names


def test_tracing_off_imports_nothing_and_a_pool_has_no_watch(tmp_path: Path) -> None:
    program = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from drainpool import Client, runtime
        from drainpool.observe import job_watch
        from drainpool.plan import plan_pools

        path = Path({str(tmp_path / "drainpool.toml")!r})
        path.write_text('[queue]\\nurl = "sqlite:///q.db"\\n[tasks]\\nnoop = '
                        '"drainpool.tasks.examples:noop"\\n')
        loaded, registry = runtime.load(path)
        (plan,) = plan_pools(loaded.settings, registry).values()
        assert job_watch(plan.config, 1) is None
        with Client.from_config(path) as client:
            client.enqueue("noop", {{}})
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- the queue's metadata column, and mypy for users ------------------------------------


def test_sqlite_file_of_schema_6_gains_the_meta_column_keeping_jobs(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    old = SqliteQueue(path)
    job_id = old.enqueue("t", {"kept": True})
    old.close()
    with sqlite3.connect(path) as conn:  # the file as schema 6 left it
        conn.execute("ALTER TABLE jobs DROP COLUMN meta")
        conn.execute("PRAGMA user_version = 6")
    conn.close()
    queue = SqliteQueue(path)
    try:
        traced = queue.enqueue("t", {}, meta={"traceparent": "x"})
        jobs = {job.id: job for job in queue.fetch(2, ["t"], 60)}
        assert jobs[job_id].payload == {"kept": True} and jobs[job_id].meta == {}
        assert jobs[traced].meta == {"traceparent": "x"}
    finally:
        queue.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_mypy_sees_the_result_type_of_a_typed_task(tmp_path: Path) -> None:
    user = tmp_path / "producer.py"
    user.write_text(
        textwrap.dedent(
            """
            from drainpool import Client
            from tests.support.appside_tasks import ExportRequest, export, export_async

            client = Client.from_url("sqlite:///q.db")
            handle = client.enqueue(export, ExportRequest(path="a", rows=1))
            reveal_type(handle.result())
            reveal_type(client.enqueue(export_async, {"path": "a", "rows": 1}).result())
            reveal_type(client.enqueue("export", {}).result())
            client.enqueue(export, 42)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", str(user)],
        cwd=REPO,
        env={**os.environ, "MYPYPATH": f"{REPO / 'daemon'}:{REPO}"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert out.count('Revealed type is "tests.support.appside_tasks.ExportResult"') == 2, out
    assert 'Revealed type is "Any"' in out, out
    assert "producer.py:10: error: Argument 1 to" in out, out  # 42 is no ExportRequest
    assert done.returncode == 1 and "Found 1 error in 1 file" in out, out
