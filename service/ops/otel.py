"""The OpenTelemetry SDK behind ``service.ops.tracing``'s seam; imported only when tracing is on.

Configured the standard way, by the SDK's own variables, read here once at start-up:
``OTEL_TRACES_EXPORTER`` (which exporters, by their entry-point names; ``otlp`` follows
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``, ``http/protobuf`` unless it says ``grpc``), the
exporters' own ``OTEL_EXPORTER_*`` variables (endpoint, headers, timeout), ``OTEL_TRACES_SAMPLER``
and ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the service
name defaults to ``marker-ingest``), and ``OTEL_BSP_*`` (the export queue). Spans leave through
the SDK's ``BatchSpanProcessor``: a bounded queue and a thread of its own, so a slow or unreachable
collector never holds the event loop; what it loses (a full queue, a failed export) is counted.

Span names and attributes follow OpenTelemetry's messaging semantic conventions (``process
<topic>`` of kind CONSUMER with a link per record, ``send <topic>`` of kind PRODUCER).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span as ApiSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation import set_span_in_context

from service import __version__
from service.errors import TracingUnavailable
from service.ops.tracing import EXPORTER_VARIABLE, EXTRA, SendSpan, Upstream

SERVICE = "marker-ingest"
_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_PACKAGES = {
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "zipkin_json": "opentelemetry-exporter-zipkin-json",
    "zipkin": "opentelemetry-exporter-zipkin-json",
}
_ROOT = Context()
"""The empty context: a ``process`` span starts a trace of its own (records are links, not parents)."""


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The entry-point names of the exporters ``OTEL_TRACES_EXPORTER`` asks for (``none``: none)."""
    names = [n.strip() for n in environ.get(EXPORTER_VARIABLE, "").split(",") if n.strip()]
    if names == ["none"]:
        return []
    chosen = []
    for name in names:
        if name == "none":
            raise TracingUnavailable(f"{EXPORTER_VARIABLE}={environ[EXPORTER_VARIABLE]}: 'none' stands alone")
        if name == "otlp":
            variable = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            protocol = environ.get(variable) or environ.get(variable := "OTEL_EXPORTER_OTLP_PROTOCOL")
            protocol = (protocol or "http/protobuf").strip()
            if protocol not in _PROTOCOLS:
                raise TracingUnavailable(f"{variable}={protocol}: unsupported; use http/protobuf or grpc")
            name = _PROTOCOLS[protocol]
        chosen.append(name)
    return chosen


def load_exporter(name: str) -> SpanExporter:
    """The exporter registered as ``name`` (entry point group ``opentelemetry_traces_exporter``),
    made with its own defaults and ``OTEL_EXPORTER_*`` variables."""
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        package = _PACKAGES.get(name)
        hint = f"pip install {package}" if package else f"install the package that provides it, or {EXTRA}"
        raise TracingUnavailable(
            f"{EXPORTER_VARIABLE}: no trace exporter named {name!r} is installed: {hint}"
        )
    try:
        exporter_class = next(iter(found)).load()
        exporter = exporter_class()
    except ImportError as exc:
        raise TracingUnavailable(
            f"{EXPORTER_VARIABLE}: the {name!r} exporter cannot be loaded: {exc}"
        ) from None
    except Exception as exc:  # its own variables are invalid: say which exporter refused them
        raise TracingUnavailable(
            f"{EXPORTER_VARIABLE}: the {name!r} exporter refused its settings: {exc!r}"
        ) from None
    if not isinstance(exporter, SpanExporter):
        raise TracingUnavailable(f"{EXPORTER_VARIABLE}: {name!r} is not a trace exporter")
    return exporter


def tracer_from_environment(environ: Mapping[str, str], *, max_links: int) -> OtelTracer:
    """The tracer the ``OTEL_*`` variables describe (see the module's docstring)."""
    exporters = [load_exporter(name) for name in exporter_names(environ)]
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    limit = environ.get("OTEL_SPAN_LINK_COUNT_LIMIT")
    limits = SpanLimits(
        max_links=int(limit) if limit and limit.isdigit() else max_links,
        max_events=max(128, max_links) if not environ.get("OTEL_SPAN_EVENT_COUNT_LIMIT") else None,
    )
    provider = TracerProvider(resource=resource, span_limits=limits)  # the sampler: OTEL_TRACES_SAMPLER
    tracer = OtelTracer(provider)
    processors: list[CountingProcessor] = []
    try:
        for exporter in exporters:
            processors.append(CountingProcessor(CountingExporter(exporter, tracer), tracer))
    except ValueError as exc:  # the OTEL_BSP_* variables contradict each other
        for made in processors:
            made.shutdown()  # type: ignore[no-untyped-call]
        raise TracingUnavailable(
            f"OTEL_BSP_*: {exc} (OTEL_BSP_MAX_EXPORT_BATCH_SIZE defaults to 512)"
        ) from None
    for processor in processors:
        provider.add_span_processor(processor)
    return tracer


class OtelTracer:
    """``service.ops.tracing.Tracer`` on the SDK."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("marker_ingest", __version__)
        self._counter: Callable[[str, int], None] | None = None

    def process(self, topic: str, partition: int, group: str) -> OtelProcess:
        span = self._tracer.start_span(
            f"process {topic}",
            context=_ROOT,
            kind=SpanKind.CONSUMER,
            attributes={
                **_messaging("process", topic),
                "messaging.destination.partition.id": str(partition),
                "messaging.consumer.group.name": group,
            },
        )
        return OtelProcess(self._tracer, span)

    def redrive(self, topic: str, messages: int) -> OtelSend:
        span = self._tracer.start_span(
            f"send {topic}",
            context=_ROOT,
            kind=SpanKind.PRODUCER,
            attributes={
                **_messaging("send", topic),
                "messaging.batch.message_count": messages,
                "marker_ingest.operation": "redrive",
            },
        )
        return OtelSend(span, count=False)

    def count_dropped(self, counter: Callable[[str, int], None]) -> None:
        self._counter = counter

    def dropped(self, reason: str, spans: int) -> None:
        """Spans lost before the backend had them (called from the export thread)."""
        counter = self._counter
        if counter is not None and spans:
            with contextlib.suppress(Exception):
                counter(reason, spans)

    def shutdown(self, timeout_seconds: float) -> None:
        # The SDK's shutdown waits for the export under way; a thread of its own bounds the wait.
        done = threading.Thread(target=self._shutdown, name="marker-ingest-trace-shutdown", daemon=True)
        done.start()
        done.join(timeout_seconds)

    def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.provider.force_flush()
        with contextlib.suppress(Exception):
            self.provider.shutdown()


def _messaging(operation: str, topic: str) -> dict[str, str]:
    """The messaging conventions' attributes every span of ``operation`` on ``topic`` carries."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
    }


def _span_context(upstream: Upstream) -> SpanContext:
    state = None
    if upstream.tracestate is not None:
        with contextlib.suppress(Exception):
            state = TraceState.from_header([upstream.tracestate.decode("ascii")])
    return SpanContext(
        upstream.trace_id,
        upstream.span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if upstream.sampled else TraceFlags.DEFAULT),
        trace_state=state,
    )


def _traceparent(span: ApiSpan) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 1:02x}"


class OtelProcess:
    """``service.ops.tracing.ProcessSpan`` on the SDK."""

    __slots__ = ("_sends", "_span", "_tracer", "log_fields", "recording", "traceparent")

    def __init__(self, tracer: Any, span: ApiSpan) -> None:
        self._tracer, self._span = tracer, span
        self.traceparent = _traceparent(span)
        self.recording = span.is_recording()
        ctx = span.get_span_context()
        self.log_fields: Mapping[str, str] = {
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
        }
        self._sends: dict[str, OtelSend] = {}

    def link(self, upstream: Upstream) -> None:
        self._span.add_link(_span_context(upstream))

    def dead_letter(self, code: str, offset: int, record_index: int) -> None:
        self._span.add_event(
            "marker_ingest.dead_letter",
            {
                "marker_ingest.error_code": code,
                "messaging.kafka.offset": offset,
                "marker_ingest.record_index": record_index,
            },
        )

    def send(self, topic: str) -> SendSpan:
        send = self._sends.get(topic)
        if send is None:
            span = self._tracer.start_span(
                f"send {topic}",
                context=set_span_in_context(self._span),
                kind=SpanKind.PRODUCER,
                attributes=_messaging("send", topic),
            )
            send = self._sends[topic] = OtelSend(span)
        return send

    @contextlib.contextmanager
    def transaction(self, action: str, offset: int) -> Iterator[None]:
        span = self._tracer.start_span(
            f"{action} transaction",
            context=set_span_in_context(self._span),
            kind=SpanKind.CLIENT,
            attributes={"messaging.system": "kafka", "messaging.kafka.offset": offset},
        )
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, repr(exc)))
            raise
        finally:
            span.end()

    def end(self, first_offset: int, last_offset: int, messages: int) -> None:
        span = self._span
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.batch.message_count": messages,
                    "marker_ingest.first_offset": first_offset,
                    "marker_ingest.last_offset": last_offset,
                }
            )
        span.end()


class OtelSend:
    """``service.ops.tracing.SendSpan`` on the SDK."""

    __slots__ = ("_count", "_events", "_span", "traceparent")

    def __init__(self, span: ApiSpan, *, count: bool = True) -> None:
        self._span = span
        self.traceparent = _traceparent(span).encode()
        self._events = 0
        self._count = count

    def sent(self, events: int) -> None:
        self._events += events

    def link(self, upstream: Upstream) -> None:
        self._span.add_link(_span_context(upstream))

    def end(self, error: str | None = None) -> None:
        span = self._span
        if span.is_recording():
            if self._count:
                span.set_attribute("messaging.batch.message_count", self._events)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        span.end()


class CountingExporter(SpanExporter):
    """An exporter that counts the spans its exports lose."""

    def __init__(self, exporter: SpanExporter, tracer: OtelTracer) -> None:
        self._exporter, self._tracer = exporter, tracer

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:
            self._tracer.dropped("export_failed", len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            self._tracer.dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class CountingProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans its full queue drops (the check is the SDK's
    own: a span ended while the queue holds ``OTEL_BSP_MAX_QUEUE_SIZE`` pushes the oldest out)."""

    def __init__(self, exporter: SpanExporter, tracer: OtelTracer) -> None:
        super().__init__(exporter)
        self._tracer = tracer
        inner = getattr(self, "_batch_processor", None)
        self._queue = getattr(inner, "_queue", None)
        self._max_queue = getattr(inner, "_max_queue_size", None)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        sampled = span.context is not None and span.context.trace_flags.sampled
        if queue is not None and sampled and len(queue) >= (self._max_queue or 0):
            self._tracer.dropped("queue_full", 1)
        super().on_end(span)
