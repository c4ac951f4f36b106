"""Topic chores shared by the demo, the operator tools and the tests: create, read to the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

TOPIC_ALREADY_EXISTS = 36


class _Client(Protocol):
    async def start(self) -> Any: ...
    async def stop(self) -> Any: ...


C = TypeVar("C", bound=_Client)


@contextlib.asynccontextmanager
async def started(client: C) -> AsyncIterator[C]:
    """A started producer or consumer, stopped however the block ends, also when ``start()``
    itself fails (an unreachable broker): otherwise aiokafka warns of an unclosed client."""
    try:
        await client.start()
        yield client
    finally:
        await client.stop()


class TopicNotFound(UnknownTopicOrPartitionError):  # type: ignore[misc]  # aiokafka is untyped
    """The topic does not exist on the cluster (its metadata never named it)."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


async def create_topics(
    bootstrap_servers: str, topics: dict[str, int], *, client_kwargs: dict[str, object] | None = None
) -> None:
    """Create each topic with its partition count; topics that exist already are left alone."""
    kwargs = dict(client_kwargs or {})
    kwargs["bootstrap_servers"] = bootstrap_servers
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
        )
        for name, code, message in (t[:3] for t in response.topic_errors):
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"cannot create topic {name!r}: error {code} {message or ''}".strip())
    finally:
        await admin.close()


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    client_kwargs: dict[str, Any] | None = None,
    quiet_seconds: float = 6.0,
) -> list[Any]:
    """Every record of ``topic`` from the beginning to its end, without joining a group.

    The end is each partition's high watermark as fetch responses report it (on the Tansu build,
    ListOffsets(latest) is wrong for multi-record batches, fetch high watermarks are right); a
    partition that reports none ends after ``quiet_seconds`` without records. Raises
    ``TopicNotFound`` when the cluster's metadata does not name the topic within 5 s (a topic
    just created may take a moment to appear).
    """
    kwargs = dict(client_kwargs or {})
    kwargs["bootstrap_servers"] = bootstrap_servers
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **kwargs)
    async with started(consumer):
        parts = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if parts:
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        if not tps:
            raise TopicNotFound(topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                records.extend(msgs)
            if batch:
                quiet_since = loop.time()
                continue
            ends = [(consumer.highwater(tp), await consumer.position(tp)) for tp in tps]
            if all(high is not None and pos >= high for high, pos in ends):
                return records
            if loop.time() - quiet_since > quiet_seconds:
                return records
