"""Topic chores shared by the service, the demo, the operator tools and the tests: check that topics
exist (without creating them), create, read to the end; partitions named for people."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code
from aiokafka.protocol.metadata import MetadataRequest

TOPIC_ALREADY_EXISTS = 36


def partition_names(partitions: Iterable[TopicPartition]) -> list[str]:
    """``topic:partition`` of each, sorted, for the logs and ``/readyz``."""
    return sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)


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
    bootstrap_servers: str,
    topics: dict[str, int],
    *,
    client_kwargs: dict[str, object] | None = None,
    replication_factor: int = 1,
    configs: dict[str, str] | None = None,
) -> None:
    """Create each topic with its partition count (and the replication factor and topic configs
    given); topics that exist already are left alone."""
    kwargs = dict(client_kwargs or {})
    kwargs["bootstrap_servers"] = bootstrap_servers
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(name, num_partitions=n, replication_factor=replication_factor, topic_configs=configs)
                for name, n in topics.items()
            ]
        )
        for name, code, message in (t[:3] for t in response.topic_errors):
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"cannot create topic {name!r}: error {code} {message or ''}".strip())
    finally:
        await admin.close()


async def topic_problems(names: list[str], client_kwargs: dict[str, Any]) -> dict[str, str]:
    """Each of ``names`` that the cluster does not have, with the broker's reason.

    The metadata request says ``allow_auto_topic_creation=false``: on a broker that auto-creates
    topics (Kafka's default), asking about a misspelled topic must not create it. Raises
    ``KafkaError`` when the broker cannot be reached.
    """
    client = AIOKafkaClient(**client_kwargs)
    try:
        await client.bootstrap()
        node = client.get_random_node()
        response = await client.send(node, MetadataRequest(list(names), allow_auto_topic_creation=False))
    finally:
        await client.close()
    problems: dict[str, str] = {}
    for topic in response.to_object()["topics"]:
        code = topic["error_code"]
        if code != 0:
            problems[topic["topic"]] = for_code(code).__name__
    return problems


async def create_with_broker_defaults(names: list[str], client_kwargs: dict[str, Any]) -> dict[str, int]:
    """Create ``names`` with the broker's ``num.partitions`` and ``default.replication.factor``
    (and so its ``min.insync.replicas``); returns the partitions each got. Raises ``KafkaError``."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        brokers = (await admin.describe_cluster())["brokers"]
        node = str(brokers[0]["node_id"])
        wanted = {"num.partitions": None, "default.replication.factor": None}
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, node, wanted)])
        values = {c[0]: c[1] for c in response.resources[0][4]}
        partitions = int(values.get("num.partitions") or 1)
        replicas = int(values.get("default.replication.factor") or 1)
        created = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replicas) for name in names]
        )
        for name, code, message in (t[:3] for t in created.topic_errors):
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise for_code(code)(f"cannot create topic {name!r}: {message or ''}".strip())
    finally:
        await admin.close()
    return dict.fromkeys(names, partitions)


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    client_kwargs: dict[str, Any] | None = None,
    quiet_seconds: float = 6.0,
) -> list[Any]:
    """Every record of ``topic`` from the beginning to its end, without joining a group.

    The end is each partition's high watermark as fetch responses report it (its last stable offset
    when ``client_kwargs`` read committed transactions only; on the Tansu build,
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
        committed_only = kwargs.get("isolation_level") == "read_committed"
        end_of = consumer.last_stable_offset if committed_only else consumer.highwater
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
            ends = [(end_of(tp), await consumer.position(tp)) for tp in tps]
            if all(high is not None and pos >= high for high, pos in ends):
                return records
            if loop.time() - quiet_since > quiet_seconds:
                return records
