"""OpenTelemetry traces, from the request that enqueued a job to each attempt that ran it.

Off by default, and then free: nothing here imports opentelemetry until
tracing is asked for (`[tracing] enabled = true`, or OTEL_TRACES_EXPORTER set),
and a pool without it never calls in here. The producer puts its current
trace context in the job's metadata (W3C `traceparent`, never the payload);
the worker starts one span per attempt as that context's child. Drains and
reloads are spans of their own.

The SDK is set up once per process: a TracerProvider with the standard
OTEL_* resource, and per exporter a drainpool.spanbatch processor (the
standard OTEL_BSP_* batching); the exporter is named by `[tracing] exporter`
("module:function" returning a SpanExporter) or else by OTEL_TRACES_EXPORTER
(installed exporters' entry points; default "otlp").

Over 400 lines on purpose: the attempt's per-job path (issue 24 measures it in
microseconds) and the checks that let it skip the API's layers are kept
together, where what each shortcut stands in for can be read beside it.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from drainpool.settings import TracingSettings

log = logging.getLogger("drainpool.tracing")

TRACER_NAME = "drainpool"
_lock = threading.Lock()
_tracer: Any = None  # the process's opentelemetry Tracer, once set up


def wanted(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """What a pool's plan carries: None (off), "" (exporter from OTEL_*), or the exporter ref."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    from_env = environ.get("OTEL_TRACES_EXPORTER", "none").lower() != "none"
    if not (settings.enabled or from_env):
        return None
    return settings.exporter or ""


def preload(settings: TracingSettings) -> None:
    """Import what tracing runs on, when it is on: the daemon does so before its gc.freeze.

    The SDK's modules then join start-up's frozen objects, which no full collection
    walks; imported by the first pool instead, they were walked by every one of them
    (and a traced pool, which makes spans, runs more of them).
    """
    if wanted(settings) is None:
        return
    import opentelemetry.sdk.resources
    import opentelemetry.sdk.trace
    import opentelemetry.sdk.trace.sampling
    import opentelemetry.trace.propagation.tracecontext  # noqa: F401

    import drainpool.spanbatch  # noqa: F401


def tracer(exporter_ref: str) -> Any:
    """The process's tracer, set up on first use with the exporter `exporter_ref` names."""
    global _tracer
    with _lock:
        if _tracer is None:
            _tracer = _set_up(exporter_ref)
        return _tracer


def active() -> Any:
    """The tracer if some pool set tracing up, else None (drains and reloads ask)."""
    return _tracer


def dropped_spans() -> int:
    """Spans dropped so far because the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)."""
    processors = getattr(getattr(_tracer, "span_processor", None), "_span_processors", ())
    return sum(getattr(p, "dropped", 0) for p in processors)


def _set_up(exporter_ref: str) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from drainpool.spanbatch import BatchSpans

    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; what it is given wins.
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": "drainpool"})
    )
    for exporter in _exporters(exporter_ref):
        provider.add_span_processor(BatchSpans(exporter, provider.resource))
    atexit.register(provider.shutdown)  # the last batch is exported at exit
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # tasks' own spans join the same provider
    return provider.get_tracer(TRACER_NAME)


def _exporters(exporter_ref: str) -> list[Any]:
    if exporter_ref:
        from drainpool.refs import import_ref

        return [import_ref(exporter_ref)()]
    from importlib.metadata import entry_points

    exporters = []
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in filter(None, (n.strip() for n in names.split(","))):
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            log.warning("OTEL_TRACES_EXPORTER: no exporter %r installed; spans dropped", name)
            continue
        exporters.append(next(iter(found)).load()())
    return exporters


def inject(meta: MutableMapping[str, str]) -> None:
    """Put the caller's current trace context into a job's metadata (producers).

    Only when the application itself uses OpenTelemetry (already imported):
    a producer that does not pays one dictionary look-up.
    """
    if "opentelemetry" not in sys.modules:
        return
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(meta)


class Attempt:
    """One attempt's span, started by the worker; ended once, by the worker or the abandon.

    The per-job path of a traced pool (issue 24 asks it to cost little). With the
    default sampler (parent-based, always on) the span is not the SDK's `Span`,
    whose start alone (sampler call, attribute cleaning, locks, links) cost more
    than the whole pool does for a no-op job: the worker makes the span's ids
    and puts a non-recording span carrying them in the context (so the task's
    own spans are its children), and the end queues one tuple with the rest
    (drainpool.spanbatch, whose export thread makes it a `ReadableSpan`). When
    the provider has a span processor not of ours (the application added one),
    the end hands a `ReadableSpan` to all of them instead, as the SDK's own end
    does. Processors' `on_start` is not called for it. Any other sampler
    (OTEL_TRACES_SAMPLER) takes the SDK's own span.
    """

    __slots__ = (
        "_flags",
        "_generation",
        "_job",
        "_made",
        "_parent_id",
        "_pool",
        "_sdk_span",
        "_span_id",
        "_start",
        "_state",
        "_token",
        "_trace_id",
        "_unreported",
    )

    def __init__(self, tracer: Any, job: Any, pool: str, generation: int) -> None:
        parent = _parent_of(job) if "traceparent" in job.meta else None
        self._job = job
        self._pool = pool
        self._generation = generation
        self._unreported = [True]
        made = _made_for
        if made is None or made.tracer is not tracer:
            made = _made(tracer)
        self._made = made
        self._start = made.time_ns()
        self._sdk_span = None
        if made.fast:
            # Ints, strings and None: the record they become is not tracked by the collector.
            self._span_id = made.bits(64) or made.span_id()
            if parent is None:
                self._trace_id = made.bits(128) or made.trace_id()
                self._flags = made.root_flags
                self._parent_id = self._state = None
            else:
                self._trace_id = parent.trace_id
                self._flags = int(parent.trace_flags)
                self._parent_id = parent.span_id
                self._state = parent.trace_state or None  # an empty one is the default
                if not parent.trace_flags.sampled:
                    self._job = None  # the parent's trace is not sampled: nothing recorded
            # The task's own spans are children of this one.
            self._token = made.enter(self)
        else:
            api = _api()
            span = self._sdk_span = tracer.start_span(
                f"drainpool.job {job.task}",
                context=None
                if parent is None
                else api.trace.set_span_in_context(api.trace.NonRecordingSpan(parent)),
                kind=api.consumer,
                attributes={
                    "drainpool.task": job.task,
                    "drainpool.job.id": job.id,
                    "drainpool.job.attempt": job.attempt,
                    "drainpool.pool": pool,
                    "drainpool.generation": generation,
                },
                start_time=self._start,
            )
            self._token = api.attach(api.in_context(span))

    # A pool with tracing and no hooks watches each attempt with its Attempt alone
    # (drainpool.observe.JobWatch.begin): `end` and `abandoned` are Watched's calls.

    def end(self, outcome: str, seconds: float = 0.0, error: str = "") -> None:
        """The worker's end of the run: detach, then close unless the abandon did."""
        self._made.leave(self._token)
        try:
            self._unreported.pop()  # as _first_report, one call less per job
        except IndexError:
            return
        self.close(outcome, error)

    def abandoned(self, seconds: float = 0.0) -> None:
        """The grace ran out with the task still running: the span ends now, as abandoned."""
        if self._first_report():
            self.close("abandoned", "still running when the grace ran out")

    def _first_report(self) -> bool:
        try:
            return self._unreported.pop()  # atomic: the worker and the abandon race for it
        except IndexError:
            return False

    def detach(self) -> None:
        """The worker's end of the run when a Watched reports the outcome (hooks too)."""
        self._made.leave(self._token)

    def close(self, outcome: str, error: str) -> None:
        """The span ends: called once, by end or abandoned, or by the Watched reporting it."""
        span = self._sdk_span
        if span is not None:
            api = _api()
            span.set_attribute("drainpool.outcome", outcome)
            if outcome != "completed":
                if outcome in ("failed", "timed_out", "abandoned"):
                    span.set_status(api.status(api.error, error[:200]))
                span.add_event(outcome, {"drainpool.error": error[:200]} if error else {})
            span.end()
            return
        job = self._job
        if job is not None:  # else not sampled
            made = self._made
            record = (
                job.task,
                job.id,
                job.attempt,
                self._pool,
                self._generation,
                outcome,
                error[:200],
                self._start,
                made.time_ns(),
                self._trace_id,
                self._span_id,
                self._flags,
                self._parent_id,
                self._state,
            )
            if made.ours and made.multi._span_processors is made.seen:
                for processor in made.ours:
                    processor.record(record)
            else:
                made.send(record)


def _parent_of(job: Any) -> Any:
    """The enqueuing span's context, from the job's W3C traceparent; None if malformed."""
    api = _api()
    parent = api.trace.get_current_span(api.propagator.extract(job.meta)).get_span_context()
    if parent.is_valid:
        return parent
    log.debug(
        "job %s: malformed traceparent %r ignored; its attempt starts a new trace",
        job.id,
        job.meta["traceparent"],
    )
    return None


class _Made:
    """What the fast path takes from the process's SDK tracer, looked up once."""

    time_ns = staticmethod(time.time_ns)

    def __init__(self, tracer: Any) -> None:
        import random

        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import DEFAULT_ON
        from opentelemetry.trace import TraceFlags

        from drainpool.spanbatch import CurrentSpan

        self.tracer = tracer
        # Only the default sampler's decision is made here (the parent's, else sampled);
        # getattr: a tracer that is not the SDK's (a test's) takes the SDK path.
        self.fast = getattr(tracer, "sampler", None) is DEFAULT_ON
        if not self.fast:
            from opentelemetry.context import detach

            self.leave = detach
            return
        self.multi = tracer.span_processor
        self.seen: Any = None  # the provider's processors when `ours` was worked out
        self.ours: tuple[Any, ...] = ()  # they, when all are ours (drainpool.spanbatch)
        self.enter, self.leave = _entering(CurrentSpan)
        ids = tracer.id_generator
        random_flag = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
        random_ids = getattr(ids, "is_trace_id_random", lambda: False)()
        self.root_flags = int(TraceFlags.SAMPLED | (random_flag if random_ids else 0))
        # `bits(64) or span_id()`: what RandomIdGenerator does, one call less (the same
        # source; a 0 drawn asks it); another generator is asked each time.
        self.bits = random.getrandbits if type(ids) is RandomIdGenerator else lambda n: 0
        self.span_id = ids.generate_span_id
        self.trace_id = ids.generate_trace_id

    def send(self, record: Any) -> None:
        """Queue an attempt's record with our processors, or end a span with anyone's.

        Attempt.close does the first case itself while `seen` is the provider's
        processors (a tuple, replaced on each add_span_processor).
        """
        from drainpool.spanbatch import BatchSpans, Builder

        processors = getattr(self.multi, "_span_processors", None)
        if processors is not self.seen:
            self.seen = processors
            ours = tuple(p for p in processors or () if isinstance(p, BatchSpans))
            self.ours = ours if processors and len(ours) == len(processors) else ()
        if self.ours:
            for processor in self.ours:
                processor.record(record)
            return
        builder = getattr(self, "_builder", None)
        if builder is None:
            builder = self._builder = Builder(self.tracer.resource)
        self.multi.on_end(builder.span(record))


def _entering(span_class: Any) -> tuple[Any, Any]:
    """(enter, leave): make an attempt's span the current one; undo that.

    `attach(set_span_in_context(span))` and `detach`, which are eight calls; when the
    runtime context is the API's default (a ContextVar holding the Context, checked
    here) the same two operations on that ContextVar directly, which are two.
    """
    import contextvars
    from types import SimpleNamespace

    from opentelemetry import context, trace
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    new_span = object.__new__

    def enter(attempt: Attempt) -> Any:
        span = new_span(span_class)
        span._attempt = attempt
        return context.attach(trace.set_span_in_context(span))

    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    probe = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    keys = list(trace.set_span_in_context(probe, context.Context()))
    if (
        type(runtime) is not ContextVarsRuntimeContext
        or not isinstance(var, contextvars.ContextVar)
        or len(keys) != 1
    ):
        return enter, context.detach
    (key,) = keys
    new_context = context.Context
    set_var, get_var = var.set, var.get

    def enter_quickly(attempt: Attempt) -> Any:
        span = new_span(span_class)
        span._attempt = attempt
        return set_var(new_context({**get_var(), key: span}))

    # Checked once, with the API itself reading what it put.
    ids = SimpleNamespace(_trace_id=3, _span_id=5, _flags=1, _state=None)
    token = enter_quickly(ids)  # type: ignore[arg-type]
    seen = trace.get_current_span().get_span_context()
    var.reset(token)
    if (seen.trace_id, seen.span_id, seen.trace_flags) != (3, 5, 1):
        return enter, context.detach
    return enter_quickly, var.reset


_made_for: _Made | None = None


def _made(tracer: Any) -> _Made:
    global _made_for
    made = _made_for
    if made is None or made.tracer is not tracer:
        made = _made_for = _Made(tracer)
    return made


class _Api:
    """opentelemetry's names the SDK's span path and the traceparent use, imported once."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        self.attach = context.attach
        self.in_context = trace.set_span_in_context
        self.consumer = trace.SpanKind.CONSUMER
        self.status = Status
        self.error = StatusCode.ERROR
        self.propagator = TraceContextTextMapPropagator()


_api_names: _Api | None = None


def _api() -> _Api:
    global _api_names
    if _api_names is None:
        _api_names = _Api()
    return _api_names


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span of the daemon's own (a drain, a reload) when tracing is on; else nothing."""
    current = _tracer
    if current is None:
        yield None
        return
    with current.start_as_current_span(name, attributes=attributes) as opened:
        yield opened


def start_span(name: str, **attributes: Any) -> Any:
    """A span that ends later (a drain ends on another call), or None when tracing is off."""
    current = _tracer
    return None if current is None else current.start_span(name, attributes=attributes)
