"""Zipkin, run from its Maven Central jar: the SDK's Zipkin exporter writes a trace, the API reads it."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.zipkin.json import ZipkinExporter

from tests.backends.process import is_loopback, listening_addresses
from tests.backends.sample_trace import PROCESS_SPAN, PRODUCER_SPAN, export_sample_trace
from tests.backends.zipkin import Zipkin

pytestmark = pytest.mark.backends


def test_a_trace_exported_by_the_sdk_is_read_back_from_zipkin(zipkin: Zipkin) -> None:
    sample = export_sample_trace(ZipkinExporter(endpoint=zipkin.spans_endpoint))

    spans = zipkin.wait_for_trace(sample.trace_id, spans=2)
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {PRODUCER_SPAN, PROCESS_SPAN}
    producer, process = by_name[PRODUCER_SPAN], by_name[PROCESS_SPAN]
    assert producer["id"] == sample.producer_span_id
    assert "parentId" not in producer
    assert producer["kind"] == "PRODUCER"
    assert process["id"] == sample.process_span_id
    assert process["parentId"] == sample.producer_span_id
    assert process["kind"] == "CONSUMER"
    assert process["localEndpoint"]["serviceName"] == sample.service_name
    assert process["tags"]["messaging.system"] == "kafka"
    assert process["tags"]["otel.status_code"] == "ERROR"
    # The event becomes an annotation. Zipkin's model has no links: the exporter drops them.
    assert [a["value"] for a in process["annotations"]] == [
        '{"dead_letter": {"error.code": "invalid_field"}}'
    ]

    # The search API finds it by service name, and so does the linked trace's lookup.
    assert sample.service_name in zipkin.services()
    found = zipkin.traces(service_name=sample.service_name)
    assert sample.trace_id in {trace[0]["traceId"] for trace in found}
    assert [s["id"] for s in zipkin.wait_for_trace(sample.linked_trace_id)] == [sample.linked_span_id]
    assert zipkin.trace("0" * 31 + "1") == []


def test_zipkin_listens_on_loopback_only(zipkin: Zipkin) -> None:
    assert zipkin.process is not None
    assert zipkin.process.pid is not None
    addresses = listening_addresses(zipkin.process.pid)
    assert ("127.0.0.1", zipkin.port) in addresses
    assert all(is_loopback(host) for host, _ in addresses), addresses
