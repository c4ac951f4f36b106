"""Broker faults: the broker frozen mid-stream, and the broker absent at start-up.

Each uses a broker of its own, never the session broker: freezing or starting late the shared one
would disturb every other test. That broker is a local Apache Kafka node where one can run, else
Tansu (which keeps its data in memory, so there a "broker down" fault is a pause or a late start).
The cluster faults (tests/faults/test_cluster.py) kill and restart brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.tools.broker import EmbeddedBroker
from tests.conftest import CHOICE
from tests.faults.harness import Feeder, Fleet, account_and_stop, env_int, wait_accounted, wait_until
from tests.kafka.cluster import KafkaCluster, KafkaNode, KafkaUnavailable, free_port
from tests.support import Topics, expected_outcomes, feed, produce, service_env

pytestmark = [pytest.mark.faults]

REQUEST_TIMEOUT_MS = 3000
# Longer than the request timeout, and than the consumer's floor of 15 s (its JoinGroup must outlive
# the broker's rebalance timeout) plus a heartbeat interval (3 s), so that requests of every kind
# time out during the pause, whatever was in flight when it began.
PAUSE_SECONDS = 20.0
RETRY_EVENTS = {"send.retrying", "send.refused", "commit.retrying", "commit.refused", "fetch.failed"}


class OwnBroker:
    """A broker for one test: a local Apache Kafka node, or a Tansu process."""

    def __init__(self, node: KafkaNode | EmbeddedBroker, *, kafka: bool) -> None:
        self.node = node
        self.kafka = kafka
        self.bootstrap_servers = node.bootstrap_servers
        self.idempotence = kafka

    def pause(self) -> None:
        """SIGSTOP."""
        self.node.pause()

    def resume(self) -> None:
        """SIGCONT."""
        self.node.resume()


@contextlib.contextmanager
def own_broker_on(tmp_path: Path, port: int | None = None) -> Iterator[OwnBroker]:
    """Apache Kafka (one node) unless this run uses Tansu or Kafka cannot start here."""
    if CHOICE != "tansu":
        try:
            cluster = KafkaCluster(tmp_path / "kafka", ports=[port] if port else None).start()
        except KafkaUnavailable:
            if CHOICE == "kafka":
                raise
        else:
            try:
                yield OwnBroker(cluster.nodes[0], kafka=True)
            finally:
                cluster.stop()
            return
    with EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log") as tansu:
        yield OwnBroker(tansu, kafka=False)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    """A broker for this test alone (thawed and stopped at the end)."""
    with own_broker_on(tmp_path) as broker:
        try:
            yield broker
        finally:
            broker.resume()


@pytest.mark.timeout(180)
async def test_broker_frozen_longer_than_the_request_timeout_then_thawed(
    own_broker: OwnBroker, fleet: Fleet
) -> None:
    """SIGSTOP the broker mid-batch for longer than the request timeout, then SIGCONT it.

    The service is working through a backlog, under a live feed, when the broker freezes (after a
    random number of records, so a batch is in flight). It must ride it out without a restart:
    requests time out, and are retried (``send.retrying``, ``commit.retrying``, ...); once the
    broker answers again, every record is accounted for (redeliveries allowed, with identical ids).
    """
    seed = env_int("FAULTS_SEED", random.randrange(2**32))
    print(f"FAULTS_SEED={seed}")
    bootstrap = own_broker.bootstrap_servers
    topics = await Topics.unique("pause").create(bootstrap, partitions=2)
    sent = await produce(bootstrap, topics.input, feed(8000, body_bytes=800, bad_every=8), partitions=2)
    env = service_env(
        bootstrap,
        topics,
        idempotence=own_broker.idempotence,
        KAFKA_REQUEST_TIMEOUT_MS=str(REQUEST_TIMEOUT_MS),
        INGEST_BATCH_MAX_MESSAGES="50",
    )
    svc = fleet.start(env, "service")
    async with Feeder(bootstrap, topics.input, partitions=2, rate=100, start_fn=100_000) as feeder:
        target = random.Random(seed).randint(100, 2000)
        await wait_until(lambda: svc.count("record") >= target, within=90, interval=0.01, detail=svc.tail)
        before = svc.count("record")

        own_broker.pause()
        paused_at = time.monotonic()
        try:
            await wait_until(
                lambda: time.monotonic() - paused_at > PAUSE_SECONDS,
                within=30,
                what="the pause",
            )
            assert svc.alive, f"the service died while the broker was frozen\n{svc.tail()}"
        finally:
            own_broker.resume()
        frozen_for = time.monotonic() - paused_at

        # Work resumes without a restart, with the feeder still producing.
        await wait_until(
            lambda: svc.count("record") > before + 200,
            within=90,
            what="processing after the thaw",
            detail=svc.tail,
        )
        sent_live = await feeder.stop()

    expected = expected_outcomes([*sent, *sent_live], topics.input)
    ledger = await wait_accounted(bootstrap, topics, expected, within=90, services=[svc])
    assert svc.alive, "the service must recover without a restart"
    svc.terminate()
    assert await svc.wait_exit(within=30) == 0, svc.tail()
    ledger.check(expected, exactly_once=False)
    # The fault was felt: timeouts logged by the service (a send or commit retried) or by its Kafka
    # clients (a commit in flight is retried inside aiokafka, which marks the coordinator dead).
    felt = [e for e in svc.lines() if e.get("level") in ("warning", "error")]
    assert felt, f"nothing noticed the frozen broker\n{svc.tail()}"
    retried = sorted({e["event"] for e in felt} & RETRY_EVENTS)
    print(
        f"frozen {frozen_for:.1f}s after {before} records; {len(expected)} records, "
        f"{ledger.duplicates} duplicate events; {len(felt)} warnings, service retries: {retried}"
    )


@pytest.mark.timeout(180)
async def test_broker_absent_at_start_up_arriving_later(tmp_path: Path, fleet: Fleet) -> None:
    """Start the service against a port where nothing listens; start the broker there later.

    The service logs ``broker.unreachable`` with a growing backoff and keeps running; once the broker
    is up and the feed is produced, it processes everything exactly once. (The service may create
    the topics itself, ``INGEST_CREATE_TOPICS=true``, when it reaches the broker before the test
    does: an Apache Kafka node comes up without them, and a missing topic is fatal at start-up.)
    """
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics.unique("late")
    idempotence = CHOICE != "tansu"
    env = service_env(
        bootstrap, topics, idempotence=idempotence, INGEST_RETRY_MAX_SECONDS="2", INGEST_CREATE_TOPICS="true"
    )
    svc = fleet.start(env, "service")

    await svc.wait_for("broker.unreachable", within=60, count=3)
    waits = [e["retry_in"] for e in svc.events("broker.unreachable")]
    assert all(w > 0 for w in waits), waits
    assert max(waits) > min(waits), f"the backoff must grow: {waits}"
    assert svc.alive, svc.tail()

    with own_broker_on(tmp_path, port) as late:
        if late.idempotence != idempotence:
            pytest.skip("Apache Kafka could not start; the service was set up for it")
        await topics.create(late.bootstrap_servers)
        sent = await produce(late.bootstrap_servers, topics.input, feed(800, bad_every=6))
        await account_and_stop(late.bootstrap_servers, topics, sent, svc, exactly_once=True, exit_within=30)
    print(f"unreachable {len(waits)} times, waits {waits}")


@pytest.mark.timeout(120)
async def test_a_request_timeout_shorter_than_a_group_join_still_joins(
    own_broker: OwnBroker, fleet: Fleet
) -> None:
    """KAFKA_REQUEST_TIMEOUT_MS=3000 is accepted by the settings (the floor is 1000), so it must work.

    A fresh group, ten good records, the service started with the 3 s timeout: all processed. A
    group join takes about 5 s on Tansu (Kafka holds a JoinGroup up to the rebalance timeout), so
    a consumer whose JoinGroup shared the 3 s timeout logged "Error sending JoinGroupRequest ...
    RequestTimedOutError -- marking coordinator dead" every 3 s and never got a partition (a bug
    found by this suite; the consumer now uses at least the session timeout + 5 s, as the Java
    client does).
    """
    bootstrap = own_broker.bootstrap_servers
    topics = await Topics.unique("short-timeout").create(bootstrap)
    sent = await produce(bootstrap, topics.input, feed(10))
    env = service_env(bootstrap, topics, idempotence=own_broker.idempotence, KAFKA_REQUEST_TIMEOUT_MS="3000")
    svc = fleet.start(env, "service")
    expected = expected_outcomes(sent, topics.input)
    ledger = await wait_accounted(bootstrap, topics, expected, within=30, services=[svc])
    ledger.check(expected, exactly_once=True)


# Runs the service with an audit hook that counts connection attempts (socket.connect) and writes
# the count to a file every 0.2 s: what a broker's accept queue would see, without a sniffer.
_COUNTING_SERVICE = """
import sys, threading, time
counted, path = [0], sys.argv[1]
def hook(event, _args):
    if event == "socket.connect":
        counted[0] += 1
sys.addaudithook(hook)
def write():
    while True:
        with open(path, "w") as out:
            out.write(str(counted[0]))
        time.sleep(0.2)
threading.Thread(target=write, daemon=True).start()
from service.cli import main
sys.exit(main(["run"]))
"""


@pytest.mark.kafka
@pytest.mark.timeout(180)
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_a_broker_outage_is_not_met_with_a_storm_of_connections(tmp_path: Path, delivery: str) -> None:
    """The broker is killed in the middle of a drain of four partitions; over the next 10 s the
    service (every client of it: the consumer, its producer and, exactly once, a transactional
    producer per partition) tries fewer than 100 connections a second. Each aiokafka client retries
    every ``retry_backoff_ms``, flat: the transactional producers' once shortened backoff (20 ms)
    made exactly-once mode try ~190 a second."""
    import sys

    with KafkaCluster(tmp_path / "kafka") as own:
        bootstrap = own.bootstrap_servers
        topics = await Topics.unique(f"storm-{delivery}").create(bootstrap, partitions=4)
        await produce(bootstrap, topics.input, feed(20000, body_bytes=800), partitions=4)
        counter = tmp_path / "connects"
        env = service_env(bootstrap, topics, idempotence=True, INGEST_DELIVERY=delivery)
        log_path = tmp_path / "service.log"
        log = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _COUNTING_SERVICE, str(counter), env=env, stdout=log, stderr=log
        )
        try:
            await wait_until(lambda: '"event":"record"' in log_path.read_text(), within=60, interval=0.05)
            own.nodes[0].kill()
            await asyncio.sleep(3)
            before, since = int(counter.read_text() or 0), time.monotonic()
            await asyncio.sleep(10)
            rate = (int(counter.read_text() or 0) - before) / (time.monotonic() - since)
        finally:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
            log.close()
    print(f"{delivery}: {rate:.0f} connection attempts/s during the outage")
    assert 0 < rate < 100, f"{rate:.0f} connection attempts a second"
