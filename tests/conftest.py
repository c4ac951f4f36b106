"""Session-wide fixtures: a real Kafka-protocol broker for the integration suites.

The broker is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka module where a
Docker engine answers; otherwise the embedded Tansu broker on a free port.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.broker import EmbeddedBroker


def _docker_answers() -> bool:
    """True when a Docker engine answers a ping (the client alone is not enough)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    import docker

    client = None
    try:
        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False
    finally:
        if client is not None:
            client.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """The broker every integration test talks to."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield BrokerHandle(os.environ["KAFKA_BOOTSTRAP_SERVERS"], kind="external")
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as kafka:
            yield BrokerHandle(kafka.get_bootstrap_server(), kind="testcontainers")
        return
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as tansu:
        yield BrokerHandle(tansu.bootstrap_servers, kind="tansu", embedded=tansu)


class BrokerHandle:
    """Where the broker is, and (for the embedded one) the process, for fault injection."""

    def __init__(self, bootstrap_servers: str, kind: str, embedded: EmbeddedBroker | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.kind = kind
        self.embedded = embedded

    @property
    def tansu(self) -> bool:
        """True for the embedded Tansu broker."""
        return self.kind == "tansu"

    @property
    def idempotence(self) -> bool:
        """Whether the service may use an idempotent producer here (Tansu rejects InitProducerId v0)."""
        if self.kind == "external":
            return os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true").lower() in ("1", "true", "yes")
        return not self.tansu


@pytest.fixture(scope="session")
def seed_record() -> bytes:
    """The real record from upstream, kept as the first fixture."""
    return (Path(__file__).parent / "fixtures" / "seed_2433.txt").read_bytes()
