"""Start-up: reach the broker, check the topics, start the clients.

Unreachable brokers are waited for with backoff (``broker.unreachable``); a refused configuration
or refused credentials end start-up at once (``Misconfigured``), as does a missing topic
(``TopicsMissing``), unless ``INGEST_CREATE_TOPICS`` allows creating it.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from service.delivery.grace import Grace
from service.delivery.retry import Retry
from service.errors import BrokerUnreachable, TopicsMissing
from service.kafka.clients import Kafka
from service.kafka.connection import diagnose
from service.kafka.failures import Stage, classify, fatal_at_startup
from service.kafka.topics import create_with_broker_defaults, topic_problems

log = structlog.get_logger("marker_ingest")

Clients = tuple[AIOKafkaConsumer, AIOKafkaProducer]


async def check_topics(kafka: Kafka) -> None:
    """The input, output and dead-letter topics exist, or are created when ``INGEST_CREATE_TOPICS``
    allows it. Raises ``TopicsMissing`` naming them, ``Misconfigured`` when the service may not
    see or create them; ``KafkaError`` when the broker cannot answer."""
    s = kafka.settings
    names = {s.input_topic: "INGEST_INPUT_TOPIC", s.output_topic: "INGEST_OUTPUT_TOPIC"}
    names[s.dlq_topic] = "INGEST_DLQ_TOPIC"
    problems = await topic_problems(list(names), kafka.client_kwargs())
    for topic, why in problems.items():
        if why == "TopicAuthorizationFailedError":
            denied = classify(
                TopicAuthorizationFailedError(topic), Stage.CHECK_TOPICS, kafka.access, topic=topic
            )
            assert denied is not None
            raise denied.error()
    missing = [t for t, why in problems.items() if why == "UnknownTopicOrPartitionError"]
    if missing and s.create_topics:
        try:
            created = await create_with_broker_defaults(missing, kafka.client_kwargs())
        except KafkaError as exc:
            failure = classify(exc, Stage.CREATE_TOPICS, kafka.access, topic=", ".join(missing))
            if failure is not None:
                raise failure.error() from None
            raise
        log.warning("topics.created", topics=created, detail="INGEST_CREATE_TOPICS=true")
        problems = await topic_problems(list(names), kafka.client_kwargs())
    if problems:
        raise TopicsMissing({names[t]: (t, why) for t, why in problems.items() if t in names})


async def start_clients(
    kafka: Kafka, grace: Grace, retry: Retry, *, give_up_after: float | None = None
) -> Clients | None:
    """Check the topics, then start both clients, waiting with backoff while the broker is
    unreachable (for at most ``give_up_after`` seconds, if given). None when a stop was requested
    first. Raises ``Misconfigured`` (a refusal that retrying cannot cure), ``TopicsMissing`` and
    ``BrokerUnreachable``."""
    seen: tuple[str, int] = ("", 0)
    since = time.monotonic()
    while not grace.requested:
        stage = Stage.CONNECT
        consumer = producer = None
        try:
            done, diagnosed = await grace.unless_stopped(diagnose(kafka))
            if not done:
                return None
            failure, cause = diagnosed
            if failure is None and cause is None:
                stage = Stage.CHECK_TOPICS
                if not (await grace.unless_stopped(check_topics(kafka)))[0]:
                    return None
                consumer = AIOKafkaConsumer(**kafka.consumer_config())
                producer = AIOKafkaProducer(**kafka.producer_config())
                stage = Stage.START_PRODUCER
                started = (await grace.unless_stopped(producer.start()))[0]
                stage = Stage.CONNECT
                started = started and (await grace.unless_stopped(consumer.start()))[0]
                if not started:
                    await stop_quietly(producer, consumer, limit_seconds=grace.stop_budget())
                    return None
        except KafkaError as exc:
            await stop_quietly(producer, consumer)
            failure, cause = classify(exc, stage, kafka.access), repr(exc)
        if failure is not None:
            seen = (failure.line, seen[1] + 1 if seen[0] == failure.line else 1)
            if fatal_at_startup(failure, seen[1]):
                raise failure.error()
        if cause is not None:
            waited = time.monotonic() - since
            if give_up_after is not None and waited >= give_up_after:
                raise BrokerUnreachable(
                    f"no broker answered within {give_up_after:g}s (KAFKA_REQUEST_TIMEOUT_MS); "
                    f"a burst run gives up: {cause}"
                )
            await retry.after("broker.unreachable", error=cause)
            continue
        assert consumer is not None
        assert producer is not None
        return consumer, producer
    return None


async def stop_quietly(
    *clients: AIOKafkaConsumer | AIOKafkaProducer | None,
    limit_seconds: float = 10.0,
) -> None:
    """Stop each client, all of them within ``limit_seconds``."""
    deadline = time.monotonic() + limit_seconds
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.stop(), max(0.1, deadline - time.monotonic()))
        except (KafkaError, TimeoutError) as exc:
            log.warning("client.stop_failed", client=type(client).__name__, error=repr(exc))
        except asyncio.CancelledError as exc:
            # aiokafka's fetcher re-raises the cancellation of its own fetch task when it is stopped
            # during a retry backoff (after a lost connection); only a cancellation of ours goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            log.warning("client.stop_failed", client=type(client).__name__, error=repr(exc))
