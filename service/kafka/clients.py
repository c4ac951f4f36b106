"""How to reach the cluster, built once from the settings: the connection arguments every client
shares (its TLS context made once), what the clients connect as (``Access``, for the failure
lines), and the configuration of each client: the service's consumer and producer, the
transactional producers of exactly-once delivery, the operator tools' producer, and the
benchmark's passthrough (which must send as the service does to be its ceiling)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.kafka.failures import Access, access_from
from service.settings import Settings

FETCH_MAX_WAIT_MS = 50
"""How long the broker may hold a fetch that finds nothing new. Apache Kafka answers as soon as
data arrives, so this only costs idle fetches; Tansu holds such a fetch for half of it whatever
arrives meanwhile, and aiokafka's default of 500 ms put ~250 ms on the events that came next."""
CONSUMER_SESSION_TIMEOUT_MS = 10_000
JOIN_MARGIN_MS = 5_000
PRODUCER_BATCH_BYTES = 512 * 1024
TRANSACTION_TIMEOUT_MS = 60_000
"""How long the broker lets a transaction stay open before it aborts it (a stopped instance's)."""
TOOL_LINGER_MS = 5
"""The operator tools push one message at a time and linger, as upstream producers do."""


def _connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection and security arguments shared by aiokafka's consumer, producer and admin (the TLS
    context is made here: ``Kafka.of`` calls this once)."""
    s = settings
    kwargs: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap_servers,
        "client_id": s.kafka_client_id,
        "security_protocol": s.kafka_security_protocol,
        "request_timeout_ms": s.kafka_request_timeout_ms,
    }
    if s.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=s.kafka_ssl_cafile,
            certfile=s.kafka_ssl_certfile,
            keyfile=s.kafka_ssl_keyfile,
            password=s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None,
        )
        context.check_hostname = s.kafka_ssl_check_hostname
        kwargs["ssl_context"] = context
    if s.kafka_security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = s.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = s.kafka_sasl_username
        kwargs["sasl_plain_password"] = (
            s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None
        )
    return kwargs


def max_request_size(settings: Settings) -> int:
    """The largest produce request: room for an event of twice the largest payload, plus a MiB."""
    return 2 * settings.max_payload_bytes + 1024 * 1024


@dataclass(frozen=True)
class Kafka:
    """The cluster as the settings reach it; make one with ``Kafka.of(settings)`` and hand it down."""

    settings: Settings
    access: Access
    """What the clients connect as: the settings a failure's line names (never a secret)."""
    _kwargs: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, settings: Settings) -> Kafka:
        """Build the connection arguments (loading the TLS files once) and the access."""
        return cls(settings, access_from(settings), _connection_kwargs(settings))

    def client_kwargs(self) -> dict[str, Any]:
        """Connection and security arguments shared by aiokafka's consumer, producer and admin
        client: a new dict each time, over the one TLS context."""
        return dict(self._kwargs)

    @property
    def bootstrap_servers(self) -> str:
        """``KAFKA_BOOTSTRAP_SERVERS``."""
        return self.settings.kafka_bootstrap_servers

    @property
    def max_request_size(self) -> int:
        """The largest produce request the service's producers send."""
        return max_request_size(self.settings)

    def consumer_config(self) -> dict[str, Any]:
        """The service's consumer: the group, manual commits, fetches sized for the largest payload,
        and the input read as transactional producers committed it."""
        s = self.settings
        config = self.client_kwargs()
        # The broker holds a JoinGroup request for up to the rebalance timeout (aiokafka: the session
        # timeout), so the consumer's requests get at least that plus 5 s, as the Java client does.
        config["request_timeout_ms"] = max(
            s.kafka_request_timeout_ms, CONSUMER_SESSION_TIMEOUT_MS + JOIN_MARGIN_MS
        )
        config.update(
            group_id=s.group_id,
            session_timeout_ms=CONSUMER_SESSION_TIMEOUT_MS,
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=max(1024 * 1024, s.max_payload_bytes + 64 * 1024),
            fetch_max_bytes=min(50 * 1024 * 1024, s.max_bytes_in_flight),
            # In either delivery mode, an input written in transactions is read as its producer
            # committed it: records of an aborted transaction are never ingested, and records of an
            # open one wait for its outcome.
            isolation_level="read_committed",
        )
        return config

    def probe_config(self) -> dict[str, Any]:
        """A consumer outside the group that reads the input as the service's consumer does (burst
        mode's look at partitions a peer holds)."""
        return {
            **self._kwargs,
            "group_id": None,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        }

    def producer_config(self, *, linger_ms: int = 0) -> dict[str, Any]:
        """A producer with the service's durability (``acks=all``, idempotence as configured).

        The service lingers 0 ms: events pile up in the accumulator while the loop processes anyway,
        and a linger only delays a batch's last events, whose acks the commit waits for. The tools
        linger ``TOOL_LINGER_MS``.
        """
        compression = self.settings.kafka_compression_type
        return {
            **self._kwargs,
            "acks": "all",
            "enable_idempotence": self.settings.kafka_enable_idempotence,
            "linger_ms": linger_ms,
            "max_batch_size": PRODUCER_BATCH_BYTES,
            "max_request_size": self.max_request_size,
            "compression_type": None if compression == "none" else compression,
        }

    def transactional_producer_config(self, partition: int) -> dict[str, Any]:
        """The producer of one input partition's transactions (``INGEST_DELIVERY=exactly-once``)."""
        return {
            **self.producer_config(),
            "enable_idempotence": True,
            "transactional_id": self.settings.transactional_id(partition),
            "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
            # aiokafka's retry backoff (100 ms) is flat and drives every retry loop of a client,
            # reconnects included: each producer of an input partition retries that often during
            # an outage. A shorter one (20 ms, once used to retry CONCURRENT_TRANSACTIONS sooner)
            # made exactly-once mode try ~190 connections a second with four partitions.
        }
