"""The secured Kafka node of the security suite (``tests/kafka/security.py``), once per session.

Skipped with the reason where Apache Kafka cannot run, unless ``MARKER_INGEST_TEST_BROKER=kafka``
(CI), which fails instead. ``modes`` names every client security mode with the environment that
selects it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.kafka.cluster import KafkaUnavailable
from tests.kafka.security import CLIENT_CN, PREFIX, SERVICE_USER, SecuredKafka

CHOICE = os.environ.get("MARKER_INGEST_TEST_BROKER", "auto")

MODES = ["sasl_plain", "sasl_scram512", "ssl", "mtls", "sasl_ssl"]


def mode_env(kafka: SecuredKafka, mode: str, **override: str) -> dict[str, str]:
    """The ``KAFKA_*`` variables of one security mode, as the service user."""
    files = kafka.files
    sasl = {"KAFKA_SASL_USERNAME": SERVICE_USER, "KAFKA_SASL_PASSWORD": kafka.password}
    env = {
        "sasl_plain": {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap("SASL"),
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            **sasl,
        },
        "sasl_scram512": {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap("SASL"),
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            **sasl,
        },
        "ssl": {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap("TLS"),
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(files.ca),
        },
        "mtls": {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap("MTLS"),
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(files.ca),
            "KAFKA_SSL_CERTFILE": str(files.client_cert),
            "KAFKA_SSL_KEYFILE": str(files.client_key),
        },
        "sasl_ssl": {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap("SASLTLS"),
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SSL_CAFILE": str(files.ca),
            **sasl,
        },
    }[mode]
    env.update(override)
    return env


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """The secured node; the service user and the mutual-TLS client may use ``sec*`` topics and groups."""
    if CHOICE == "tansu":
        pytest.skip("needs Apache Kafka; MARKER_INGEST_TEST_BROKER=tansu")
    try:
        kafka = SecuredKafka(tmp_path_factory.mktemp("secured")).start()
    except KafkaUnavailable as exc:
        if CHOICE == "kafka":
            pytest.fail(f"MARKER_INGEST_TEST_BROKER=kafka, but the secured Kafka cannot start: {exc}")
        pytest.skip(f"needs Apache Kafka, which cannot start here: {exc}")

    async def grant() -> None:
        for principal in (f"User:{SERVICE_USER}", f"User:{CLIENT_CN}"):
            await kafka.grant(principal, "topic", PREFIX, ["all"], pattern="prefixed")
            await kafka.grant(principal, "group", PREFIX, ["all"], pattern="prefixed")

    try:
        asyncio.run(grant())
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(autouse=True)
def _needs_kafka() -> None:
    """Overrides the suite's: these tests need ``secured`` (which skips by itself), not ``broker``."""
