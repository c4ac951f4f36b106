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

from service.delivery.clients import consumer_config, producer_config
from service.delivery.connection import diagnose
from service.delivery.failures import Failure, Stage, access_from, classify, fatal_at_startup
from service.delivery.grace import Backoff, Grace
from service.delivery.topics import create_with_broker_defaults, topic_problems
from service.ops.metrics import Metrics
from service.settings import Settings

log = structlog.get_logger("marker_ingest")

Clients = tuple[AIOKafkaConsumer, AIOKafkaProducer]


class TopicsMissing(Exception):
    """Raised at start-up when a topic the service needs does not exist (or its name is invalid)."""

    def __init__(self, problems: dict[str, tuple[str, str]]) -> None:
        super().__init__(", ".join(f"{setting}={topic}: {why}" for setting, (topic, why) in problems.items()))
        self.problems = problems
        """Setting name → (topic, the broker's error)."""


class Misconfigured(Exception):
    """Raised at start-up when the cluster refuses the configuration or the credentials."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.line)
        self.failure = failure


async def check_topics(s: Settings) -> None:
    """The input, output and dead-letter topics exist, or are created when ``INGEST_CREATE_TOPICS``
    allows it. Raises ``TopicsMissing`` naming them; ``KafkaError`` when the broker cannot answer."""
    names = {s.input_topic: "INGEST_INPUT_TOPIC", s.output_topic: "INGEST_OUTPUT_TOPIC"}
    names[s.dlq_topic] = "INGEST_DLQ_TOPIC"
    kwargs = s.kafka_client_kwargs()
    access = access_from(s)
    problems = await topic_problems(list(names), kwargs)
    for topic, why in problems.items():
        if why == "TopicAuthorizationFailedError":
            denied = classify(TopicAuthorizationFailedError(topic), Stage.CHECK_TOPICS, access, topic=topic)
            assert denied is not None
            raise Misconfigured(denied)
    missing = [t for t, why in problems.items() if why == "UnknownTopicOrPartitionError"]
    if missing and s.create_topics:
        try:
            created = await create_with_broker_defaults(missing, kwargs)
        except KafkaError as exc:
            failure = classify(exc, Stage.CREATE_TOPICS, access, topic=", ".join(missing))
            if failure is not None:
                raise Misconfigured(failure) from None
            raise
        log.warning("topics.created", topics=created, detail="INGEST_CREATE_TOPICS=true")
        problems = await topic_problems(list(names), kwargs)
    if problems:
        raise TopicsMissing({names[t]: (t, why) for t, why in problems.items() if t in names})


async def start_clients(s: Settings, grace: Grace, metrics: Metrics) -> Clients | None:
    """Check the topics, then start both clients, waiting with backoff while the broker is
    unreachable. None when a stop was requested first."""
    backoff = Backoff(s.retry_initial_seconds, s.retry_max_seconds)
    access = access_from(s)
    seen: tuple[str, int] = ("", 0)
    while not grace.requested:
        stage = Stage.CONNECT
        consumer = producer = None
        try:
            done, diagnosed = await grace.unless_stopped(diagnose(s))
            if not done:
                return None
            failure, cause = diagnosed
            if failure is None and cause is None:
                stage = Stage.CHECK_TOPICS
                if not (await grace.unless_stopped(check_topics(s)))[0]:
                    return None
                consumer = AIOKafkaConsumer(**consumer_config(s))
                producer = AIOKafkaProducer(**producer_config(s))
                stage = Stage.START_PRODUCER
                started = (await grace.unless_stopped(producer.start()))[0]
                stage = Stage.CONNECT
                started = started and (await grace.unless_stopped(consumer.start()))[0]
                if not started:
                    await stop_quietly(producer, consumer, limit_seconds=grace.stop_budget())
                    return None
        except KafkaError as exc:
            await stop_quietly(producer, consumer)
            failure, cause = classify(exc, stage, access), repr(exc)
        if failure is not None:
            seen = (failure.line, seen[1] + 1 if seen[0] == failure.line else 1)
            if fatal_at_startup(failure, seen[1]):
                raise Misconfigured(failure)
        if cause is not None:
            delay = backoff.next_delay()
            metrics.retries["connect"].inc()
            log.warning("broker.unreachable", error=cause, retry_in=round(delay, 2))
            await grace.sleep(delay)
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
