"""The delivery modes (``INGEST_DELIVERY``): how processed batches become delivered.

``base.Delivery`` is the seam the pipeline knows; ``at_least_once`` completes batches by
acknowledgements, ordered resend and offset commits; ``exactly_once`` commits each batch in one Kafka
transaction per input partition. ``make_delivery`` picks one.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.delivery.modes.at_least_once import AtLeastOnce
from service.delivery.modes.base import Delivery, Offsets
from service.delivery.modes.exactly_once import ExactlyOnce
from service.delivery.outbox import Outbox
from service.delivery.retry import Retries
from service.kafka.clients import Kafka
from service.ops.metrics import Metrics


def make_delivery(
    kafka: Kafka,
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    *,
    offsets: Offsets,
    metrics: Metrics,
    retries: Retries,
) -> Delivery:
    """``at-least-once``: acknowledgements, ordered resend and offset commits over the service's
    producer. ``exactly-once``: a transaction per input partition, each with its own producer."""
    s, request_size = kafka.settings, kafka.max_request_size
    if s.delivery == "exactly-once":
        return ExactlyOnce(
            make_producer=lambda partition: AIOKafkaProducer(
                **kafka.transactional_producer_config(partition)
            ),
            consumer=consumer,
            offsets=offsets,
            group_id=s.group_id,
            metrics=metrics,
            retries=retries,
            max_request_size=request_size,
            access=kafka.access,
            transactional_id=s.transactional_id,
        )
    return AtLeastOnce(
        commit=consumer.commit,
        outbox=lambda: Outbox(producer, request_size),
        consumer=consumer,
        offsets=offsets,
        metrics=metrics,
        retries=retries,
        access=kafka.access,
        stall_after=s.kafka_request_timeout_ms / 1000,
    )


__all__ = ["AtLeastOnce", "Delivery", "ExactlyOnce", "make_delivery"]
