"""The delivery modes (``INGEST_DELIVERY``): which ``Delivery`` the loop completes its batches with."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.delivery.clients import max_request_size, transactional_producer_config
from service.delivery.completion import AtLeastOnce, Completed, Delivery
from service.delivery.failures import access_from
from service.delivery.grace import Grace
from service.delivery.outbox import Outbox
from service.delivery.transactions import ExactlyOnce
from service.ops.metrics import Metrics
from service.settings import Settings


def make_delivery(
    s: Settings,
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    *,
    grace: Grace,
    metrics: Metrics,
    completed: Completed,
) -> Delivery:
    """``at-least-once``: acknowledgements, ordered resend and offset commits over the service's
    producer. ``exactly-once``: a transaction per input partition, each with its own producer."""
    retry, request_size = (s.retry_initial_seconds, s.retry_max_seconds), max_request_size(s)
    if s.delivery == "exactly-once":
        return ExactlyOnce(
            make_producer=lambda partition: AIOKafkaProducer(**transactional_producer_config(s, partition)),
            consumer=consumer,
            group_id=s.group_id,
            grace=grace,
            metrics=metrics,
            retry=retry,
            max_request_size=request_size,
            completed=completed,
            access=access_from(s),
            transactional_id=s.transactional_id,
        )
    return AtLeastOnce(
        commit=consumer.commit,
        outbox=lambda: Outbox(producer, request_size),
        grace=grace,
        metrics=metrics,
        access=access_from(s),
        retry=retry,
        stall_after=s.kafka_request_timeout_ms / 1000,
        completed=completed,
    )
