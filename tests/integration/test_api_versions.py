"""The API-version guard: every request marker-ingest's clients send is one the broker still accepts.

Kafka 4.0 removed old versions of several APIs (KIP-896) and later releases will remove more; a
client that sends a removed version is disconnected, which in production is an outage. This test
records, with ``tests/kafka/wiretap.py``, every kind of request and the version aiokafka chose for
it, over a real run of everything that talks to Kafka: the service creating its topics, in both
delivery modes (at-least-once long enough to heartbeat, then stopped; exactly-once over SASL/SCRAM),
``produce`` over SASL/PLAIN and ``redrive``. Then it holds each version against the range the
broker announces in ApiVersions, and fails with the whole table if one falls outside it, or if
aiokafka found no version that fits. CI runs it on every Kafka version it covers
(docs/development.md has the table for each).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import ApiVersionRequest

from tests.conftest import CHOICE
from tests.kafka import wiretap
from tests.kafka.cluster import KafkaCluster, KafkaUnavailable, free_port
from tests.support import Topics, read_all, service_env

# Not marked ``kafka``: that would start the session broker too; the node's fixture skips by itself.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "service" / "samples" / "feed"
USER = "svc"

# What a run of everything must show on the wire; anything else sent is judged as well. A request
# missing here means the tap (or the run) is broken, not that the guard passed.
EXPECTED = {
    "ApiVersions",
    "Metadata",
    "CreateTopics",
    "Produce",
    "InitProducerId",
    "Fetch",
    "ListOffsets",
    "FindCoordinator",
    "JoinGroup",
    "SyncGroup",
    "Heartbeat",
    "LeaveGroup",
    "OffsetFetch",
    "OffsetCommit",
    "AddPartitionsToTxn",
    "AddOffsetsToTxn",
    "TxnOffsetCommit",
    "EndTxn",
    "SaslHandshake",
    "SaslAuthenticate",
}


@dataclass(frozen=True)
class TappedKafka:
    """A node with a PLAINTEXT and a SASL_PLAINTEXT (PLAIN, SCRAM-SHA-512) listener."""

    cluster: KafkaCluster
    sasl_port: int
    password: str

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener."""
        return self.cluster.bootstrap_servers

    def sasl_env(self, mechanism: str) -> dict[str, str]:
        """The ``KAFKA_*`` variables of the SASL listener, as ``svc``."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.sasl_port}",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": USER,
            "KAFKA_SASL_PASSWORD": self.password,
        }


@pytest.fixture(scope="module")
def tapped_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TappedKafka]:
    """A node of the version under test (``MARKER_INGEST_KAFKA_VERSION``) for this module alone."""
    if CHOICE == "tansu":
        pytest.skip("needs Apache Kafka; MARKER_INGEST_TEST_BROKER=tansu")
    password = "pw-" + secrets.token_urlsafe(12)
    sasl_port = free_port()
    extra = {
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        "listener.name.sasl.plain.sasl.jaas.config": (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{password}";'
        ),
        "listener.name.sasl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }
    try:
        cluster = KafkaCluster(
            tmp_path_factory.mktemp("versions"),
            extra=extra,
            listeners={"SASL": ("SASL_PLAINTEXT", sasl_port)},
            format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={password}]"],
        ).start()
    except KafkaUnavailable as exc:
        if CHOICE == "kafka":
            pytest.fail(f"MARKER_INGEST_TEST_BROKER=kafka, but Apache Kafka cannot start: {exc}")
        pytest.skip(f"needs Apache Kafka, which cannot start here: {exc}")
    try:
        yield TappedKafka(cluster, sasl_port, password)
    finally:
        cluster.stop()


def _tapped(wire: Path, label: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.kafka.wiretap", str(wire), label, *args]


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _start(cmd: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


async def _call(cmd: list[str], env: dict[str, str], log: Path) -> int:
    proc = await _start(cmd, env, log)
    try:
        return await asyncio.wait_for(proc.wait(), 180)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def broker_ranges(bootstrap: str) -> dict[int, tuple[int, int]]:
    """The broker's ApiVersions answer: API key → (min, max)."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    conn = await create_conn(host, int(port))
    try:
        response = await conn.send(ApiVersionRequest())
    finally:
        conn.close()
    return {key: (low, high) for key, low, high in response.api_versions}


async def test_every_request_is_a_version_the_broker_accepts(
    tapped_kafka: TappedKafka, tmp_path: Path
) -> None:
    kafka = tapped_kafka
    wire, log = tmp_path / "wire.jsonl", tmp_path / "clients.log"
    topics = Topics.unique("api-versions")
    # One redrive key for the service and the redrive tool: the redriven copies carry a tag it verifies.
    plain = service_env(kafka.bootstrap, topics, idempotence=True, INGEST_REDRIVE_KEY="k" * 32)

    # The service creates its topics (and checks them) on an empty input, then exits: burst mode.
    create = {**plain, "INGEST_CREATE_TOPICS": "true"}
    assert await _call(_tapped(wire, "topic creation", "run", "--burst"), create, log) == 0, log
    assert (
        await _call(_tapped(wire, "produce", "produce", str(FEED)), {**plain, **kafka.sasl_env("PLAIN")}, log)
        == 0
    )

    # At-least-once, until it has sent a heartbeat and its output is there; then SIGTERM (it leaves).
    svc = await _start(_tapped(wire, "at-least-once", "run"), plain, log)
    try:
        deadline = time.monotonic() + 90
        while not (
            any(s.name == "Heartbeat" for s in wiretap.read(wire))
            and await read_all(kafka.bootstrap, topics.dlq)
        ):
            assert svc.returncode is None, f"the service exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no heartbeat or no output within 90 s:\n{_tail(log)}"
            await asyncio.sleep(0.5)
        svc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(svc.wait(), 60) == 0, _tail(log)
    finally:
        if svc.returncode is None:
            svc.kill()
            await svc.wait()
    articles = len(await read_all(kafka.bootstrap, topics.output))
    assert articles > 0

    assert await _call(_tapped(wire, "redrive", "redrive"), plain, log) in (0, 1), _tail(log)

    # Exactly-once, over SASL/SCRAM, in a group of its own: transactions from the input's start.
    exactly_once = {
        **plain,
        **kafka.sasl_env("SCRAM-SHA-512"),
        "INGEST_DELIVERY": "exactly-once",
        "INGEST_GROUP_ID": topics.group + ".eos",
    }
    eos = _tapped(wire, "exactly-once", "run", "--burst")
    assert await _call(eos, exactly_once, log) == 0, _tail(log)
    assert len(await read_all(kafka.bootstrap, topics.output, committed=True)) > articles

    rows = wiretap.judge(wiretap.read(wire), await broker_ranges(kafka.bootstrap))
    report = wiretap.table(rows, f"Kafka {kafka.cluster.version}")
    print(report)
    assert all(row.ok for row in rows), f"requests the broker does not accept:\n{report}"
    missing = EXPECTED - {row.name for row in rows}
    assert not missing, f"never recorded: {sorted(missing)} (is the tap broken?)\n{report}"
