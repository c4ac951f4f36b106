"""What ``marker-ingest redrive`` reads, without joining a consumer group: the dead-letter topic to
its end (``read_dead_letters``, committed records only), the input messages a dead letter's
incomplete copy must be completed from (``read_inputs``), and the record size each topic it writes
to accepts (``record_limits``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from service.settings import Settings
from service.tools.redrive_messages import DeadLetterRecord, InputRecord, InputRef


async def read_dead_letters(settings: Settings) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic, without joining a consumer group."""
    from service.kafka.topics import read_topic

    kwargs = _client_kwargs(settings)
    bootstrap = kwargs.pop("bootstrap_servers")
    kwargs["max_partition_fetch_bytes"] = max(1024 * 1024, settings.max_event_bytes + 65536)
    # Dead letters of aborted transactions (INGEST_DELIVERY=exactly-once) never happened: skip them.
    kwargs["isolation_level"] = "read_committed"
    records = await read_topic(bootstrap, settings.dlq_topic, client_kwargs=kwargs)
    return [DeadLetterRecord(r.partition, r.offset, r.key, r.value, tuple(r.headers or ())) for r in records]


INPUT_QUIET_SECONDS = 6.0
"""How long a partition may answer no fetch with records or a watermark before reading it stops."""


async def read_inputs(settings: Settings, wanted: Iterable[InputRef]) -> dict[InputRef, InputRecord]:
    """The input messages at ``wanted`` (topic, partition, offset), read back without a consumer
    group, as a read_committed consumer sees them; one that is gone (a topic or partition that does
    not exist, an offset retention deleted or compaction removed) is missing from the result."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import OffsetOutOfRangeError

    from service.kafka.clients import max_request_size
    from service.kafka.topics import started

    by_partition: dict[tuple[str, int], set[int]] = {}
    for topic, partition, offset in wanted:
        by_partition.setdefault((topic, partition), set()).add(offset)
    found: dict[InputRef, InputRecord] = {}
    if not by_partition:
        return found
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="none",  # an offset out of range is gone: say so, never read elsewhere
        max_partition_fetch_bytes=max(1024 * 1024, max_request_size(settings)),
        **_client_kwargs(settings),
    )
    loop = asyncio.get_running_loop()
    async with started(consumer):
        for (topic, partition), offsets in sorted(by_partition.items()):
            if partition not in await _partitions(consumer, topic):
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            for offset in sorted(offsets):
                if (topic, partition, offset) in found:
                    continue
                consumer.seek(tp, offset)
                quiet_since = loop.time()
                while loop.time() - quiet_since < INPUT_QUIET_SECONDS:
                    try:
                        batch = await consumer.getmany(tp, timeout_ms=200)
                    except OffsetOutOfRangeError:
                        break
                    records = batch.get(tp, [])
                    for r in records:
                        if r.offset in offsets:
                            found[(topic, partition, r.offset)] = InputRecord(
                                r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ())
                            )
                    if records and records[-1].offset >= offset:
                        break
                    if records:
                        quiet_since = loop.time()
                        continue
                    end = consumer.last_stable_offset(tp)
                    if end is not None and await consumer.position(tp) >= end:
                        break
    return found


async def record_limits(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker enforces it; a topic whose configuration
    cannot be read (no DESCRIBE_CONFIGS, a broker without DescribeConfigs) is left out."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    wanted = [
        ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in sorted(set(topics))
    ]
    admin = AIOKafkaAdminClient(**_client_kwargs(settings))
    limits: dict[str, int] = {}
    try:
        await admin.start()
        for response in await admin.describe_configs(wanted):
            for error, _, _, name, entries, *_ in response.resources:
                values = [entry[1] for entry in entries if entry[0] == "max.message.bytes"]
                if error == 0 and values and str(values[0]).isdigit():
                    limits[name] = int(values[0])
    except KafkaError:
        return {}
    finally:
        await admin.close()
    return limits


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """The partitions of ``topic``; none when the cluster's metadata does not name it within 2 s."""
    for _ in range(20):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return set()


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    """The connection arguments of a client of the tool."""
    from service.kafka.clients import Kafka

    return Kafka.of(settings).client_kwargs()
