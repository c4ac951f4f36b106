"""The one Kafka client configuration: what the service, the tools and the benchmark build from."""

from __future__ import annotations

from service.kafka.clients import (
    CONSUMER_SESSION_TIMEOUT_MS,
    JOIN_MARGIN_MS,
    Kafka,
    max_request_size,
)
from service.settings import Settings


def consumer_config(settings: Settings) -> dict[str, object]:
    return Kafka.of(settings).consumer_config()


def producer_config(settings: Settings, *, linger_ms: int = 0) -> dict[str, object]:
    return Kafka.of(settings).producer_config(linger_ms=linger_ms)


def test_the_consumer_commits_by_hand_and_outlives_a_group_join() -> None:
    settings = Settings(kafka_request_timeout_ms=3000, group_id="g", max_payload_bytes=2_000_000)
    config = consumer_config(settings)
    assert config["enable_auto_commit"] is False
    assert config["group_id"] == "g"
    assert config["request_timeout_ms"] >= CONSUMER_SESSION_TIMEOUT_MS + JOIN_MARGIN_MS
    assert config["max_partition_fetch_bytes"] > settings.max_payload_bytes


def test_the_producer_is_durable_and_the_tools_linger() -> None:
    settings = Settings(kafka_compression_type="zstd")
    service, tools = producer_config(settings), producer_config(settings, linger_ms=5)
    assert (service["acks"], service["enable_idempotence"], service["linger_ms"]) == ("all", True, 0)
    assert tools["linger_ms"] == 5
    assert service["compression_type"] == "zstd"
    assert producer_config(Settings())["compression_type"] is None
    assert service["max_request_size"] == max_request_size(settings) > 2 * settings.max_payload_bytes


def test_idempotence_follows_the_setting() -> None:
    assert producer_config(Settings(kafka_enable_idempotence=False))["enable_idempotence"] is False


def test_the_input_is_read_committed_in_both_delivery_modes() -> None:
    for delivery in ("at-least-once", "exactly-once"):
        assert consumer_config(Settings(delivery=delivery))["isolation_level"] == "read_committed"


def test_the_connection_is_built_once_and_each_client_gets_its_own_arguments() -> None:
    kafka = Kafka.of(Settings(kafka_security_protocol="SSL"))
    first, second = kafka.client_kwargs(), kafka.client_kwargs()
    first.pop("bootstrap_servers")
    assert "bootstrap_servers" in second, "a caller's change must not reach the next client"
    assert first["ssl_context"] is second["ssl_context"] is kafka.consumer_config()["ssl_context"]
    assert kafka.access.protocol == "SSL"
