"""The lag per assigned partition, for ``/metrics``."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError

from service.ops.metrics import Metrics


async def update_lag(
    consumer: AIOKafkaConsumer | None, metrics: Metrics, offsets: dict[TopicPartition, int]
) -> None:
    """Lag per assigned partition: the high watermark from fetch responses minus the position
    (``offsets``, where the caller knows it better than the consumer)."""
    if consumer is None:
        return
    known = [(tp, high) for tp in consumer.assignment() if (high := consumer.highwater(tp)) is not None]
    lags: list[tuple[TopicPartition, int]] = []
    for tp, high in known:
        position = offsets.get(tp)
        if position is None:
            try:
                position = await consumer.position(tp)  # known once fetched: returns at once
            except IllegalStateError:
                continue
        lags.append((tp, high - position))
    assignment = consumer.assignment()  # a rebalance may have run meanwhile
    for tp, lag in lags:
        if tp in assignment:
            metrics.set_lag(tp.topic, tp.partition, lag)
