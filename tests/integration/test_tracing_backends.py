"""One trace from feed to article, read back from real backends (Zipkin, and OTLP/HTTP).

A producer of the test's own makes each input message under a span of its own and stamps it with
that span's ``traceparent``. The service runs as a process with tracing on, exporting to Zipkin and
to the tests' OTLP receiver at once; it is killed (-9) once and started again, its dead letters
are redriven (with tracing on too) and the redriven records ingested. Then the backends must hold,
for every input trace, the service's ``process`` span linking it and ``send`` spans under that;
every event's ``traceparent`` header must name a ``send`` span the backend knows; and every
article's CloudEvents ``traceparent`` must be the trace its record started, a redriven one's too.
Zipkin shows the parentage (its model has no links); the OTLP receiver shows the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from schemas.events import ORIGIN_TRACEPARENT_HEADER, REDRIVEN_HEADER
from service.cli import main
from service.core.trace_context import trace_context
from service.delivery.ingestor import Ingestor
from service.ops.tracing import start_tracing
from tests.backends.otlp import OtlpReceiver
from tests.backends.zipkin import Zipkin
from tests.conftest import BrokerHandle
from tests.faults.harness import ServiceProcess, wait_until
from tests.support import Topics, feed, produce, read_all, record, service_env, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.backends, pytest.mark.timeout(420)]

REDRIVE_KEY = "tracing-tests-redrive-key-0123456789abcdef"
TOO_LARGE = {3, 9}
"""Records over the first services' ``INGEST_MAX_PAYLOAD_BYTES``: dead letters, redriven later."""
BAD_DATE = 5
UNTRACED = 13
"""A record whose message has no ``traceparent``: its trace starts at the service."""


class Feed:
    """The test's producer: one span per input message, its context in the message's headers."""

    def __init__(self, zipkin: Zipkin, receiver: OtlpReceiver) -> None:
        self.provider = TracerProvider(resource=Resource({"service.name": "feed-producer"}))
        self.provider.add_span_processor(SimpleSpanProcessor(ZipkinExporter(endpoint=zipkin.spans_endpoint)))
        self.provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.traces_endpoint))
        )
        self.tracer = self.provider.get_tracer("feed")
        self.traceparents: dict[int, str] = {}
        """The ``traceparent`` each record's message carried, by FN."""

    def payload(self, fn: int) -> bytes:
        if fn in TOO_LARGE:
            return record(fn, text="x" * 1500).encode()
        return record(fn, date="2024-02-30" if fn == BAD_DATE else "2024-01-24").encode()

    async def send(self, bootstrap: str, topic: str, fns: range) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for fn in fns:
                headers: list[tuple[str, bytes]] = [("feed", b"tracing-test")]
                if fn != UNTRACED:
                    with self.tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER) as span:
                        ctx = span.get_span_context()
                        parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
                    self.traceparents[fn] = parent
                    headers.append(("traceparent", parent.encode()))
                await producer.send_and_wait(topic, self.payload(fn), key=str(fn).encode(), headers=headers)
        finally:
            await producer.stop()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for svc in started:
            if svc.alive:
                svc.kill()


def _ids(header: bytes) -> tuple[str, str]:
    context = trace_context([("traceparent", header)])
    assert context is not None, header
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _header(rec: Any, name: str) -> bytes | None:
    return next((v for n, v in rec.headers if n == name), None)


async def _events(bootstrap: str, topics: Topics, committed: bool) -> tuple[list[Any], list[Any]]:
    articles = await read_all(bootstrap, topics.output, committed=committed)
    dead = [
        r
        for r in await read_all(bootstrap, topics.dlq, committed=committed)
        if _header(r, REDRIVEN_HEADER) is None
    ]
    return articles, dead


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_one_trace_from_feed_to_article(
    broker: BrokerHandle,
    zipkin: Zipkin,
    otlp_receiver: OtlpReceiver,
    processes: list[ServiceProcess],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    delivery: str,
) -> None:
    if broker.tansu:
        pytest.skip("Tansu has no idempotent or transactional producer, and kill -9 needs a real broker")
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("tracing").create(bootstrap)
    committed = delivery == "exactly-once"
    name = f"marker-ingest-{uuid.uuid4().hex[:8]}"
    tracing = {
        "OTEL_TRACES_EXPORTER": "zipkin_json,otlp",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": zipkin.spans_endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_receiver.traces_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": name,
    }
    env = service_env(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        INGEST_DELIVERY=delivery,
        INGEST_MAX_PAYLOAD_BYTES="800",
        INGEST_REDRIVE_KEY=REDRIVE_KEY,
        **tracing,
    )
    feed = Feed(zipkin, otlp_receiver)

    def start(label: str, **extra: str) -> ServiceProcess:
        svc = ServiceProcess({**env, **extra}, tmp_path / f"{label}.log").start()
        processes.append(svc)
        return svc

    async def exported(count: int, svc: ServiceProcess) -> None:
        """Until ``count`` events are out and every one's ``send`` span reached both backends."""

        async def done() -> bool:
            articles, dead = await _events(bootstrap, topics, committed)
            if len(articles) + len(dead) < count:
                return False
            received = {s.span_id for s in otlp_receiver.spans}
            return all(_ids(_header(r, "traceparent") or b"")[1] in received for r in [*articles, *dead])

        await wait_until(done, within=90, interval=0.5, what=f"{count} events exported", detail=svc.tail)

    # Half the feed; once it is out and its spans exported, kill -9; the rest to a new process.
    await feed.send(bootstrap, topics.input, range(1, 7))
    first = start("first")
    await exported(6, first)
    first.kill()
    await feed.send(bootstrap, topics.input, range(7, 14))
    second = start("second")
    await exported(13, second)
    second.terminate()
    assert await second.wait_exit(within=40) == 0, second.tail()

    # Redrive what was too large (tracing on in the command too); ingest it with a higher limit.
    for var, value in {**env, **tracing}.items():
        if var.startswith(("INGEST_", "KAFKA_", "OTEL_")):
            monkeypatch.setenv(var, value)
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["redrive", "--json", "--code", "payload_too_large"])
    report = orjson.loads(capsys.readouterr().out)
    assert (code, report["redriven"]) == (0, 2), report
    third = start("third", INGEST_MAX_PAYLOAD_BYTES="100000")
    await exported(15, third)
    third.terminate()
    assert await third.wait_exit(within=40) == 0, third.tail()

    articles, dead = await _events(bootstrap, topics, committed)
    by_fn = {orjson.loads(a.value)["data"]["fn"]: a for a in articles}
    assert sorted(by_fn) == sorted(set(range(1, 14)) - {BAD_DATE}), "every good record, and the redriven"
    assert (len(articles), len(dead)) == (12, 3), "no duplicate: the kill came after a commit"

    spans = otlp_receiver.spans
    ours = [s for s in spans if s.service_name == name]
    by_id = {s.span_id: s for s in ours}
    processes_ = [s for s in ours if s.name == f"process {topics.input}"]
    redrives = [s for s in ours if s.attributes.get("marker_ingest.operation") == "redrive"]
    assert len(redrives) == 1
    redrive = redrives[0]
    assert redrive.kind == "PRODUCER"
    assert redrive.name == f"send {topics.input}"

    # Every event's traceparent names a send span, child of a process span, in both backends.
    for rec in [*articles, *dead]:
        trace_id, span_id = _ids(_header(rec, "traceparent") or b"")
        send = by_id[span_id]
        topic = topics.output if rec in articles else topics.dlq
        assert (send.name, send.kind, send.trace_id) == (f"send {topic}", "PRODUCER", trace_id)
        assert send.attributes["messaging.destination.name"] == topic
        process = by_id[send.parent_span_id or ""]
        assert process.name == f"process {topics.input}"
        assert process.kind == "CONSUMER"
        assert process.attributes["messaging.system"] == "kafka"
        assert process.attributes["messaging.consumer.group.name"] == topics.group
        in_zipkin = {s["id"]: s for s in zipkin.wait_for_trace(trace_id, spans=2)}
        assert in_zipkin[span_id]["parentId"] == process.span_id
        assert in_zipkin[process.span_id]["name"] == f"process {topics.input}".lower()

    # Every input trace is linked by a process span; the redriven records' by the redrive's span.
    linked = {(link.trace_id, link.span_id) for s in processes_ for link in s.links}
    for fn, parent in feed.traceparents.items():
        assert _ids(parent.encode()) in linked, fn
        assert zipkin.wait_for_trace(_ids(parent.encode())[0]), "the producer's span is in Zipkin"
    redrive_ids = (redrive.trace_id, redrive.span_id)
    assert redrive_ids in linked
    dead_contexts = {_ids(_header(d, "traceparent") or b"") for d in dead}
    assert {(link.trace_id, link.span_id) for link in redrive.links} <= dead_contexts
    assert len(redrive.links) == 2

    # The article's CloudEvents traceparent is the trace its record started: the input's (for a
    # redriven record, its original input's), or, for a message without one, the process span's.
    for fn, article in by_fn.items():
        attribute = orjson.loads(article.value)["traceparent"]
        if fn == UNTRACED:
            trace_id, span_id = _ids(attribute.encode())
            assert by_id[span_id].name == f"process {topics.input}"
            assert _ids(_header(article, "traceparent") or b"")[0] == trace_id
        else:
            assert attribute == feed.traceparents[fn], fn
    for letter in dead:
        fn = int(letter.key)
        assert _header(letter, ORIGIN_TRACEPARENT_HEADER) == feed.traceparents[fn].encode()

    # Dead letters are span events; exactly-once commits are spans; record lines carry the ids.
    events = [e for s in processes_ for e in s.events if e.name == "marker_ingest.dead_letter"]
    assert sorted(e.attributes["marker_ingest.error_code"] for e in events) == sorted(
        ["payload_too_large", "payload_too_large", "invalid_field"]
    )
    commits = [s for s in ours if s.name == "commit transaction"]
    if committed:
        assert commits
        assert all(by_id[c.parent_span_id or ""].name == f"process {topics.input}" for c in commits)
    else:
        assert not commits
    logged = [line for svc in (first, second, third) for line in svc.events("record")]
    assert logged
    assert all(by_id[line["span_id"]].trace_id == line["trace_id"] for line in logged)


class Blackhole:
    """A collector that accepts connections and never answers (an export waits for its timeout)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.server.accept()[0])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._thread.join(5)
        self.server.close()
        for conn in self.held:
            conn.close()


async def test_an_unreachable_collector_neither_blocks_nor_stops_ingestion(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("tracing-blackhole").create(bootstrap)
    await produce(bootstrap, topics.input, feed(300, bad_every=10))
    hole = Blackhole()
    try:
        for name, value in {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{hole.port}/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "30",
            "OTEL_BSP_MAX_QUEUE_SIZE": "4",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
            "OTEL_BSP_SCHEDULE_DELAY": "10",
        }.items():
            monkeypatch.setenv(name, value)
        settings = settings_for(
            bootstrap, topics, idempotence=broker.idempotence, burst=True, batch_max_messages=10
        )
        tracer = start_tracing(os.environ, max_links=settings.batch_max_messages)
        assert tracer is not None
        ingestor = Ingestor(settings, tracer)
        assert await asyncio.wait_for(ingestor.run(), 120) == 0, "the export thread waits, ingestion does not"
        assert ingestor.records_done == 300
        dropped = ingestor.metrics.registry.get_sample_value(
            "marker_ingest_trace_spans_dropped_total", {"reason": "queue_full"}
        )
        assert dropped is not None
        assert dropped > 0, "a full queue drops spans, and counts them"
        started = time.monotonic()
        await asyncio.to_thread(tracer.shutdown, 2.0)
        assert time.monotonic() - started < 5, "a stop waits a bounded time for the collector"
        assert hole.held, "the exporter did try the collector"
    finally:
        hole.close()
    articles = await read_all(bootstrap, topics.output)
    assert len(articles) == 270
    assert all(_header(a, "traceparent") for a in articles), "contexts flow though no span is exported"
