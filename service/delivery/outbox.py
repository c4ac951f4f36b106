"""The outbox: outcomes on their way to the broker, in record batches per output partition.

A ``Send`` is one outcome (an article event or a dead letter) with its input coordinates; the
``Outbox`` appends each to the open batch of its output partition and hands full batches to the
producer, so the events of one output partition leave in the order they were added. The producer
is anything with aiokafka's batch API (``create_batch``, ``send_batch``, ``partitions_for``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from service.delivery.routing import Destination, Headers


@dataclass(slots=True)
class Send:
    """One outcome on its way to the broker: its input coordinates and what goes out (``event``)."""

    tp: TopicPartition
    offset: int
    topic: str
    event: Destination
    headers: Headers
    future: asyncio.Future[Any] | None = None
    error: BaseException | None = None


class Outbox:
    """Outcomes into record batches, one open batch per output partition (aiokafka's batch API).

    The output partition is the one ``producer.send(key=...)`` picks: the default partitioner over
    the topic's partitions. Each batch fills up to the producer's ``max_batch_size`` (a batch's first
    record always fits); a full batch is handed to the producer (``send_batch``) and a new one
    started, so the records of one output partition leave in the order they were added. Every
    outcome of a batch shares the batch's future. An event larger than the producer's
    ``max_request_size``, or a topic whose partitions cannot be looked up, fails its outcomes at
    once (``send.error``), as ``producer.send`` would raise.
    """

    def __init__(self, producer: AIOKafkaProducer, max_request_size: int) -> None:
        self._producer = producer
        self._max_request_size = max_request_size
        self._partitions: dict[str, list[int] | KafkaError] = {}
        self._open: dict[tuple[str, int], tuple[Any, list[Send]]] = {}

    async def _partitions_of(self, topic: str) -> list[int] | KafkaError:
        known = self._partitions.get(topic)
        if known is None:
            try:
                known = sorted(await self._producer.partitions_for(topic))
            except KafkaError as exc:
                known = exc
            self._partitions[topic] = known
        return known

    async def add(self, send: Send) -> None:
        """Append ``send``'s event to its partition's open batch; ship the batch first if it is full."""
        send.future = send.error = None
        topic, event = send.topic, send.event
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = await self._partitions_of(topic)
        if isinstance(partitions, KafkaError):
            send.error = partitions
            return
        key, value, headers = event.key, event.value, send.headers
        size = _estimate_size(key, value, headers)
        if size > self._max_request_size:
            send.error = MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the maximum request "
                "size you have configured with the max_request_size configuration"
            )
            return
        if len(partitions) == 1:
            partition = partitions[0]  # what the default partitioner answers for a single partition
        else:
            available = self._producer.client.cluster.available_partitions_for_topic(topic)
            partition = _PARTITIONER(key, partitions, list(available))
        slot = self._open.get((topic, partition))
        if slot is None:
            slot = self._open[topic, partition] = (self._producer.create_batch(), [])
        if slot[0].append(key=key, value=value, timestamp=None, headers=headers) is None:
            await self._ship(topic, partition)
            slot = self._open[topic, partition] = (self._producer.create_batch(), [])
            slot[0].append(key=key, value=value, timestamp=None, headers=headers)  # the first always fits
        slot[1].append(send)

    async def flush(self) -> None:
        """Hand every open batch to the producer."""
        for topic, partition in list(self._open):
            await self._ship(topic, partition)

    async def _ship(self, topic: str, partition: int) -> None:
        builder, sends = self._open.pop((topic, partition))
        try:
            future = await self._producer.send_batch(builder, topic, partition=partition)
        except KafkaError as exc:
            for send in sends:
                send.error = exc
            return
        for send in sends:
            send.future = future


_PARTITIONER = DefaultPartitioner()
_estimate_size = DefaultRecordBatchBuilder.estimate_size_in_bytes
