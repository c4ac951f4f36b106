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

And the coordinator asked is the one a majority of the brokers name (``agreed_coordinator``), not
whichever one broker says. A broker cut off from the others and the controller, but still reachable
by clients, goes on naming itself the group's coordinator after the cluster has moved the group
away; its offsets stop where the cut began. A partition taken over from those offsets is processed
again from there: in exactly-once mode, its events committed twice (found by the chaos run's
``broker-partition`` fault, seed 3002).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.coordination import FindCoordinatorRequest

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


def agreed_coordinator(answers: Mapping[int, int], brokers: int) -> int | None:
    """The coordinator that a strict majority of the ``brokers`` known name (``answers``: each
    answering broker's node id to the coordinator it named), or None while no majority agrees."""
    votes = Counter(answers.values())
    for node, count in votes.most_common(1):
        if count * 2 > brokers:
            return node
    return None


class CoordinatorInDispute(KafkaError):  # type: ignore[misc]
    """No majority of the brokers agrees on the group's coordinator (retriable: a broker's view is
    catching up, or one is cut off)."""

    retriable = True


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
        coordinator = await self._coordinator(self._client)
        response = await self._client.send(
            coordinator, OffsetFetchRequest(self._group_id, list(by_topic.items()))
        )
        found = committed_from(response)
        missing = [tp for tp in wanted if tp not in found]
        if missing:
            raise KafkaError(f"the group coordinator did not answer for {missing}")
        return {tp: found[tp] for tp in wanted}

    async def _coordinator(self, client: AIOKafkaClient) -> int:
        """The group's coordinator as a majority of the brokers name it: every known broker is
        asked at once, and the first majority wins (a broker that does not answer only counts
        against a majority). Raises ``CoordinatorInDispute`` when none forms."""
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
        if len(nodes) <= 1:
            coordinator: int = await client.coordinator_lookup(GROUP_COORDINATOR, self._group_id)
            return coordinator
        request = FindCoordinatorRequest(self._group_id, GROUP_COORDINATOR)
        asking = {asyncio.ensure_future(client.send(node, request)): node for node in nodes}
        answers: dict[int, int] = {}
        pending = set(asking)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.cancelled() or task.exception() is not None:
                        continue
                    response = task.result()
                    if not response.error_code:
                        answers[asking[task]] = response.coordinator_id
                agreed = agreed_coordinator(answers, len(nodes))
                if agreed is not None:
                    return agreed
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        raise CoordinatorInDispute(
            f"no majority of the {len(nodes)} brokers agree on the coordinator: {answers}"
        )

    async def close(self) -> None:
        """Close the client, if it was started."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
