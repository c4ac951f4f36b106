"""The one Kafka client configuration: what the service, the tools and the benchmark build from."""

from __future__ import annotations

from service.delivery.clients import (
    CONSUMER_SESSION_TIMEOUT_MS,
    JOIN_MARGIN_MS,
    consumer_config,
    max_request_size,
    producer_config,
)
from service.settings import Settings


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
