"""Every ``KAFKA_COMPRESSION_TYPE`` on Apache Kafka: the service reads input compressed with it,
writes its events compressed with it, and a consumer reads them back; ``produce`` writes with it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from service.delivery.ingestor import Ingestor
from tests.conftest import BrokerHandle
from tests.support import Topics, read_all, record, service_env, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.timeout(240)]

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""The codec ids of the record batch attributes (bits 0-2), as Kafka numbers them."""


async def _codecs(bootstrap: str, topic: str) -> list[int]:
    """The codec of each record batch on partition 0 of ``topic``, as the broker stores it."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, 0))
        request = FetchRequest(100, 1, 8 << 20, 0, [(topic, [(0, 0, 8 << 20)])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    [(_, [partition])] = response.topics
    assert partition[1] == 0, f"fetch error {partition[1]}"
    records, found = MemoryRecords(partition[-1]), []
    while (batch := records.next_batch()) is not None:
        found.append(batch.compression_type)
    return found


@pytest.mark.parametrize("codec", sorted(CODECS))
async def test_the_service_reads_and_writes_each_codec(broker: BrokerHandle, codec: str) -> None:
    topics = await Topics.unique(f"codec-{codec}").create(broker.bootstrap_servers)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, compression_type=codec, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        batch = producer.create_batch()
        for fn in range(1, 21):
            body = record(fn, text="A repeated sentence compresses well. " * 20).encode()
            assert batch.append(key=None, value=body, timestamp=None) is not None
        await (await producer.send_batch(batch, topics.input, partition=0))
        await producer.send_and_wait(topics.input, b"not marker text", partition=0)
    finally:
        await producer.stop()
    assert set(await _codecs(broker.bootstrap_servers, topics.input)) == {CODECS[codec]}

    settings = settings_for(
        broker.bootstrap_servers,
        topics,
        idempotence=broker.idempotence,
        burst=True,
        kafka_compression_type=codec,
    )
    assert await Ingestor(settings).run() == 0

    articles = await read_all(broker.bootstrap_servers, topics.output)
    dead = await read_all(broker.bootstrap_servers, topics.dlq)
    assert sorted(orjson.loads(r.value)["data"]["fn"] for r in articles) == list(range(1, 21))
    assert [orjson.loads(r.value)["error"]["code"] for r in dead] == ["no_markers"]
    for topic in (topics.output, topics.dlq):
        assert set(await _codecs(broker.bootstrap_servers, topic)) == {CODECS[codec]}, topic


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
async def test_produce_writes_with_the_codec(broker: BrokerHandle, tmp_path: Path, codec: str) -> None:
    topics = await Topics.unique(f"produce-{codec}").create(broker.bootstrap_servers)
    for fn in (1, 2, 3):
        (tmp_path / f"{fn}.txt").write_text(record(fn), encoding="utf-8")
    env = service_env(
        broker.bootstrap_servers, topics, idempotence=broker.idempotence, KAFKA_COMPRESSION_TYPE=codec
    )
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "produce", str(tmp_path)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stderr == b""
    assert len(await read_all(broker.bootstrap_servers, topics.input)) == 3
    assert set(await _codecs(broker.bootstrap_servers, topics.input)) == {CODECS[codec]}
