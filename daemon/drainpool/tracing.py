"""OpenTelemetry traces, from the request that enqueued a job to each attempt that ran it.

Off by default, and then free: nothing here imports opentelemetry until
tracing is asked for (`[tracing] enabled = true`, or OTEL_TRACES_EXPORTER set),
and a pool without it never calls in here. The producer puts its current
trace context in the job's metadata (W3C `traceparent`, never the payload);
the worker starts one span per attempt as that context's child. Drains and
reloads are spans of their own.

The SDK is set up once per process: a TracerProvider with the standard
OTEL_* resource and batch settings, and the exporter named by `[tracing]
exporter` ("module:function" returning a SpanExporter) or else by
OTEL_TRACES_EXPORTER (installed exporters' entry points; default "otlp").
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
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


def _set_up(exporter_ref: str) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; what it is given wins.
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": "drainpool"})
    )
    for exporter in _exporters(exporter_ref):
        provider.add_span_processor(BatchSpanProcessor(exporter))
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
    own spans are its children), and the end hands one finished `ReadableSpan`
    to the provider's span processors (the BatchSpanProcessor of OTEL_BSP_*),
    as the SDK's own end does. Processors' `on_start` is not called for it.
    Any other sampler (OTEL_TRACES_SAMPLER) takes the SDK's own span.
    """

    __slots__ = ("_attributes", "_context", "_made", "_parent", "_start", "_token", "span")

    def __init__(self, tracer: Any, job: Any, pool: str, generation: int) -> None:
        api = _api()
        parent = None
        if "traceparent" in job.meta:
            parent = api.trace.get_current_span(api.propagator.extract(job.meta))
            parent = parent.get_span_context()
            if not parent.is_valid:
                log.debug(
                    "job %s: malformed traceparent %r ignored; its attempt starts a new trace",
                    job.id,
                    job.meta["traceparent"],
                )
                parent = None
        self._parent = parent
        self._attributes: dict[str, Any] | None = {
            "drainpool.task": job.task,
            "drainpool.job.id": job.id,
            "drainpool.job.attempt": job.attempt,
            "drainpool.pool": pool,
            "drainpool.generation": generation,
        }
        made = self._made = _made(tracer)
        self._start = api.time_ns()
        if made.fast:
            self._context = made.context_of(parent)
            self.span = api.trace.NonRecordingSpan(self._context)
            if parent is not None and not parent.trace_flags.sampled:
                self._attributes = None  # the parent's trace is not sampled: nothing recorded
        else:
            self._context = None
            self.span = tracer.start_span(
                f"drainpool.job {job.task}",
                context=None
                if parent is None
                else api.trace.set_span_in_context(api.trace.NonRecordingSpan(parent)),
                kind=api.consumer,
                attributes=self._attributes,
                start_time=self._start,
            )
        # The task's own spans are children of this one.
        self._token = api.context.attach(api.trace.set_span_in_context(self.span))

    def end(self, outcome: str, error: str = "", *, close: bool = True) -> None:
        """The worker's end of the run: detach (on its own thread), then close unless reported."""
        _api().context.detach(self._token)
        if close:
            self._close(outcome, error)

    def abandoned(self) -> None:
        """The grace ran out with the task still running: the span ends now, as abandoned."""
        self._close("abandoned", "still running when the grace ran out")

    def _close(self, outcome: str, error: str) -> None:
        """Called once (drainpool.observe.Watched reports each attempt once)."""
        api = _api()
        failed = outcome in ("failed", "timed_out", "abandoned")
        if self._context is None:  # the SDK's own span
            span = self.span
            span.set_attribute("drainpool.outcome", outcome)
            if outcome != "completed":
                if failed:
                    span.set_status(api.status(api.error, error[:200]))
                span.add_event(outcome, {"drainpool.error": error[:200]} if error else {})
            span.end()
            return
        attributes = self._attributes
        if attributes is None:
            return  # not sampled
        attributes["drainpool.outcome"] = outcome
        ended = api.time_ns()
        events: tuple[Any, ...] = ()
        status = api.unset
        if outcome != "completed":
            if failed:
                status = api.status(api.error, error[:200])
            detail = {"drainpool.error": error[:200]} if error else {}
            events = (api.event(outcome, detail, ended),)
        made = self._made
        # By keyword: the opentelemetry-sdk range we accept (>= 1.20) is not pinned, and a
        # reordered parameter would otherwise garble every span without an error.
        made.processor.on_end(
            api.readable(
                name=made.span_name(attributes["drainpool.task"]),
                context=self._context,
                parent=self._parent,
                resource=made.resource,
                attributes=attributes,
                events=events,
                kind=api.consumer,
                status=status,
                start_time=self._start,
                end_time=ended,
                instrumentation_scope=made.scope,
            )
        )


class _Made:
    """What the fast path takes from the process's SDK tracer, looked up once."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace.sampling import DEFAULT_ON
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, TraceFlags

        self.tracer = tracer
        # Only the default sampler's decision is made here (the parent's, else sampled);
        # getattr: a tracer that is not the SDK's (a test's) takes the SDK path.
        self.fast = getattr(tracer, "sampler", None) is DEFAULT_ON
        if not self.fast:
            return
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = InstrumentationScope(TRACER_NAME)
        # task -> its spans' name: one string per task, not one per job
        self._names: dict[str, str] = {}
        self._ids = tracer.id_generator
        random_flag = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
        random_ids = getattr(self._ids, "is_trace_id_random", lambda: False)()
        self._root_flags = TraceFlags(TraceFlags.SAMPLED | (random_flag if random_ids else 0))
        self._span_context = SpanContext
        self._flags = TraceFlags

    def span_name(self, task: str) -> str:
        name = self._names.get(task)
        if name is None:
            name = self._names[task] = f"drainpool.job {task}"
        return name

    def context_of(self, parent: Any) -> Any:
        """The attempt's span context: in the parent's trace (and its sampling), else a new one."""
        ids = self._ids
        if parent is None:
            return self._span_context(
                ids.generate_trace_id(), ids.generate_span_id(), False, self._root_flags
            )
        return self._span_context(
            parent.trace_id,
            ids.generate_span_id(),
            False,
            self._flags(parent.trace_flags),
            parent.trace_state,
        )


_made_for: _Made | None = None


def _made(tracer: Any) -> _Made:
    global _made_for
    made = _made_for
    if made is None or made.tracer is not tracer:
        made = _made_for = _Made(tracer)
    return made


class _Api:
    """opentelemetry's names the per-job path uses, imported once."""

    def __init__(self) -> None:
        from time import time_ns

        from opentelemetry import context, trace
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.trace = trace
        self.consumer = trace.SpanKind.CONSUMER
        self.status = Status
        self.error = StatusCode.ERROR
        self.unset = Status(StatusCode.UNSET)
        self.event = Event
        self.readable = ReadableSpan
        self.time_ns = time_ns
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
