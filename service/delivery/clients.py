"""One place for the Kafka clients' configuration, built from the settings: the service's consumer
and producer, the operator tools' producer, and the benchmark's passthrough (which must send as the
service does to be its ceiling)."""

from __future__ import annotations

from typing import Any

from service.settings import Settings

FETCH_MAX_WAIT_MS = 50
"""How long the broker may hold a fetch that finds nothing new. Apache Kafka answers as soon as
data arrives, so this only costs idle fetches; Tansu holds such a fetch for half of it whatever
arrives meanwhile, and aiokafka's default of 500 ms put ~250 ms on the events that came next."""
CONSUMER_SESSION_TIMEOUT_MS = 10_000
JOIN_MARGIN_MS = 5_000
PRODUCER_BATCH_BYTES = 512 * 1024
TRANSACTION_RETRY_BACKOFF_MS = 20
"""A transaction begun right after the last one's commit meets CONCURRENT_TRANSACTIONS while the
broker writes the commit markers; aiokafka waits this long before asking again (default 100 ms)."""
TRANSACTION_TIMEOUT_MS = 60_000
"""How long the broker lets a transaction stay open before it aborts it (a stopped instance's)."""


def max_request_size(settings: Settings) -> int:
    """The largest produce request: room for an event of twice the largest payload, plus a MiB."""
    return 2 * settings.max_payload_bytes + 1024 * 1024


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The service's consumer: the group, manual commits, fetches sized for the largest payload."""
    config = settings.kafka_client_kwargs()
    # The broker holds a JoinGroup request for up to the rebalance timeout (aiokafka: the session
    # timeout), so the consumer's requests get at least that plus 5 s, as the Java client does.
    config["request_timeout_ms"] = max(
        settings.kafka_request_timeout_ms, CONSUMER_SESSION_TIMEOUT_MS + JOIN_MARGIN_MS
    )
    config.update(
        group_id=settings.group_id,
        session_timeout_ms=CONSUMER_SESSION_TIMEOUT_MS,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=max(1024 * 1024, settings.max_payload_bytes + 64 * 1024),
        fetch_max_bytes=min(50 * 1024 * 1024, settings.max_bytes_in_flight),
        # In either delivery mode, an input written in transactions is read as its producer
        # committed it: records of an aborted transaction are never ingested, and records of an
        # open one wait for its outcome.
        isolation_level="read_committed",
    )
    return config


def producer_config(settings: Settings, *, linger_ms: int = 0) -> dict[str, Any]:
    """A producer with the service's durability (``acks=all``, idempotence as configured).

    The service lingers 0 ms: events pile up in the accumulator while the loop processes anyway, and
    a linger only delays a batch's last events, whose acks the commit waits for. The tools push one
    message at a time and linger 5 ms, as upstream producers do.
    """
    compression = settings.kafka_compression_type
    return {
        **settings.kafka_client_kwargs(),
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        "linger_ms": linger_ms,
        "max_batch_size": PRODUCER_BATCH_BYTES,
        "max_request_size": max_request_size(settings),
        "compression_type": None if compression == "none" else compression,
    }


def transactional_producer_config(settings: Settings, partition: int) -> dict[str, Any]:
    """The producer of one input partition's transactions (``INGEST_DELIVERY=exactly-once``)."""
    return {
        **producer_config(settings),
        "enable_idempotence": True,
        "transactional_id": settings.transactional_id(partition),
        "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
        "retry_backoff_ms": TRANSACTION_RETRY_BACKOFF_MS,
    }
