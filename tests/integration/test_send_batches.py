"""Sending with aiokafka's batch API (``service.delivery.app.Outbox``) against a real broker: the partition
``producer.send(key=...)`` would pick, input order per output partition, batches split when full, an
event over the request size failed on its own; and the service end to end over many batches."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from service.delivery.ingestor import Ingestor
from service.delivery.outbox import Outbox, Send
from service.kafka.topics import create_topics
from tests.conftest import BrokerHandle
from tests.support import Ledger, Topics, expected_outcomes, feed, produce, read_all, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

INPUT = TopicPartition("in", 0)


@dataclass
class _Event:
    """What ``Outbox`` reads of an outcome."""

    key: bytes | None
    value: bytes
    error: None = None


def _send(topic: str, offset: int, key: bytes | None, value: bytes) -> Send:
    return Send(INPUT, offset, topic, _Event(key, value), [])  # type: ignore[arg-type]


async def test_outbox_partitions_like_send_keeps_order_and_splits_full_batches(broker: BrokerHandle) -> None:
    bootstrap = broker.bootstrap_servers
    by_send, by_batch = (f"{t}-{Topics.unique('outbox').group}" for t in ("send", "batch"))
    await create_topics(bootstrap, {by_send: 7, by_batch: 7})
    # Small batches (16 KB) of ~3 KB events: a batch holds a handful, so most appends to a full
    # batch are refused and a new one is started.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, max_batch_size=16_384)
    await producer.start()
    try:
        keys = [str(fn).encode() for fn in range(60)] * 4  # every key four times: order per key matters
        values = [orjson.dumps({"seq": i, "pad": "x" * 3000}) for i in range(len(keys))]
        expected_partition = {}
        for key, value in zip(keys, values, strict=True):
            meta = await (await producer.send(by_send, value, key=key))
            expected_partition[key] = meta.partition

        outbox = Outbox(producer, max_request_size=1 << 20)
        sends = [_send(by_batch, i, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
        for send in sends:
            await outbox.add(send)
        await outbox.flush()
        assert all(s.error is None and s.future is not None for s in sends)
        await asyncio.gather(*{id(s.future): s.future for s in sends}.values())
        batches = len({id(s.future) for s in sends})
    finally:
        await producer.stop()

    assert batches >= len(keys) * 3000 // 16_384, f"only {batches} batches: full batches were not split"
    landed = await read_all(bootstrap, by_batch)
    assert len(landed) == len(keys)
    for rec in landed:
        assert rec.partition == expected_partition[rec.key], rec.key
    per_partition: dict[int, list[int]] = {}
    for rec in landed:
        per_partition.setdefault(rec.partition, []).append(orjson.loads(rec.value)["seq"])
    assert len(per_partition) > 1
    for seqs in per_partition.values():
        assert seqs == sorted(seqs), "the output order of a partition differs from the order of input"


async def test_an_event_over_the_request_size_fails_alone_and_the_others_are_sent(
    broker: BrokerHandle,
) -> None:
    bootstrap = broker.bootstrap_servers
    topic = f"oversize-{Topics.unique('outbox').group}"
    await create_topics(bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        outbox = Outbox(producer, max_request_size=20_000)
        small, big, after = (
            _send(topic, 0, b"1", b"a" * 100),
            _send(topic, 1, b"2", b"b" * 20_000),
            _send(topic, 2, b"3", b"c" * 100),
        )
        for send in (small, big, after):
            await outbox.add(send)
        await outbox.flush()
        assert isinstance(big.error, MessageSizeTooLargeError)
        assert not big.error.retriable  # logged as send.refused; its input partition blocks
        assert big.future is None
        assert small.future is not None
        assert after.future is not None
        await small.future
        await after.future
    finally:
        await producer.stop()
    assert [r.value[:1] for r in await read_all(bootstrap, topic)] == [b"a", b"c"]


async def test_the_service_keeps_input_order_over_many_batches(broker: BrokerHandle) -> None:
    """~2.5 MB of events from one getmany batch: several 512 KB output batches per topic, in order."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("batches").create(bootstrap)
    sent = await produce(bootstrap, topics.input, feed(400, body_bytes=5000, bad_every=10))

    code = await Ingestor(settings_for(bootstrap, topics, idempotence=broker.idempotence, burst=True)).run()

    assert code == 0
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
    articles = [orjson.loads(r.value)["kafkaoffset"] for r in await read_all(bootstrap, topics.output)]
    dead = [orjson.loads(r.value)["source"]["offset"] for r in await read_all(bootstrap, topics.dlq)]
    assert len(articles) == 360
    assert len(dead) == 40
    assert articles == sorted(articles)
    assert dead == sorted(dead)


async def test_a_small_bytes_in_flight_ceiling_keeps_the_accounting_and_the_order(
    broker: BrokerHandle,
) -> None:
    """A ceiling of a few messages' worth: the batch before is completed and the batch in hand's
    acknowledgements awaited every few messages, in the middle of each fetched batch."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("ceiling").create(bootstrap, partitions=2)
    sent = await produce(bootstrap, topics.input, feed(400, body_bytes=500, bad_every=7), partitions=2)
    settings = settings_for(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        burst=True,
        batch_max_messages=100,
        max_payload_bytes=4096,
        max_bytes_in_flight=8192,
    )
    ingestor = Ingestor(settings)

    assert await ingestor.run() == 0

    assert ingestor.messages_done == 400
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
    for topic in (topics.output, topics.dlq):
        per_input: dict[int, list[int]] = {}
        for rec in await read_all(bootstrap, topic):
            event = orjson.loads(rec.value)
            if topic == topics.dlq:
                partition, offset = event["source"]["partition"], event["source"]["offset"]
            else:
                partition, offset = event["kafkapartition"], event["kafkaoffset"]
            per_input.setdefault(partition, []).append(offset)
        assert set(per_input) == {0, 1}
        for offsets in per_input.values():
            assert offsets == sorted(offsets)
