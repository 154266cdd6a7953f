"""The span processor of a traced process: OTEL_BSP_* batching, with attempts kept as tuples.

Issue 24 asks a traced no-op pool for 0.8x the throughput of an untraced one.
With the SDK's BatchSpanProcessor, a worker built a `ReadableSpan` per job
(several objects the cycle collector tracks) that then waited in the queue for
its batch: outliving young collections, they were promoted, and full
collections came far more often (about 4 µs of the 13.6 a span cost per job in
the pool, counted with gc.callbacks). Here an attempt is queued as one tuple of
ints and strings (untracked by the collector after its first pass) and becomes
a `ReadableSpan` on the export thread, a batch at a time, just before the batch
is exported. Spans of the SDK's own (the task's, a drain's, a reload's) are
queued as they come.

The batching is the standard one, from the same variables as the SDK's:
OTEL_BSP_SCHEDULE_DELAY (ms between exports), OTEL_BSP_MAX_QUEUE_SIZE (spans
waiting at most; one more is dropped, counted and logged),
OTEL_BSP_MAX_EXPORT_BATCH_SIZE (spans per export; a full batch wakes the thread
early) and OTEL_BSP_EXPORT_TIMEOUT (ms, handed to exporters that take one at
shutdown). `force_flush` exports all on the caller's thread; `shutdown` (at
exit) exports what is left, then shuts the exporter down.

Over 400 lines on purpose: the queue, the thread and the making of the spans it
exports are one concern (an attempt, from its tuple to the exporter), and the
checks that let the span classes skip the SDK's constructors sit beside them.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
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

    The class's own constructor checks the ids (about a third of what making an
    attempt's span cost); ours are valid by construction. Used only when this SDK's
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
        self._dropped_told = 0  # of those, the ones an export has logged
        self._drop_lock = threading.Lock()
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
        """An attempt's span, as drainpool.tracing.Attempt leaves it (or an SDK span).

        A full queue drops the span being added (the spec's way; the SDK's own
        processor drops the oldest instead), counted in `dropped` and logged.
        """
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
        if self._closed:  # at exit, after the last export: the SDK's processor ignores it too
            log.debug("span processor shut down: a span ended since is dropped")
            return
        with self._drop_lock:  # rare (a full queue), and the workers would race on the count
            self.dropped += 1
            first = self.dropped == self._dropped_told + 1
        if first:  # of a streak: the export after it logs how many
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
                # Taken one by one as each becomes a span: each tuple goes as its span
                # is made, no list of them is held beside the spans.
                self._send(self._builder.spans(popleft() for _ in range(count)))
            with self._drop_lock:
                told = self._dropped_told
                now = self._dropped_told = self.dropped
            if now != told:
                log.warning(
                    "%d spans dropped: the queue was full (OTEL_BSP_MAX_QUEUE_SIZE=%d)",
                    now - told,
                    self.max_queue,
                )

    def _send(self, spans: list[ReadableSpan]) -> None:
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
        try:
            takes_timeout = "timeout_millis" in inspect.signature(shutdown).parameters
        except (TypeError, ValueError):  # no signature to read (a builtin)
            takes_timeout = False
        if takes_timeout:  # the rest of the export timeout, as the SDK's processor gives
            shutdown(timeout_millis=max(deadline - time.monotonic(), 0) * 1000)
        else:
            shutdown()


class CurrentSpan(NonRecordingSpan):  # type: ignore[misc]
    """The attempt's span as the task's context holds it, its SpanContext made when asked.

    Most tasks never ask (they make no span of their own and send no traceparent
    on): made each time, it was a tenth of an attempt's cost. `_attempt` is a
    drainpool.tracing.Attempt, whose ids never change once it started.
    """

    __slots__ = ("_attempt", "_made_context")
    _attempt: Any
    _made_context: SpanContext

    @property
    def _context(self) -> SpanContext:
        try:
            return self._made_context
        except AttributeError:
            attempt = self._attempt
            self._made_context = SpanContext(
                attempt._trace_id,
                attempt._span_id,
                False,
                TraceFlags(attempt._flags),
                attempt._state,
            )
            return self._made_context

    @_context.setter
    def _context(self, context: SpanContext) -> None:  # NonRecordingSpan.__init__'s
        self._made_context = context


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


class _AttemptSpan(ReadableSpan):  # type: ignore[misc]
    """An attempt's ReadableSpan: what differs per attempt in slots, set by Builder.spans.

    What is the same for every attempt (kind, resource, scope, no links) is a class
    attribute of the subclass each Builder makes: half the stores per span. Used
    only if, made from the same values, it reads as what the SDK's own
    constructor makes (Builder checks), else the constructor is called.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_name",
        "_parent",
        "_start_time",
        "_status",
    )


def _same(ours: Any, sdk: Any) -> bool:
    """Whether `ours` reads as `sdk` in each field this SDK's constructor set, and no other."""
    missing = object()
    return not getattr(sdk, "__dict__", None) and all(
        getattr(ours, name, missing) is getattr(sdk, name, missing) for name in _FIELDS
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
        self._quick = self._quick_class()

    def _quick_class(self) -> Any:
        """An _AttemptSpan subclass for this resource, if it reads as the SDK's span; else None."""
        quick = type(
            "AttemptSpan",
            (_AttemptSpan,),
            {
                "__slots__": (),
                "_kind": SpanKind.CONSUMER,
                "_instrumentation_info": None,
                "_instrumentation_scope": self.scope,
                "_links": (),
                "_resource": self.resource,
            },
        )
        context = self.span_context(3, 5, False, TraceFlags(1), None)
        attributes: dict[str, Any] = {"a": 1}
        sdk = _Span(
            name="name",
            context=context,
            parent=None,
            resource=self.resource,
            attributes=attributes,
            events=(),
            kind=SpanKind.CONSUMER,
            status=self.unset,
            start_time=7,
            end_time=11,
            instrumentation_scope=self.scope,
        )
        ours: Any = object.__new__(quick)
        ours._name, ours._context, ours._parent = "name", context, None
        ours._start_time, ours._end_time = 7, 11
        ours._attributes, ours._events, ours._status = attributes, (), self.unset
        return quick if _same(ours, sdk) else None

    def name(self, task: str) -> str:
        name = self._names.get(task)
        if name is None:
            name = self._names[task] = f"drainpool.job {task}"
        return name

    def span(self, record: Record) -> ReadableSpan:
        return self.spans((record,))[0]

    def spans(self, batch: Iterable[Any]) -> list[ReadableSpan]:
        """The batch with its records made spans (and its spans as they are).

        One loop with what it uses bound once, the spans' fields set here: a frame
        or two per span less than a call per record (CPU on the export thread is
        the GIL's, so the workers').
        """
        names, flag_objects, resource, scope = self._names, self._flags, self.resource, self.scope
        unset, failed, consumer = self.unset, _FAILED, SpanKind.CONSUMER
        quick, new_span, span_context = self._quick, object.__new__, self.span_context
        # span_context_maker's tuple, made here: a frame less per span (it checked the layout)
        new_tuple = tuple.__new__ if span_context is not SpanContext else None
        out: list[ReadableSpan] = []
        append = out.append
        for item in batch:
            if type(item) is not tuple:
                append(item)  # a span of the SDK's own
                continue
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
            ) = item
            trace_flags = flag_objects.get(flags)
            if trace_flags is None:
                trace_flags = flag_objects[flags] = TraceFlags(flags)
            if new_tuple is not None:
                state = trace_state or DEFAULT_TRACE_STATE
                context = new_tuple(
                    SpanContext, (trace_id, span_id, False, trace_flags, state, True)
                )
            else:
                context = span_context(trace_id, span_id, False, trace_flags, trace_state)
            parent = None
            if parent_id is not None:  # the enqueuing span, from the job's traceparent
                parent = span_context(trace_id, parent_id, True, trace_flags, trace_state)
            status = unset
            events: tuple[Event, ...] = ()
            if outcome != "completed":
                if outcome in failed:
                    status = Status(StatusCode.ERROR, error)
                events = (Event(outcome, {"drainpool.error": error} if error else {}, end),)
            attributes = {
                "drainpool.task": task,
                "drainpool.job.id": job_id,
                "drainpool.job.attempt": attempt,
                "drainpool.pool": pool,
                "drainpool.generation": generation,
                "drainpool.outcome": outcome,
            }
            name = names.get(task) or self.name(task)
            if quick is not None:
                span = new_span(quick)
                span._name = name
                span._context = context
                span._parent = parent
                span._start_time = start
                span._end_time = end
                span._attributes = attributes
                span._events = events
                span._status = status
            else:  # by keyword: the opentelemetry-sdk range we accept (>= 1.20) is not pinned
                span = _Span(
                    name=name,
                    context=context,
                    parent=parent,
                    resource=resource,
                    attributes=attributes,
                    events=events,
                    kind=consumer,
                    status=status,
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=scope,
                )
            append(span)
        return out
