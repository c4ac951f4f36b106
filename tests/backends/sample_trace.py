"""A small trace made with the OpenTelemetry SDK, exported to a backend, for the backends' self-tests.

Its shape is the one the service's tracing will have: an upstream producer span, and a consumer's
``process`` span that is its child, links another record's upstream span (a batch's links), and
carries a dead letter's error code as a span event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.backends.otlp import Span

PRODUCER_SPAN = "feed publish"
PROCESS_SPAN = "news.raw process"


@dataclass(frozen=True)
class SampleTrace:
    """The ids of what ``export_sample_trace`` exported (lowercase hex)."""

    service_name: str
    trace_id: str
    producer_span_id: str
    process_span_id: str
    linked_trace_id: str
    linked_span_id: str


def export_sample_trace(exporter: SpanExporter) -> SampleTrace:
    """Export two traces through ``exporter`` (a fresh service name each time): the producer span and
    its child ``process`` span; and the other record's span that ``process`` links to."""
    service = f"backends-selftest-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.backends")
    try:
        with tracer.start_as_current_span("other record", kind=SpanKind.PRODUCER) as other:
            pass
        other_context = other.get_span_context()
        with (
            tracer.start_as_current_span(
                PRODUCER_SPAN, kind=SpanKind.PRODUCER, attributes={"messaging.system": "kafka"}
            ) as producer,
            tracer.start_as_current_span(
                PROCESS_SPAN,
                kind=SpanKind.CONSUMER,
                links=[Link(other_context, {"messaging.kafka.offset": 7})],
                attributes={"messaging.system": "kafka", "messaging.batch.message_count": 2},
            ) as process,
        ):
            process.add_event("dead_letter", {"error.code": "invalid_field"})
            process.set_status(Status(StatusCode.ERROR, "one dead letter"))
    finally:
        provider.shutdown()
    return SampleTrace(
        service_name=service,
        trace_id=format(producer.get_span_context().trace_id, "032x"),
        producer_span_id=format(producer.get_span_context().span_id, "016x"),
        process_span_id=format(process.get_span_context().span_id, "016x"),
        linked_trace_id=format(other_context.trace_id, "032x"),
        linked_span_id=format(other_context.span_id, "016x"),
    )


def check_otlp_spans(spans: list[Span], sample: SampleTrace) -> None:
    """Assert that ``spans`` (decoded from OTLP) are the sample trace's two spans, intact."""
    by_name = {s.name: s for s in spans if s.trace_id == sample.trace_id}
    assert set(by_name) == {PRODUCER_SPAN, PROCESS_SPAN}, spans
    producer, process = by_name[PRODUCER_SPAN], by_name[PROCESS_SPAN]
    assert producer.span_id == sample.producer_span_id
    assert producer.parent_span_id is None
    assert producer.kind == "PRODUCER"
    assert producer.attributes["messaging.system"] == "kafka"
    assert process.span_id == sample.process_span_id
    assert process.parent_span_id == sample.producer_span_id
    assert process.kind == "CONSUMER"
    assert process.attributes["messaging.batch.message_count"] == 2
    assert [(link.trace_id, link.span_id) for link in process.links] == [
        (sample.linked_trace_id, sample.linked_span_id)
    ]
    assert process.links[0].attributes == {"messaging.kafka.offset": 7}
    assert [(e.name, e.attributes) for e in process.events] == [
        ("dead_letter", {"error.code": "invalid_field"})
    ]
    assert process.status == "ERROR"
    assert process.service_name == sample.service_name
    assert process.end_ns >= process.start_ns > 0
