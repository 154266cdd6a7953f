"""The span processor of a traced process: OTEL_BSP_* batching, with attempts kept as tuples.

Issue 24 asks a traced no-op pool for 0.8x the throughput of an untraced one.
With the SDK's BatchSpanProcessor, a worker built a `ReadableSpan` per job
(five objects the cycle collector tracks) that then waited in the queue for its
batch: a job's worth of tracked objects outliving each young collection, so
promoted, so full collections far more often, which cost more than the span.
Here an attempt is queued as one tuple of ints and strings (untracked by the
collector after its first pass) and becomes a `ReadableSpan` on the export
thread, just before its batch is exported. Spans of the SDK's own (the task's,
a drain's, a reload's) are queued as they come.

The batching is the standard one, from the same variables as the SDK's:
OTEL_BSP_SCHEDULE_DELAY (ms between exports), OTEL_BSP_MAX_QUEUE_SIZE (spans
waiting at most; one more is dropped, counted and logged),
OTEL_BSP_MAX_EXPORT_BATCH_SIZE (spans per export; a full batch wakes the thread
early) and OTEL_BSP_EXPORT_TIMEOUT (ms, handed to exporters that take one at
shutdown). `force_flush` exports all on the caller's thread; `shutdown` (at
exit) exports what is left, then shuts the exporter down.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

log = logging.getLogger("drainpool.tracing")

# What an attempt leaves behind (drainpool.tracing.Attempt): ints, strings and None only,
# so that the cycle collector stops tracking it at its first pass over the queue.
# (task, job id, attempt, pool, generation, outcome, error, start ns, end ns,
#  trace id, span id, trace flags, parent span id or None, trace state or None)
Record = tuple[str, str, int, str, int, str, str, int, int, int, int, int, "int | None", Any]

DEFAULTS = {
    "OTEL_BSP_SCHEDULE_DELAY": 5000,
    "OTEL_BSP_MAX_QUEUE_SIZE": 2048,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512,
    "OTEL_BSP_EXPORT_TIMEOUT": 30000,
}
_FAILED = frozenset(("failed", "timed_out", "abandoned"))
_SUPPRESS = getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None)


def span_context_maker() -> Any:
    """SpanContext(trace_id, span_id, is_remote, flags, state) for ids known valid.

    The class's own constructor checks the ids (a third of an attempt's cost on
    the export thread); ours are valid by construction. Used only when this SDK's
    SpanContext is still the tuple it builds (checked here), else the class itself.
    """
    flags, state = TraceFlags(1), DEFAULT_TRACE_STATE
    if tuple(SpanContext(3, 5, True, flags, state)) != (3, 5, True, flags, state, True):
        return SpanContext
    new = tuple.__new__

    def make(trace_id: int, span_id: int, remote: bool, flags: Any, state: Any) -> Any:
        state = state or DEFAULT_TRACE_STATE
        return new(SpanContext, (trace_id, span_id, remote, flags, state, True))

    return make


def settings(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """The OTEL_BSP_* values; one that is not a positive integer keeps its default, logged."""
    values = {}
    for name, default in DEFAULTS.items():
        raw = environ.get(name, "").strip()
        value = default
        if raw:
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                log.warning("%s=%r is not a positive integer; using %d", name, raw, default)
                value = default
        values[name] = value
    if values["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] > values["OTEL_BSP_MAX_QUEUE_SIZE"]:
        log.warning(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE (%d) above OTEL_BSP_MAX_QUEUE_SIZE: using %d",
            values["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"],
            values["OTEL_BSP_MAX_QUEUE_SIZE"],
        )
        values["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = values["OTEL_BSP_MAX_QUEUE_SIZE"]
    return values


class BatchSpans(SpanProcessor):  # type: ignore[misc]  # the SDK ships no types for it
    """Queues finished spans and attempt records; one thread exports them in batches."""

    def __init__(self, exporter: Any, resource: Any, environ: Mapping[str, str] = os.environ):
        values = settings(environ)
        self.exporter = exporter
        self.max_queue = values["OTEL_BSP_MAX_QUEUE_SIZE"]
        self.batch_size = values["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"]
        self.delay = values["OTEL_BSP_SCHEDULE_DELAY"] / 1000
        self.export_timeout_millis = values["OTEL_BSP_EXPORT_TIMEOUT"]
        self.dropped = 0  # spans dropped because the queue was full, since the start
        self._dropped_told = 0
        self._builder = Builder(resource)
        self._closed = False
        self._start_thread()
        if hasattr(os, "register_at_fork"):  # a task that forks: the child exports its own
            again = weakref.WeakMethod(self._start_thread)
            os.register_at_fork(after_in_child=lambda: (again() or (lambda: None))())

    def _start_thread(self) -> None:
        # Appended to on the right by any thread, popped on the left by an export.
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._woken = False  # the wake is set and not yet seen: emitters need not set it again
        self._export_lock = threading.Lock()  # the thread's export and a force_flush
        self._thread = threading.Thread(target=self._serve, name="drainpool-spans", daemon=True)
        self._thread.start()

    # -- emitters (any thread) --------------------------------------------------

    def record(self, record: Record | ReadableSpan) -> None:
        """An attempt's span, as drainpool.tracing.Attempt leaves it."""
        queue = self._queue
        if len(queue) >= self.max_queue or self._closed:
            self._drop()
            return
        queue.append(record)
        if len(queue) >= self.batch_size and not self._woken:
            self._woken = True
            self._wake.set()

    def on_end(self, span: ReadableSpan) -> None:
        """A span of the SDK's own (the task's, a drain's, a reload's), sampled ones only."""
        if span.context is None or not span.context.trace_flags.sampled:
            return
        self.record(span)

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == self._dropped_told + 1:  # the first of a streak; the count follows
            log.warning(
                "span queue full (OTEL_BSP_MAX_QUEUE_SIZE=%d): dropping spans", self.max_queue
            )

    # -- the export thread -------------------------------------------------------

    def _serve(self) -> None:
        wake = self._wake
        while not self._closed:
            woken = wake.wait(self.delay)
            wake.clear()  # before the export: an emitter that fills a batch meanwhile wakes us
            self._woken = False
            if self._closed:
                break
            self._export(everything=False, at_least_one=not woken)
        self._export(everything=True)

    def _export(self, *, everything: bool, at_least_one: bool = False) -> None:
        """Export full batches (all, a last partial one too, when `everything`)."""
        queue = self._queue
        with self._export_lock:
            while queue and (everything or at_least_one or len(queue) >= self.batch_size):
                at_least_one = False
                count = min(self.batch_size, len(queue))
                popleft = queue.popleft
                batch = [popleft() for _ in range(count)]
                self._send(batch)
            if self.dropped != self._dropped_told:
                log.warning(
                    "%d spans dropped: the queue was full (OTEL_BSP_MAX_QUEUE_SIZE=%d)",
                    self.dropped - self._dropped_told,
                    self.max_queue,
                )
                self._dropped_told = self.dropped

    def _send(self, batch: list[Any]) -> None:
        build = self._builder.span
        spans = [build(item) if type(item) is tuple else item for item in batch]
        # As the SDK's processor does: what the exporter does (an HTTP call) is not traced.
        token = (
            None
            if _SUPPRESS is None
            else otel_context.attach(otel_context.set_value(_SUPPRESS, True))
        )
        try:
            self.exporter.export(spans)
        except Exception:
            log.exception("exporting %d spans failed", len(spans))
        finally:
            if token is not None:
                otel_context.detach(token)

    # -- the provider's calls -----------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._closed:
            return False
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + self.export_timeout_millis / 1000
        self._closed = True
        self._wake.set()
        self._thread.join(self.export_timeout_millis / 1000)
        shutdown = self.exporter.shutdown
        if "timeout_millis" in inspect.signature(shutdown).parameters:  # as the SDK's does
            shutdown(timeout_millis=max(deadline - time.monotonic(), 0) * 1000)
        else:
            shutdown()


class CurrentSpan(NonRecordingSpan):  # type: ignore[misc]
    """The attempt's span as the task's context holds it: one object, not two."""

    __slots__ = ("_context",)


_FIELDS = (
    "_name",
    "_context",
    "_kind",
    "_instrumentation_info",
    "_instrumentation_scope",
    "_parent",
    "_start_time",
    "_end_time",
    "_attributes",
    "_events",
    "_links",
    "_resource",
    "_status",
)


class _Span(ReadableSpan):  # type: ignore[misc]
    """A ReadableSpan whose fields are slots: one object the collector tracks, not two.

    The names are those this SDK's constructor sets; one it sets that is not
    here still lands in the instance's dict.
    """

    __slots__ = _FIELDS


class _QuickSpan(_Span):
    """The same span, its fields set by position: half the constructor's cost.

    Used only if, made from the same values, it equals what the SDK's own
    constructor makes (Builder checks): an SDK that sets more or other fields
    gets its constructor called.
    """

    __slots__ = ()

    def __init__(  # one per field, by position, on purpose
        self,
        name: str,
        context: Any,
        parent: Any,
        resource: Any,
        attributes: Any,
        events: Any,
        kind: Any,
        status: Any,
        start_time: int,
        end_time: int,
        instrumentation_scope: Any,
    ) -> None:
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = None
        self._instrumentation_scope = instrumentation_scope
        self._parent = parent
        self._start_time = start_time
        self._end_time = end_time
        self._attributes = attributes
        self._events = events
        self._links = ()
        self._resource = resource
        self._status = status


def _same(one: Any, other: Any) -> bool:
    missing = object()
    return not getattr(one, "__dict__", None) and all(
        getattr(one, name, missing) is getattr(other, name, missing) for name in _FIELDS
    )


class Builder:
    """Makes an attempt record a `ReadableSpan`, with what all spans share made once."""

    def __init__(self, resource: Any) -> None:
        from drainpool.tracing import TRACER_NAME

        self.resource = resource
        self.scope = InstrumentationScope(TRACER_NAME)
        self.unset = Status(StatusCode.UNSET)
        self._names: dict[str, str] = {}  # task -> its spans' name
        self._flags: dict[int, TraceFlags] = {}
        self.span_context = span_context_maker()
        self._make = self._maker()

    def _maker(self) -> Any:
        """_QuickSpan's positional constructor if it makes what the SDK's does, else that."""
        values = (
            "name",
            self.span_context(3, 5, False, TraceFlags(1), None),
            None,
            self.resource,
            {"a": 1},
            (),
            SpanKind.CONSUMER,
            self.unset,
            7,
            11,
            self.scope,
        )
        sdk = _Span(
            name=values[0],
            context=values[1],
            parent=values[2],
            resource=values[3],
            attributes=values[4],
            events=values[5],
            kind=values[6],
            status=values[7],
            start_time=values[8],
            end_time=values[9],
            instrumentation_scope=values[10],
        )
        if _same(_QuickSpan(*values), sdk) and not getattr(sdk, "__dict__", None):
            return _QuickSpan

        def by_keyword(*values: Any) -> ReadableSpan:
            # By keyword: the opentelemetry-sdk range we accept (>= 1.20) is not pinned.
            return _Span(
                name=values[0],
                context=values[1],
                parent=values[2],
                resource=values[3],
                attributes=values[4],
                events=values[5],
                kind=values[6],
                status=values[7],
                start_time=values[8],
                end_time=values[9],
                instrumentation_scope=values[10],
            )

        return by_keyword

    def name(self, task: str) -> str:
        name = self._names.get(task)
        if name is None:
            name = self._names[task] = f"drainpool.job {task}"
        return name

    def span(self, record: Record) -> ReadableSpan:
        (
            task,
            job_id,
            attempt,
            pool,
            generation,
            outcome,
            error,
            start,
            end,
            trace_id,
            span_id,
            flags,
            parent_id,
            trace_state,
        ) = record
        trace_flags = self._flags.get(flags)
        if trace_flags is None:
            trace_flags = self._flags[flags] = TraceFlags(flags)
        context = self.span_context(trace_id, span_id, False, trace_flags, trace_state)
        parent = None
        if parent_id is not None:  # the enqueuing span, from the job's traceparent
            parent = self.span_context(trace_id, parent_id, True, trace_flags, trace_state)
        status = self.unset
        events: tuple[Event, ...] = ()
        if outcome != "completed":
            if outcome in _FAILED:
                status = Status(StatusCode.ERROR, error)
            events = (Event(outcome, {"drainpool.error": error} if error else {}, end),)
        return self._make(
            self._names.get(task) or self.name(task),
            context,
            parent,
            self.resource,
            {
                "drainpool.task": task,
                "drainpool.job.id": job_id,
                "drainpool.job.attempt": attempt,
                "drainpool.pool": pool,
                "drainpool.generation": generation,
                "drainpool.outcome": outcome,
            },
            events,
            SpanKind.CONSUMER,
            status,
            start,
            end,
            self.scope,
        )
