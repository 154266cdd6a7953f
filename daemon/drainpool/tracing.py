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

    The per-job path of a traced pool: opentelemetry's names are looked up once
    per process (`_api`), and a completed attempt sets one attribute and ends.
    """

    __slots__ = ("_ended", "_lock", "_token", "span")

    def __init__(self, tracer: Any, job: Any, pool: str, generation: int) -> None:
        api = _api()
        parent = None
        if "traceparent" in job.meta:
            parent = api.propagator.extract(job.meta)
            if not api.trace.get_current_span(parent).get_span_context().is_valid:
                log.debug(
                    "job %s: malformed traceparent %r ignored; its attempt starts a new trace",
                    job.id,
                    job.meta["traceparent"],
                )
                parent = None
        self._lock = threading.Lock()
        self._ended = False
        self.span = tracer.start_span(
            f"drainpool.job {job.task}",
            context=parent,
            kind=api.consumer,
            attributes={
                "drainpool.task": job.task,
                "drainpool.job.id": job.id,
                "drainpool.job.attempt": job.attempt,
                "drainpool.pool": pool,
                "drainpool.generation": generation,
            },
        )
        # The task's own spans are children of this one.
        self._token = api.context.attach(api.trace.set_span_in_context(self.span))

    def end(self, outcome: str, error: str = "") -> None:
        """The worker's end of the run: detach (on its own thread) and close the span."""
        _api().context.detach(self._token)
        self._close(outcome, error)

    def abandoned(self) -> None:
        """The grace ran out with the task still running: the span ends now, as abandoned."""
        self._close("abandoned", "still running when the grace ran out")

    def _close(self, outcome: str, error: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        span = self.span
        span.set_attribute("drainpool.outcome", outcome)
        if outcome != "completed":
            api = _api()
            if outcome in ("failed", "timed_out", "abandoned"):
                span.set_status(api.status(api.error, error[:200]))
            span.add_event(outcome, {"drainpool.error": error[:200]} if error else {})
        span.end()


class _Api:
    """opentelemetry's names the per-job path uses, imported once."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.trace = trace
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
