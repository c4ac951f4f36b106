"""Jaeger, where a built binary is cached: the SDK's OTLP/HTTP exporter writes a trace, the query
API v3 reads it back. Skipped, with the reason, without the binary (CI does not build it)."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tests.backends.jaeger import Jaeger
from tests.backends.process import is_loopback, listening_addresses
from tests.backends.sample_trace import check_otlp_spans, export_sample_trace

pytestmark = pytest.mark.backends


def test_a_trace_exported_over_otlp_is_read_back_from_jaeger(jaeger: Jaeger) -> None:
    sample = export_sample_trace(OTLPSpanExporter(endpoint=f"{jaeger.otlp_endpoint}/v1/traces"))

    check_otlp_spans(jaeger.wait_for_trace(sample.trace_id, spans=2), sample)
    assert [s.span_id for s in jaeger.wait_for_trace(sample.linked_trace_id)] == [sample.linked_span_id]
    assert sample.service_name in jaeger.services()
    found = jaeger.traces(sample.service_name)
    assert {sample.trace_id, sample.linked_trace_id} <= set(found)
    assert jaeger.trace("0" * 31 + "1") == []


def test_jaeger_listens_on_loopback_only(jaeger: Jaeger) -> None:
    assert jaeger.process is not None
    assert jaeger.process.pid is not None
    addresses = listening_addresses(jaeger.process.pid)
    ports = {jaeger.otlp_http_port, jaeger.otlp_grpc_port, jaeger.query_port, jaeger.query_grpc_port}
    assert {port for _, port in addresses} == ports
    assert all(is_loopback(host) for host, _ in addresses), addresses
