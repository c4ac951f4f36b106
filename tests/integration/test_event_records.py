"""The Kafka records the service writes, as a consumer sees them: CloudEvents' Kafka binding for
article events, and dead-letter records a default Apache Kafka accepts whatever the input's key."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat

from schemas.events import CLOUDEVENTS_CONTENT_TYPE, ERROR_CODE_HEADER, RecordDeadLettered
from service import __version__
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.delivery.ingestor import Ingestor
from service.delivery.routing import record_size
from tests.conftest import BrokerHandle
from tests.support import Topics, feed, produce, read_all, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_article_events_are_structured_cloudevents_with_their_bytes_unchanged(
    broker: BrokerHandle,
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("ce-binding").create(bootstrap)
    payloads = [*feed(3), b"no markers"]
    sent = await produce(bootstrap, topics.input, payloads, headers=[("trace", b"t-1")])
    settings = settings_for(bootstrap, topics, idempotence=broker.idempotence, burst=True)
    assert await Ingestor(settings).run() == 0

    inputs = {r.offset: r for r in await read_all(bootstrap, topics.input)}
    articles = await read_all(bootstrap, topics.output)
    assert len(articles) == 3
    for rec in articles:
        assert list(rec.headers) == [("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())]
        event = from_structured(KafkaMessage(dict(rec.headers), rec.key, rec.value), JSONFormat(), None)
        assert event.get_type() == "io.markeringest.article.ingested.v1"
        assert event.get_extension("partitionkey") == rec.key.decode()
        offset = event.get_extension("kafkaoffset")
        assert isinstance(offset, int)
        src = inputs[offset]
        source = Source(topics.input, 0, offset, src.timestamp, src.key)
        [outcome] = process_payload(src.value, source, Limits(), now=dt.datetime.now(dt.UTC), version="x")
        assert rec.value == outcome.value, "the event's bytes are what the core wrote"

    [dead] = await read_all(bootstrap, topics.dlq)
    assert dict(dead.headers) == {"trace": b"t-1", ERROR_CODE_HEADER: b"no_markers"}
    assert dead.key == sent[3].key


KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588


@pytest.mark.kafka
async def test_a_dead_letter_of_an_input_with_a_huge_key_is_accepted_by_apache_kafka(
    broker: BrokerHandle,
) -> None:
    if broker.tansu:
        pytest.skip("needs Apache Kafka (max.message.bytes is enforced); Tansu accepts any size")
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("dl-bound").create(bootstrap)
    key = b"k" * 800_000
    payload = b"\xff\xfe" + bytes(range(256)) * 780  # not UTF-8: the raw copy is base64, 4/3 larger
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topics.input, payload, key=key, headers=[("trace", b"t-1")])
        # What the dead letter would be if it carried everything: over what the broker accepts.
        [outcome] = process_payload(
            payload,
            Source(topics.input, 0, 0, None, key),
            Limits(),
            now=dt.datetime.now(dt.UTC),
            version=__version__,
        )
        assert record_size(key, outcome.value, [("trace", b"t-1")]) > KAFKA_DEFAULT_MESSAGE_MAX_BYTES
    finally:
        await producer.stop()

    settings = settings_for(bootstrap, topics, idempotence=broker.idempotence, retry_max_seconds=1.0)
    ingestor = Ingestor(settings)
    task = asyncio.create_task(ingestor.run())
    try:
        dead: list[object] = []
        for _ in range(60):
            dead = await read_all(bootstrap, topics.dlq)
            if dead or task.done():
                break
            await asyncio.sleep(0.5)
        assert dead, "the dead letter never reached the topic: its partition is blocked"
    finally:
        ingestor.request_stop()
        status = await asyncio.wait_for(task, 60)
    assert status == 0

    [rec] = await read_all(bootstrap, topics.dlq)
    assert rec.key == key, "the key fits once the raw copy is cut"
    assert dict(rec.headers) == {"trace": b"t-1", ERROR_CODE_HEADER: b"invalid_encoding"}
    assert record_size(rec.key, rec.value, rec.headers) <= settings.max_event_bytes
    event = RecordDeadLettered.model_validate_json(rec.value)
    assert (event.raw.truncated, event.raw.size_bytes) == (True, len(payload))
    assert event.raw.base64 is not None
    assert payload.startswith(base64.b64decode(event.raw.base64))
    assert orjson.loads(rec.value)["source"]["key_base64"] is None
    assert await read_all(bootstrap, topics.output) == []
