"""Attempt spans through drainpool's batch span processor (drainpool.spanbatch), real SDK.

Each test builds its own TracerProvider with the processor and an in-memory
exporter (the process's global provider is left alone), except the first,
which runs a real process to its exit: what the last batch holds is exported
by the provider's shutdown then.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from drainpool import tracing
from drainpool.queue.base import Job
from drainpool.spanbatch import BatchSpans, Builder, settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
PARENT_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN = 0xB7AD6B7169203331
TRACEPARENT = f"00-{PARENT_TRACE:032x}-{PARENT_SPAN:016x}-01"
QUIET = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}  # no export by the clock during a test


def job(number: int, *, traceparent: str | None = TRACEPARENT) -> Job:
    meta = {} if traceparent is None else {"traceparent": traceparent}
    return Job(f"j{number}", "send", {}, 2, "token", 0.0, meta=meta)


def provider_with(*processors: Any) -> tuple[TracerProvider, Any]:
    provider = TracerProvider()
    for processor in processors:
        provider.add_span_processor(processor)
    return provider, provider.get_tracer("drainpool")


def attempt_spans(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {
        str(s.attributes["drainpool.job.id"]): s
        for s in spans
        if s.name.startswith("drainpool.job") and s.attributes
    }


def test_spans_left_in_the_queue_are_exported_at_exit_with_parent_and_attributes(
    tmp_path: Path,
) -> None:
    """600 attempts: one batch of 512 goes when full, the rest at the process's exit."""
    spans_file = tmp_path / "spans.jsonl"
    program = textwrap.dedent(
        f"""
        from opentelemetry import trace
        from drainpool import tracing
        from drainpool.queue.base import Job

        tracer = tracing.tracer("tests.support.appside_tasks:span_file_exporter")
        for number in range(600):
            meta = {{"traceparent": {TRACEPARENT!r}}} if number % 2 else {{}}
            job = Job(f"j{{number}}", "send", {{}}, 1, "token", 0.0, meta=meta)
            attempt = tracing.Attempt(tracer, job, "mail", 3)
            if number == 7:  # the task's own span, a child of its attempt's
                with trace.get_tracer("the-task").start_as_current_span("task work"):
                    pass
            outcome = "failed" if number % 5 == 0 else "completed"
            attempt.end(outcome, 0.0, "boom" if outcome == "failed" else "")
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        **QUIET,
        "APPSIDE_SPAN_FILE": str(spans_file),
        "PYTHONPATH": f"{REPO / 'daemon'}{os.pathsep}{REPO}",
    }
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "dropping" not in done.stderr
    lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
    spans = {s["attributes"]["drainpool.job.id"]: s for s in lines if s["name"] != "task work"}
    assert len(spans) == 600
    odd, even, failed = spans["j11"], spans["j12"], spans["j10"]
    assert (odd["trace_id"], odd["parent_id"]) == (f"{PARENT_TRACE:032x}", f"{PARENT_SPAN:016x}")
    assert even["parent_id"] is None and even["trace_id"] != odd["trace_id"]
    assert odd["name"] == "drainpool.job send"
    assert odd["attributes"] == {
        "drainpool.task": "send",
        "drainpool.job.id": "j11",
        "drainpool.job.attempt": 1,
        "drainpool.pool": "mail",
        "drainpool.generation": 3,
        "drainpool.outcome": "completed",
    }
    assert (odd["status"], odd["events"]) == ("UNSET", [])
    assert (failed["status"], failed["events"]) == ("ERROR", ["failed"])
    assert failed["attributes"]["drainpool.outcome"] == "failed"
    (work,) = [s for s in lines if s["name"] == "task work"]
    assert (work["trace_id"], work["parent_id"]) == (
        spans["j7"]["trace_id"],
        spans["j7"]["span_id"],
    )


class HeldExporter:
    """Keeps what it is given; its first export waits until `release` is set."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.exporting = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exporting.set()
        self.release.wait(30)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing held open."""


def test_a_full_queue_drops_the_new_spans_counts_them_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = HeldExporter()
    environ = {**QUIET, "OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"}
    processor = BatchSpans(exporter, TracerProvider().resource, environ)
    provider, tracer = provider_with(processor)
    caplog.set_level(logging.WARNING, logger="drainpool.tracing")
    try:
        for number in range(2):  # a full batch: the thread takes it, and its export waits
            tracing.Attempt(tracer, job(number), "mail", 1).end("completed")
        assert exporter.exporting.wait(30)
        for number in range(2, 9):  # four fit in the queue, three do not
            tracing.Attempt(tracer, job(number), "mail", 1).end("completed")
        assert processor.dropped == 3
        assert caplog.text.count("span queue full (OTEL_BSP_MAX_QUEUE_SIZE=4)") == 1
        exporter.release.set()
        wait_until(lambda: len(exporter.spans) == 6, what="the six queued spans exported")
        assert sorted(attempt_spans(exporter.spans)) == [f"j{n}" for n in range(6)]
        wait_until(lambda: "3 spans dropped: the queue was full" in caplog.text)
    finally:
        exporter.release.set()
        provider.shutdown()
    assert tracing.Attempt(tracer, job(9), "mail", 1).end("completed") is None
    assert processor.dropped == 3  # after the shutdown a span is ignored, not counted as full


def test_bad_batch_settings_fall_back_to_the_defaults(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="drainpool.tracing")
    values = settings({"OTEL_BSP_SCHEDULE_DELAY": "soon", "OTEL_BSP_MAX_QUEUE_SIZE": "-3"})
    assert values == {
        "OTEL_BSP_SCHEDULE_DELAY": 5000,
        "OTEL_BSP_MAX_QUEUE_SIZE": 2048,
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512,
        "OTEL_BSP_EXPORT_TIMEOUT": 30000,
    }
    assert "OTEL_BSP_SCHEDULE_DELAY='soon' is not a positive integer" in caplog.text
    clamped = settings({"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"})
    assert clamped["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] == 100


def test_a_processor_the_application_adds_gets_the_same_attempt_spans() -> None:
    ours, theirs = InMemorySpanExporter(), InMemorySpanExporter()
    provider, tracer = provider_with(
        BatchSpans(ours, TracerProvider().resource, QUIET), SimpleSpanProcessor(theirs)
    )
    attempt = tracing.Attempt(tracer, job(1), "mail", 4)
    with tracer.start_as_current_span("inner") as inner:  # as a task's own span
        pass
    attempt.end("timed_out", 1.0, "timed out after 1.0 s")
    provider.force_flush()
    mine, its = attempt_spans(ours.get_finished_spans()), attempt_spans(theirs.get_finished_spans())
    assert set(mine) == set(its) == {"j1"}
    span, same = mine["j1"], its["j1"]
    assert span.to_json() == same.to_json()
    assert (span.context.trace_id, span.parent.span_id) == (PARENT_TRACE, PARENT_SPAN)
    assert span.parent.is_remote and not span.context.is_remote
    assert span.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in span.events] == ["timed_out"]
    assert span.events[0].attributes == {"drainpool.error": "timed out after 1.0 s"}
    assert span.attributes["drainpool.generation"] == 4
    assert inner.parent.span_id == span.context.span_id  # type: ignore[attr-defined]
    provider.shutdown()


def test_an_unsampled_parent_records_nothing_and_its_flag_reaches_the_task() -> None:
    exporter = InMemorySpanExporter()
    provider, tracer = provider_with(BatchSpans(exporter, TracerProvider().resource, QUIET))
    unsampled = TRACEPARENT[:-2] + "00"
    attempt = tracing.Attempt(tracer, job(1, traceparent=unsampled), "mail", 1)
    seen = trace.get_current_span().get_span_context()
    with tracer.start_as_current_span("inner") as inner:
        pass
    attempt.end("completed")
    provider.force_flush()
    assert seen.trace_id == PARENT_TRACE and not seen.trace_flags.sampled
    assert not inner.is_recording()
    assert exporter.get_finished_spans() == ()
    assert trace.get_current_span() is trace.INVALID_SPAN  # the worker's context is back
    provider.shutdown()


def test_an_abandoned_attempt_is_reported_once() -> None:
    exporter = InMemorySpanExporter()
    provider, tracer = provider_with(BatchSpans(exporter, TracerProvider().resource, QUIET))
    attempt = tracing.Attempt(tracer, job(1, traceparent=None), "mail", 1)
    attempt.abandoned(30.0)  # the grace ran out; the task returns later
    attempt.end("completed", 31.0, "")
    provider.force_flush()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["drainpool.outcome"] == "abandoned"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in span.events] == ["abandoned"]
    assert trace.get_current_span() is trace.INVALID_SPAN
    provider.shutdown()


def test_an_attempt_span_reads_as_one_the_sdk_constructor_makes() -> None:
    """Builder sets an attempt span's fields itself; the result must be the SDK's span."""
    resource = TracerProvider().resource
    builder = Builder(resource)
    record = ("send", "j1", 2, "mail", 3, "failed", "boom", 10, 20, PARENT_TRACE, 5, 1, 7, None)
    (made,) = builder.spans([record])
    sdk = ReadableSpan(
        name="drainpool.job send",
        context=trace.SpanContext(PARENT_TRACE, 5, False, trace.TraceFlags(1)),
        parent=trace.SpanContext(PARENT_TRACE, 7, True, trace.TraceFlags(1)),
        resource=resource,
        attributes=dict(made.attributes),
        events=made.events,
        kind=trace.SpanKind.CONSUMER,
        status=made.status,
        start_time=10,
        end_time=20,
        instrumentation_scope=made.instrumentation_scope,
    )
    assert isinstance(made, ReadableSpan)
    assert made.to_json() == sdk.to_json()
    assert made.context == sdk.context and made.parent == sdk.parent
    assert made.status.description == "boom"
