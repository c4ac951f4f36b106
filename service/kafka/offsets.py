"""A consumer group's committed offsets, read so that a coordinator in flux is never taken for "no
commit".

aiokafka's ``committed()`` (and the position a newly assigned partition starts from) reads the
OffsetFetch response's partitions only: when the broker it asks is no longer the group's
coordinator, the response carries the error at its top level (``NOT_COORDINATOR``, v2 and later)
and no partitions, which aiokafka reads as "nothing committed". A partition taken over then starts
from ``INGEST_AUTO_OFFSET_RESET`` (everything again, or, with ``latest``, a gap) and, in exactly-once
mode, the next transactions commit offsets behind the group's (found by the chaos run). Here the
top-level error is an error: the caller retries, and ``None`` means the group really has no
committed offset for the partition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code
from aiokafka.protocol.commit import OffsetFetchRequest

GROUP_COORDINATOR = 0
"""FindCoordinator's key type of a consumer group."""
NO_OFFSET = -1


def committed_from(response: Any) -> dict[TopicPartition, int | None]:
    """The offsets of an OffsetFetch response. Raises the error of the response (its top level,
    then any partition's but an unknown topic) rather than reading no partition as no commit."""
    top = getattr(response, "error_code", 0)
    if top:
        raise for_code(top)()
    offsets: dict[TopicPartition, int | None] = {}
    for topic, partitions in response.topics:
        for partition, offset, _metadata, error_code in partitions:
            if error_code and for_code(error_code) is not UnknownTopicOrPartitionError:
                raise for_code(error_code)()
            offsets[TopicPartition(topic, partition)] = None if offset == NO_OFFSET else offset
    return offsets


class CommittedOffsets:
    """Reads the group's committed offsets through a client of its own (started on first use)."""

    def __init__(self, client_kwargs: dict[str, Any], group_id: str) -> None:
        self._kwargs, self._group_id = client_kwargs, group_id
        self._client: AIOKafkaClient | None = None

    async def fetch(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The committed offset of each of ``partitions`` (None: the group has none). Raises
        ``KafkaError`` when the coordinator cannot say (moved, loading, unreachable): retry."""
        wanted = list(partitions)
        if not wanted:
            return {}
        if self._client is None:
            client = AIOKafkaClient(**self._kwargs)
            await client.bootstrap()
            self._client = client
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in wanted:
            by_topic[tp.topic].append(tp.partition)
        coordinator = await self._client.coordinator_lookup(GROUP_COORDINATOR, self._group_id)
        response = await self._client.send(
            coordinator, OffsetFetchRequest(self._group_id, list(by_topic.items()))
        )
        found = committed_from(response)
        missing = [tp for tp in wanted if tp not in found]
        if missing:
            raise KafkaError(f"the group coordinator did not answer for {missing}")
        return {tp: found[tp] for tp in wanted}

    async def close(self) -> None:
        """Close the client, if it was started."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
