"""The tests' OTLP/HTTP receiver: the SDK's OTLP exporter (protobuf, plain and compressed) and OTLP
JSON reach it, decoded span for span; what is not an export request is refused."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tests.backends.otlp import OtlpReceiver
from tests.backends.sample_trace import check_otlp_spans, export_sample_trace

pytestmark = pytest.mark.backends


def _post(url: str, body: bytes, content_type: str, method: str = "POST") -> int:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_the_sdk_exporter_reaches_the_receiver(otlp_receiver: OtlpReceiver, compression: Compression) -> None:
    exporter = OTLPSpanExporter(endpoint=otlp_receiver.traces_endpoint, compression=compression)
    sample = export_sample_trace(exporter)
    spans = otlp_receiver.wait_for_spans(3)
    assert len(spans) == 3, "the linked span, then the process span, then the producer span"
    check_otlp_spans(spans, sample)
    assert {s.scope for s in spans} == {"tests.backends"}
    assert otlp_receiver.requests == 3, "one request per span (SimpleSpanProcessor)"
    assert otlp_receiver.rejected == []


def test_otlp_json_is_decoded_too(otlp_receiver: OtlpReceiver) -> None:
    trace_id, span_id, parent_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173"
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "feed"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "upstream"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "parentSpanId": parent_id,
                                "name": "publish",
                                "kind": 4,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "messaging.batch.message_count", "value": {"intValue": "3"}},
                                    {
                                        "key": "tags",
                                        "value": {"arrayValue": {"values": [{"stringValue": "a"}]}},
                                    },
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    assert _post(otlp_receiver.traces_endpoint, orjson.dumps(document), "application/json") == 200
    [span] = otlp_receiver.wait_for_spans(1)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (trace_id, span_id, parent_id)
    assert (span.name, span.kind, span.scope, span.service_name) == (
        "publish",
        "PRODUCER",
        "upstream",
        "feed",
    )
    assert span.attributes == {"messaging.batch.message_count": 3, "tags": ["a"]}
    assert span.end_ns - span.start_ns == 10**9


def test_what_is_not_an_export_request_is_refused(otlp_receiver: OtlpReceiver) -> None:
    url = otlp_receiver.traces_endpoint
    assert _post(url, b"\xff\x00 not protobuf", "application/x-protobuf") == 400
    assert _post(url, b"{not json", "application/json") == 400
    assert _post(url, b"", "text/plain") == 415
    assert _post(f"{otlp_receiver.endpoint}/v1/metrics", b"", "application/x-protobuf") == 404
    assert _post(url, b"", "application/x-protobuf", method="GET") == 405
    assert otlp_receiver.spans == []
    assert otlp_receiver.requests == 0
    assert len(otlp_receiver.rejected) == 5
