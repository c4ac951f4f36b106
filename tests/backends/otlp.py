"""An OTLP/HTTP trace receiver for the tests, and the ``Span`` that OTLP data decodes into.

``OtlpReceiver`` is a small HTTP server on a free loopback port, on a thread of the test process:
``POST /v1/traces`` takes an ``ExportTraceServiceRequest`` as protobuf (``application/x-protobuf``,
what the SDK's ``opentelemetry-exporter-otlp-proto-http`` sends) or as OTLP JSON
(``application/json``), optionally gzip- or deflate-compressed; it decodes the request with
``opentelemetry-proto``, keeps every span, and answers as the OTLP specification says (200 with an
``ExportTraceServiceResponse``; 400 for a body it cannot decode; 404, 405 and 415 otherwise).

``decode_json`` turns OTLP JSON (also what Jaeger's ``/api/v3`` answers) into the same ``Span``s.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status, TracesData

TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class Link:
    """A span's link to another span (a batch's link to each record's upstream context)."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A span event (a dead letter's error code, an exception)."""

    name: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """One span as a backend received it; ids in lowercase hex, as in a ``traceparent`` header."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    """``INTERNAL``, ``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER`` or ``UNSPECIFIED``."""
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    links: tuple[Link, ...]
    events: tuple[Event, ...]
    status: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    start_ns: int
    end_ns: int

    @property
    def service_name(self) -> str | None:
        """The resource's ``service.name``."""
        name = self.resource.get("service.name")
        return name if isinstance(name, str) else None


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode_request(message: ExportTraceServiceRequest | TracesData) -> list[Span]:
    """Every span of an export request (or of ``TracesData``)."""
    spans = []
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        kind=SpanProto.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(s.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        links=tuple(
                            Link(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
                            for link in s.links
                        ),
                        events=tuple(Event(e.name, _attributes(e.attributes)) for e in s.events),
                        status=Status.StatusCode.Name(s.status.code).removeprefix("STATUS_CODE_"),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return spans


_HEX_IDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP JSON writes trace and span ids in hex where protobuf's JSON mapping expects base64."""
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _HEX_IDS and isinstance(value, str):
                out[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                out[key] = _hex_ids_to_base64(value)
        return out
    return node


def decode_json(document: dict[str, Any]) -> list[Span]:
    """The spans of an OTLP JSON document (``{"resourceSpans": [...]}``)."""
    message = TracesData()
    json_format.ParseDict(_hex_ids_to_base64(document), message, ignore_unknown_fields=True)
    return decode_request(message)


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1; a context manager that starts and stops it.

    Point an exporter at ``traces_endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT=endpoint``).
    ``spans`` is what arrived, in order; ``wait_for_spans`` polls for more.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.requests = 0
        """Export requests decoded and answered 200."""
        self.rejected: list[str] = []
        """Why each refused request was refused."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _refuse(self, status: HTTPStatus, why: str) -> None:
                with receiver._lock:
                    receiver.rejected.append(why)
                self._answer(status, why.encode())

            def do_GET(self) -> None:
                self._refuse(
                    HTTPStatus.METHOD_NOT_ALLOWED if self.path == TRACES_PATH else HTTPStatus.NOT_FOUND,
                    f"GET {self.path}",
                )

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != TRACES_PATH:
                    self._refuse(HTTPStatus.NOT_FOUND, f"POST {self.path}")
                    return
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if content_type not in ("application/x-protobuf", "application/json"):
                    self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {content_type!r}")
                    return
                try:
                    raw = _decompress(body, (self.headers.get("Content-Encoding") or "").strip().lower())
                    if content_type == "application/json":
                        spans = decode_json(json.loads(raw))
                    else:
                        request = ExportTraceServiceRequest()
                        request.ParseFromString(raw)
                        spans = decode_request(request)
                except Exception as exc:
                    self._refuse(HTTPStatus.BAD_REQUEST, f"undecodable {content_type}: {exc!r}")
                    return
                with receiver._lock:
                    receiver._spans.extend(spans)
                    receiver.requests += 1
                if content_type == "application/json":
                    self._answer(200, b"{}", "application/json")
                else:
                    response = ExportTraceServiceResponse().SerializeToString()
                    self._answer(200, response, "application/x-protobuf")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        """The base URL (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        self.traces_endpoint = f"{self.endpoint}{TRACES_PATH}"
        """The traces URL (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""
        self._thread: threading.Thread | None = None

    def start(self) -> OtlpReceiver:
        """Serve on a thread of its own."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def spans(self) -> list[Span]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans received so far."""
        with self._lock:
            self._spans.clear()

    def wait_for_spans(
        self, count: int = 1, *, where: Callable[[Span], bool] | None = None, within: float = 30
    ) -> list[Span]:
        """Poll until at least ``count`` spans (those ``where`` accepts) have arrived; return them."""
        deadline = time.monotonic() + within
        while True:
            found = [s for s in self.spans if where is None or where(s)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(found)} of {count} spans within {within:g}s; refused: {self.rejected}"
                )
            time.sleep(0.05)
