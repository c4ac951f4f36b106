"""The spans of an input batch's partition (``service.delivery.tracing.PartitionTrace`` on
``service.ops.otel``): names, kinds, attributes, parents and links as the messaging conventions say;
the ``traceparent`` the events carry; sampling; and the spans lost before a backend has them."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest
from markertext import NOW, VERSION, record
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from schemas.events import ERROR_CODE_HEADER, ORIGIN_TRACEPARENT_HEADER
from service.core.events import Outcome, Source, process_payload
from service.core.limits import Limits
from service.core.trace_context import parse_traceparent, trace_context
from service.delivery.routing import ARTICLE_HEADERS, Destination, Routes
from service.delivery.tracing import PartitionTrace, transaction_span
from service.ops.otel import CountingExporter, CountingProcessor, OtelProcess, OtelTracer

TOPIC, PARTITION, GROUP, OFFSET = "news.raw", 3, "marker-ingest-test", 40
ROUTES = Routes("news.articles", "news.dead-letters", 1_000_000)
UPSTREAM_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
UPSTREAM_SPAN = 0xB7AD6B7169203331
PARENT = f"00-{UPSTREAM_TRACE:032x}-{UPSTREAM_SPAN:016x}-01".encode()
STATE = b"congo=t61rcWkgMzE"
INPUT_HEADERS = [("traceparent", PARENT), ("tracestate", STATE), ("feed", b"bbc")]
STARTING = PARENT.decode()


def _outcomes() -> list[Outcome]:
    """One message, two records: an article (index 0) and a dead letter (index 1, invalid date)."""
    payload = (record(fn="1") + " " + record(fn="2", date="2024-02-30")).encode()
    source = Source(TOPIC, PARTITION, OFFSET, None, b"feed-7")
    outcomes = process_payload(payload, source, Limits(), now=NOW, version=VERSION, traceparent=STARTING)
    assert [o.error is None for o in outcomes] == [True, False]
    return outcomes


def _provider(sampler: object = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)  # type: ignore[arg-type]
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def traced() -> Iterator[tuple[OtelTracer, InMemorySpanExporter]]:
    provider, exporter = _provider()
    yield OtelTracer(provider), exporter
    provider.shutdown()


def _route(trace: PartitionTrace) -> tuple[Destination, Destination]:
    article, dead = trace.route(OFFSET, _outcomes(), INPUT_HEADERS, trace_context(INPUT_HEADERS), STARTING)
    return article, dead


def _by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def _traceparent(span: ReadableSpan, flags: str = "01") -> bytes:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}".encode()


def test_the_process_span_is_a_consumer_root_linked_to_the_records_upstream_context(
    traced: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    _route(trace)
    assert exporter.get_finished_spans() == (), "nothing ends before the partition is processed"
    trace.processed(OFFSET, OFFSET + 4, 5)

    [process] = exporter.get_finished_spans()
    assert process.name == f"process {TOPIC}"
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is None, "a root: the records' contexts are links, not parents"
    assert process.context is not None
    assert process.context.trace_id != UPSTREAM_TRACE, "a trace of its own"
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": TOPIC,
        "messaging.destination.partition.id": "3",
        "messaging.consumer.group.name": GROUP,
        "messaging.batch.message_count": 5,
        "marker_ingest.first_offset": OFFSET,
        "marker_ingest.last_offset": OFFSET + 4,
    }

    [link] = process.links
    assert (link.context.trace_id, link.context.span_id) == (UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert link.context.is_remote
    assert link.context.trace_flags.sampled
    assert link.context.trace_state.to_header() == STATE.decode()

    [event] = process.events
    assert event.name == "marker_ingest.dead_letter"
    assert dict(event.attributes or {}) == {
        "marker_ingest.error_code": "invalid_field",
        "messaging.kafka.offset": OFFSET,
        "marker_ingest.record_index": 1,
    }


def test_a_message_without_a_context_adds_no_link(traced: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    [article, dead] = trace.route(OFFSET, _outcomes(), [("feed", b"bbc")], None, trace.traceparent)
    trace.processed(OFFSET, OFFSET, 1)
    [process] = exporter.get_finished_spans()
    assert process.links == ()
    assert len(process.events) == 1
    assert [name for name, _ in article.headers] == ["content-type", "traceparent"], "no tracestate"
    assert dict(dead.headers)[ORIGIN_TRACEPARENT_HEADER] == trace.traceparent.encode()
    assert trace.traceparent.encode() == _traceparent(process)


def test_messages_of_one_upstream_span_share_one_link(
    traced: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    other = [("traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")]
    for offset, headers in enumerate([INPUT_HEADERS, INPUT_HEADERS, other, INPUT_HEADERS, other]):
        trace.route(offset, _outcomes(), headers, trace_context(headers), STARTING)
    trace.processed(0, 4, 5)
    [process] = exporter.get_finished_spans()
    upstream = trace_context(INPUT_HEADERS)
    assert upstream is not None
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [
        (upstream.trace_id, upstream.span_id),
        (int("ab" * 16, 16), int("cd" * 8, 16)),
    ]
    assert len(process.events) == 5, "every dead letter is an event still"


def test_send_spans_are_producer_children_whose_context_the_events_carry(
    traced: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    article, dead = _route(trace)
    trace.processed(OFFSET, OFFSET, 1)
    assert [s.name for s in exporter.get_finished_spans()] == [f"process {TOPIC}"], (
        "send spans end only when the partition's events are delivered"
    )
    trace.delivered()

    spans = _by_name(exporter.get_finished_spans())
    process = spans[f"process {TOPIC}"]
    assert process.context is not None
    for topic, count in (("news.articles", 1), ("news.dead-letters", 1)):
        send = spans[f"send {topic}"]
        assert send.kind is SpanKind.PRODUCER
        assert send.parent is not None
        assert send.parent.span_id == process.context.span_id
        assert send.context is not None
        assert send.context.trace_id == process.context.trace_id
        assert dict(send.attributes or {}) == {
            "messaging.system": "kafka",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": count,
        }
        assert send.status.status_code is StatusCode.UNSET

    assert article.topic == "news.articles"
    assert list(article.headers) == [
        *ARTICLE_HEADERS,
        ("traceparent", _traceparent(spans["send news.articles"])),
        ("tracestate", STATE),
    ]
    assert dead.topic == "news.dead-letters"
    assert list(dead.headers) == [
        ("feed", b"bbc"),
        ("traceparent", _traceparent(spans["send news.dead-letters"])),
        ("tracestate", STATE),
        (ERROR_CODE_HEADER, b"invalid_field"),
        (ORIGIN_TRACEPARENT_HEADER, PARENT),
    ]


def test_one_send_span_per_topic_counts_every_event_sent_under_it(
    traced: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    first = _route(trace)
    second = trace.route(OFFSET + 1, _outcomes(), [], None, None)
    trace.processed(OFFSET, OFFSET + 1, 2)
    trace.delivered()
    spans = _by_name(exporter.get_finished_spans())
    assert len(spans) == 3
    assert (spans["send news.articles"].attributes or {})["messaging.batch.message_count"] == 2
    assert (spans["send news.dead-letters"].attributes or {})["messaging.batch.message_count"] == 2
    assert dict(first[0].headers)["traceparent"] == dict(second[0].headers)["traceparent"]
    assert dict(first[1].headers)["traceparent"] == dict(second[1].headers)["traceparent"]
    trace.delivered("again")
    assert len(exporter.get_finished_spans()) == 3, "a send span ends once"


def test_failed_delivery_marks_the_send_spans_failed(traced: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    _route(trace)
    trace.processed(OFFSET, OFFSET, 1)
    trace.delivered("boom")
    sends = [s for s in exporter.get_finished_spans() if s.name.startswith("send ")]
    assert len(sends) == 2
    for send in sends:
        assert send.status.status_code is StatusCode.ERROR
        assert send.status.description == "boom"


def test_a_transaction_span_is_a_child_of_the_process_span(
    traced: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    _route(trace)
    trace.processed(OFFSET, OFFSET, 1)
    with transaction_span(trace, "commit", 7):
        assert not any(s.name == "commit transaction" for s in exporter.get_finished_spans())
    trace.delivered()
    spans = _by_name(exporter.get_finished_spans())
    process, commit = spans[f"process {TOPIC}"], spans["commit transaction"]
    assert commit.parent is not None
    assert process.context is not None
    assert commit.parent.span_id == process.context.span_id
    assert commit.kind is SpanKind.CLIENT
    assert dict(commit.attributes or {}) == {"messaging.system": "kafka", "messaging.kafka.offset": 7}
    assert commit.status.status_code is StatusCode.UNSET


def test_an_exception_inside_a_transaction_span_marks_it_failed_and_goes_on(
    traced: tuple[OtelTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    with pytest.raises(RuntimeError, match="fenced"), trace.transaction("abort", 40):
        raise RuntimeError("fenced")
    [abort] = exporter.get_finished_spans()
    assert abort.name == "abort transaction"
    assert abort.status.status_code is StatusCode.ERROR
    assert "fenced" in (abort.status.description or "")


def test_without_a_trace_the_transaction_span_is_nothing() -> None:
    with transaction_span(None, "commit", 7) as entered:
        assert entered is None


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, TraceIdRatioBased(0)], ids=["always_off", "ratio_0"])
def test_an_unsampled_batch_records_nothing_but_its_events_still_carry_a_context(
    sampler: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("a span the sampler dropped is given links and events")

    monkeypatch.setattr(OtelProcess, "link", refuse)
    monkeypatch.setattr(OtelProcess, "dead_letter", refuse)
    provider, exporter = _provider(sampler)
    try:
        trace = PartitionTrace(OtelTracer(provider), TOPIC, PARTITION, GROUP, ROUTES)
        assert trace._process.recording is False
        article, dead = _route(trace)
        trace.processed(OFFSET, OFFSET, 1)
        with trace.transaction("commit", 7):
            pass
        trace.delivered()
        assert exporter.get_finished_spans() == ()
    finally:
        provider.shutdown()

    process_trace = int(trace.traceparent.split("-")[1], 16)
    for sent in (article, dead):
        header = dict(sent.headers)["traceparent"]
        fields = parse_traceparent(header)
        assert fields is not None, header
        trace_id, _, sampled = fields
        assert header.endswith(b"-00")
        assert sampled is False
        assert trace_id == process_trace != UPSTREAM_TRACE, "the process span's trace"
    assert trace.traceparent.endswith("-00")
    assert parse_traceparent(trace.traceparent.encode()) is not None


def test_the_log_fields_name_the_process_span(traced: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = traced
    trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
    trace.processed(OFFSET, OFFSET, 1)
    [process] = exporter.get_finished_spans()
    assert process.context is not None
    assert dict(trace.log_fields) == {
        "trace_id": f"{process.context.trace_id:032x}",
        "span_id": f"{process.context.span_id:016x}",
    }
    assert trace.traceparent.encode() == _traceparent(process)


# --- spans lost before the backend has them ---------------------------------------------------------


class _Failing(SpanExporter):
    def __init__(self, *, raises: bool = False) -> None:
        self.raises = raises
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        if self.raises:
            raise ConnectionError("collector unreachable")
        return SpanExportResult.FAILURE


def test_a_failed_export_counts_its_spans_as_export_failed() -> None:
    provider = TracerProvider()
    tracer = OtelTracer(provider)
    counted: list[tuple[str, int]] = []
    tracer.count_dropped(lambda reason, spans: counted.append((reason, spans)))
    failing = _Failing()
    provider.add_span_processor(SimpleSpanProcessor(CountingExporter(failing, tracer)))
    try:
        trace = PartitionTrace(tracer, TOPIC, PARTITION, GROUP, ROUTES)
        _route(trace)
        trace.processed(OFFSET, OFFSET, 1)
        trace.delivered()
    finally:
        provider.shutdown()
    assert failing.exported == 3
    assert counted == [("export_failed", 1)] * 3


def test_an_exporter_that_raises_is_counted_and_its_error_goes_on() -> None:
    tracer = OtelTracer(TracerProvider())
    counted: list[tuple[str, int]] = []
    tracer.count_dropped(lambda reason, spans: counted.append((reason, spans)))
    exporter = CountingExporter(_Failing(raises=True), tracer)
    with pytest.raises(ConnectionError):
        exporter.export([object(), object()])  # type: ignore[list-item]
    assert counted == [("export_failed", 2)]


def test_a_counter_that_fails_does_not_fail_the_export_thread() -> None:
    tracer = OtelTracer(TracerProvider())
    tracer.dropped("export_failed", 1)  # no counter yet: nothing to call

    def broken(reason: str, spans: int) -> None:
        raise RuntimeError("metrics are broken")

    tracer.count_dropped(broken)
    exporter = CountingExporter(_Failing(), tracer)
    assert exporter.export([object()]) is SpanExportResult.FAILURE  # type: ignore[list-item]


class _Blocking(SpanExporter):
    """An exporter whose first export waits for ``release``: the export thread is busy meanwhile."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.names: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.names.extend(span.name for span in spans)
        self.started.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS


def test_spans_pushed_out_of_a_full_queue_are_counted_as_queue_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # the thread exports only when woken
    provider = TracerProvider()
    tracer = OtelTracer(provider)
    counted: list[tuple[str, int]] = []
    tracer.count_dropped(lambda reason, spans: counted.append((reason, spans)))
    blocking = _Blocking()
    processor = CountingProcessor(CountingExporter(blocking, tracer), tracer)
    provider.add_span_processor(processor)
    try:

        def end(topic: str) -> None:
            tracer.process(topic, 0, GROUP).end(0, 0, 1)

        end("t0")  # a full batch (of one): the export thread takes it and blocks in the exporter
        assert blocking.started.wait(30), "the export thread never started exporting"
        end("t1")
        end("t2")  # the queue (2) is full now, and its thread busy
        assert counted == []
        end("t3")
        end("t4")
        assert counted == [("queue_full", 1), ("queue_full", 1)]
    finally:
        blocking.release.set()
        provider.shutdown()
    assert blocking.names == ["process t0", "process t3", "process t4"], "the oldest were pushed out"
    assert counted == [("queue_full", 1), ("queue_full", 1)], "what was exported is not counted"
