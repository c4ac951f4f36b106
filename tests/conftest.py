"""Session-wide fixtures: a real Kafka-protocol broker for the integration and fault suites.

``broker`` is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka module where a
Docker engine answers (unless ``MARKER_INGEST_KAFKA_VERSION`` asks for a version: the module runs
Confluent's images); a local Apache Kafka node (``tests/kafka``, that version) where ``java`` and
the jars (or Maven) are here; otherwise the embedded Tansu broker, and the tests marked ``kafka``
are skipped with the reason. ``cluster`` is a local three-broker Apache Kafka for the faults only a
cluster can host. ``MARKER_INGEST_TEST_BROKER`` forces a choice: ``kafka`` (CI: fail, never skip,
when Apache Kafka cannot start) or ``tansu`` (the quick start's broker, for the smoke subset).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.tools.broker import EmbeddedBroker
from tests.kafka.cluster import VERSION_ENV, KafkaCluster, KafkaUnavailable

# The monitoring and tracing backends' fixtures (zipkin, jaeger, otlp_receiver, start_prometheus).
pytest_plugins = ["tests.backends.fixtures"]

CHOICE = os.environ.get("MARKER_INGEST_TEST_BROKER", "auto")
if CHOICE not in ("auto", "kafka", "tansu"):
    raise pytest.UsageError(f"MARKER_INGEST_TEST_BROKER must be auto, kafka or tansu, not {CHOICE!r}")


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


class BrokerHandle:
    """Where the broker is, what it is, and (for local ones) its processes, for fault injection."""

    def __init__(
        self,
        bootstrap_servers: str,
        kind: str,
        *,
        cluster: KafkaCluster | None = None,
        why_not_kafka: str | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.kind = kind
        self.cluster = cluster
        self.why_not_kafka = why_not_kafka

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

    @property
    def replication_factor(self) -> int:
        """The replication factor for the project's topics on this broker."""
        return 1 if self.cluster is None else min(3, self.cluster.brokers)

    @property
    def topic_configs(self) -> dict[str, str]:
        """Topic configs for the project's topics (``min.insync.replicas=2`` on a cluster)."""
        return {"min.insync.replicas": "2"} if self.replication_factor >= 3 else {}

    @property
    def topic_kwargs(self) -> dict[str, object]:
        """What ``Topics.create`` takes for this broker: replication factor and topic configs."""
        return {"replication_factor": self.replication_factor, "configs": self.topic_configs}

    def __repr__(self) -> str:
        return f"BrokerHandle({self.kind}, {self.bootstrap_servers})"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """The broker every integration test talks to."""
    if CHOICE != "tansu" and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield BrokerHandle(os.environ["KAFKA_BOOTSTRAP_SERVERS"], kind="external")
        return
    if CHOICE != "tansu" and not os.environ.get(VERSION_ENV) and _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        # Confluent Platform 8.1 is Apache Kafka 4.1, the version tests/kafka/pom.xml pins.
        with KafkaContainer("confluentinc/cp-kafka:8.1.0").with_kraft() as kafka:
            yield BrokerHandle(kafka.get_bootstrap_server(), kind="testcontainers")
        return
    why_not = "MARKER_INGEST_TEST_BROKER=tansu"
    if CHOICE != "tansu":
        try:
            cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"), brokers=1).start()
        except KafkaUnavailable as exc:
            if CHOICE == "kafka":
                pytest.fail(f"MARKER_INGEST_TEST_BROKER=kafka, but Apache Kafka cannot start: {exc}")
            why_not = str(exc)
        else:
            try:
                yield BrokerHandle(cluster.bootstrap_servers, kind="kafka", cluster=cluster)
            finally:
                cluster.stop()
            return
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as tansu:
        yield BrokerHandle(tansu.bootstrap_servers, kind="tansu", why_not_kafka=why_not)


@pytest.fixture(autouse=True)
def _needs_kafka(request: pytest.FixtureRequest) -> None:
    """Skip a test marked ``kafka`` when the session broker is Tansu, and say why."""
    if request.node.get_closest_marker("kafka") is None:
        return
    handle: BrokerHandle = request.getfixturevalue("broker")
    if handle.tansu:
        pytest.skip(f"needs Apache Kafka; this run uses Tansu ({handle.why_not_kafka})")


@pytest.fixture(scope="session")
def _cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    if CHOICE == "tansu":
        pytest.skip("needs a local Apache Kafka cluster; MARKER_INGEST_TEST_BROKER=tansu")
    try:
        cluster = KafkaCluster(tmp_path_factory.mktemp("cluster"), brokers=3).start()
    except KafkaUnavailable as exc:
        if CHOICE == "kafka":
            pytest.fail(f"MARKER_INGEST_TEST_BROKER=kafka, but the Kafka cluster cannot start: {exc}")
        pytest.skip(f"needs a local three-broker Apache Kafka, which cannot start here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(_cluster_session: KafkaCluster) -> Iterator[BrokerHandle]:
    """A local three-broker Apache Kafka (shared by the session); every broker runs again afterwards."""
    nodes = _cluster_session.nodes
    for node in nodes:
        node.resume()
        if not node.running:
            node.start()
    for node in nodes:
        node.wait_listening()
    _cluster_session.wait_ready()
    yield BrokerHandle(_cluster_session.bootstrap_servers, kind="cluster", cluster=_cluster_session)
    for node in nodes:
        node.resume()
        if not node.running:
            node.start()


@pytest.fixture(params=["single", "cluster"])
def fault_broker(request: pytest.FixtureRequest) -> BrokerHandle:
    """The session broker, then the three-broker cluster: a fault test runs on both."""
    if request.param == "cluster":
        handle: BrokerHandle = request.getfixturevalue("cluster")
        return handle
    single: BrokerHandle = request.getfixturevalue("broker")
    return single


@pytest.fixture(scope="session")
def seed_record() -> bytes:
    """The real record from upstream, kept as the first fixture."""
    return (Path(__file__).parent / "fixtures" / "seed_2433.txt").read_bytes()
