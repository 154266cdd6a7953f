"""Typed tasks, hooks and a span exporter for tests/test_appside.py.

Hooks and the exporter write JSON lines to the files named by environment
variables the test gives the daemon, so the test reads what the daemon did.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from drainpool import TaskContext
from drainpool.hooks import JobEvent
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from tests.support.tasks import append


class ExportRequest(BaseModel):
    path: str
    rows: int = Field(ge=0)


class ExportResult(BaseModel):
    path: str
    lines: int


class Greeting(TypedDict):
    name: str


def export(ctx: TaskContext, payload: ExportRequest) -> ExportResult:
    """Sees the model instance (it uses attributes); returns a model, stored as JSON."""
    assert isinstance(payload, ExportRequest)
    return ExportResult(path=payload.path.upper(), lines=payload.rows * 2)


async def export_async(ctx: TaskContext, payload: ExportRequest) -> ExportResult:
    return ExportResult(path=payload.path, lines=payload.rows)


def greet(ctx: TaskContext, payload: Greeting) -> str:
    return f"hello {payload['name']}"


def unresolved(ctx: TaskContext, payload: NoSuchModel) -> None:  # noqa: F821 - on purpose
    """Its payload type names a model nobody defined: a config error at the daemon."""


def inner_span(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Opens a span of its own (a child of the attempt's), then fails if asked to."""
    from opentelemetry import trace

    with trace.get_tracer("the-task").start_as_current_span("task work"):
        if payload.get("fail"):
            raise RuntimeError("failing on purpose")


def _hook_log(event: JobEvent, name: str, **extra: Any) -> None:
    line = {"hook": name, "job": event.job.id, "task": event.job.task, "outcome": event.outcome}
    append(os.environ["APPSIDE_HOOK_LOG"], json.dumps({**line, **extra}))


def before(event: JobEvent) -> None:
    _hook_log(event, "before_job", attempt=event.ctx.attempt)


def after(event: JobEvent) -> None:
    _hook_log(event, "after_job", error=event.error)


def outcome(event: JobEvent) -> None:
    _hook_log(event, "on_outcome")


def broken(event: JobEvent) -> None:
    raise RuntimeError("a hook that always fails")


def stuck(event: JobEvent) -> None:
    """Blocks for good: the worker must go on after the grace."""
    _hook_log(event, "stuck")
    threading.Event().wait()


class _FileExporter:
    """A SpanExporter writing each span as one JSON line to $APPSIDE_SPAN_FILE."""

    def __init__(self) -> None:
        self._path = os.environ["APPSIDE_SPAN_FILE"]

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            context, parent = span.context, span.parent
            record = {
                "name": span.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_id": None if parent is None else f"{parent.span_id:016x}",
                "attributes": dict(span.attributes or {}),
                "events": [event.name for event in span.events],
                "status": span.status.status_code.name,
            }
            append(self._path, json.dumps(record))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing held open."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_file_exporter() -> _FileExporter:
    return _FileExporter()
