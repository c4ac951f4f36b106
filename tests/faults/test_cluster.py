"""Faults only a replicated cluster can host: a leader killed, the in-sync quorum lost, a rolling restart.

All run on the local three-broker Apache Kafka (``cluster`` fixture: a controller and three brokers,
replication factor 3, ``min.insync.replicas=2``), with the service's production defaults (idempotent
producer, ``acks=all``), under a live feed. Each ends with the accounting invariant: every record
exactly one article or dead letter with the code the core gives it (so no transient fault became a
dead letter), duplicates only with identical ids.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.tools.broker import free_port
from tests.conftest import BrokerHandle
from tests.faults.harness import Feeder, Fleet, ServiceProcess, account_and_stop, committed, wait_until
from tests.kafka.cluster import KafkaCluster
from tests.support import Topics, feed, get_text, produce, service_env

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.cluster]

PARTITIONS = 3


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition → the node id of its leader (-1 while it has none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for p in described["partitions"]}


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get_text(port, "/readyz")
    return status, orjson.loads(body) if body else {}


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """``/readyz``'s status and body (0 when the endpoint does not answer)."""
    return await asyncio.to_thread(_readyz, port)


async def _setup(
    cluster: BrokerHandle, fleet: Fleet, label: str, **extra: str
) -> tuple[Topics, ServiceProcess]:
    bootstrap = cluster.bootstrap_servers
    topics = await Topics.unique(label).create(bootstrap, PARTITIONS, **cluster.topic_kwargs)
    env = service_env(
        bootstrap,
        topics,
        idempotence=True,
        INGEST_BATCH_MAX_MESSAGES="100",
        KAFKA_REQUEST_TIMEOUT_MS="10000",
        **extra,
    )
    return topics, fleet.start(env, label)


def _nodes(cluster: BrokerHandle) -> KafkaCluster:
    assert cluster.cluster is not None
    return cluster.cluster


@pytest.mark.timeout(300)
async def test_kill9_of_the_leader_of_input_and_output_partitions_mid_stream(
    cluster: BrokerHandle, fleet: Fleet
) -> None:
    """kill -9 of the broker that leads the output partition (and, three partitions over three
    brokers, one input partition): the service rides through the leader change without a restart
    (aiokafka has a history of producers that never recover from NotLeaderForPartition)."""
    bootstrap = cluster.bootstrap_servers
    topics, svc = await _setup(cluster, fleet, "leader-kill9")
    sent = await produce(bootstrap, topics.input, feed(3000, bad_every=7), partitions=PARTITIONS)
    victim_id = (await leaders(bootstrap, topics.output))[0]
    assert victim_id in (await leaders(bootstrap, topics.input)).values()
    victim = _nodes(cluster).broker(victim_id)
    async with Feeder(bootstrap, topics.input, partitions=PARTITIONS, rate=100, start_fn=100_000) as feeder:
        await wait_until(lambda: svc.count("record") >= 800, within=90, detail=svc.tail)
        victim.kill()
        killed_at, before = time.monotonic(), svc.count("record")
        await wait_until(
            lambda: svc.count("record") > before + 1500,
            within=120,
            what="processing after the leader died",
            detail=svc.tail,
        )
        resumed_after = time.monotonic() - killed_at
        assert svc.alive, svc.tail()
        new_leader = (await leaders(bootstrap, topics.output))[0]
        assert new_leader not in (victim_id, -1), new_leader
        sent_live = await feeder.stop()
    assert svc.alive, "the service must ride through without a restart"
    ledger = await account_and_stop(bootstrap, topics, [*sent, *sent_live], svc, exactly_once=False)
    print(
        f"leader {victim_id} killed after {before} records; {resumed_after:.1f}s to 1500 more; output "
        f"leader now {new_leader}; {ledger.total} events, {ledger.duplicates} duplicates"
    )


@pytest.mark.timeout(300)
async def test_two_of_three_brokers_down_blocks_reports_not_ready_and_resumes(
    cluster: BrokerHandle, fleet: Fleet
) -> None:
    """Two brokers killed: one replica is left, under ``min.insync.replicas=2``, so no event can be
    acknowledged. The service blocks: ``/readyz`` says ``send_failing`` with the broker's reason,
    the group's committed offsets do not move while the feed goes on, and nothing crashes. When the
    brokers return, it resumes without a restart and accounts for every record."""
    bootstrap = cluster.bootstrap_servers
    port = free_port()
    topics, svc = await _setup(cluster, fleet, "quorum-lost", INGEST_HTTP_PORT=str(port))
    sent = await produce(bootstrap, topics.input, feed(600, bad_every=7), partitions=PARTITIONS)
    nodes = _nodes(cluster)
    survivor = nodes.broker(1)
    async with Feeder(
        survivor.bootstrap_servers, topics.input, partitions=PARTITIONS, rate=50, start_fn=100_000
    ) as feeder:
        await wait_until(lambda: svc.count("record") >= 600, within=90, detail=svc.tail)
        for node_id in (2, 3):
            nodes.broker(node_id).kill()

        async def not_ready() -> bool:
            status, body = await readyz(port)
            return status == 503 and body.get("reason") == "send_failing"

        await wait_until(not_ready, within=90, what="/readyz send_failing", detail=svc.tail)
        _, body = await readyz(port)
        assert topics.output in body["detail"] or topics.dlq in body["detail"], body
        assert svc.count("send.stalled") >= 1, svc.tail()
        held = await committed(survivor.bootstrap_servers, topics.group, topics.input, range(PARTITIONS))
        await asyncio.sleep(10)
        still = await committed(survivor.bootstrap_servers, topics.group, topics.input, range(PARTITIONS))
        assert still == held, (
            f"offsets were committed while no event could be acknowledged: {held} -> {still}"
        )
        assert svc.alive, svc.tail()

        for node_id in (2, 3):
            nodes.broker(node_id).start()
        await asyncio.to_thread(nodes.wait_ready)

        async def ready_again() -> bool:
            return (await readyz(port))[0] == 200

        await wait_until(
            ready_again, within=120, what="/readyz 200 after the brokers returned", detail=svc.tail
        )
        sent_live = await feeder.stop()
    ledger = await account_and_stop(bootstrap, topics, [*sent, *sent_live], svc, exactly_once=False)
    print(f"blocked with {body}; committed held at {held}; {ledger.total} events, {ledger.duplicates} dups")


@pytest.mark.timeout(400)
async def test_a_rolling_restart_of_all_three_brokers_under_a_live_feed(
    cluster: BrokerHandle, fleet: Fleet
) -> None:
    """Each broker in turn: a controlled shutdown, a start, and a wait until the cluster lists all
    three again; the service runs through all of it without a restart."""
    bootstrap = cluster.bootstrap_servers
    topics, svc = await _setup(cluster, fleet, "rolling")
    sent = await produce(bootstrap, topics.input, feed(1500, bad_every=7), partitions=PARTITIONS)
    nodes = _nodes(cluster)
    async with Feeder(bootstrap, topics.input, partitions=PARTITIONS, rate=80, start_fn=100_000) as feeder:
        await wait_until(lambda: svc.count("record") >= 500, within=90, detail=svc.tail)
        for node in nodes.broker_nodes:
            before = svc.count("record")
            await asyncio.to_thread(node.restart)
            await asyncio.to_thread(nodes.wait_ready)
            await wait_until(
                lambda before=before: svc.count("record") > before + 100,  # type: ignore[misc]
                within=90,
                what=f"processing after broker {node.node_id} restarted",
                detail=svc.tail,
            )
            assert svc.alive, svc.tail()
        sent_live = await feeder.stop()
    ledger = await account_and_stop(bootstrap, topics, [*sent, *sent_live], svc, exactly_once=False)
    print(f"rolling restart: {ledger.total} events, {ledger.duplicates} duplicates")


@pytest.mark.cluster
async def test_committed_offsets_asked_of_a_broker_that_is_not_the_coordinator_are_not_no_commit(
    cluster: BrokerHandle,
) -> None:
    """The chaos run's bug, made by hand: a group committed 950; asked of a broker that is not its
    coordinator, the OffsetFetch answer has no partitions and NOT_COORDINATOR at its top level,
    which aiokafka's committed() reads as "nothing committed" (None). The service's reader raises
    instead (it is asked again), and asked properly it says 950."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import NotCoordinatorError
    from aiokafka.protocol.commit import OffsetFetchRequest
    from aiokafka.structs import OffsetAndMetadata

    from service.kafka.offsets import GROUP_COORDINATOR, CommittedOffsets, committed_from

    bootstrap = cluster.bootstrap_servers
    topics = await Topics.unique("stale-coordinator").create(bootstrap, **cluster.topic_kwargs)
    await produce(bootstrap, topics.input, feed(5))
    tp = TopicPartition(topics.input, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False)
    await consumer.start()
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(3, "")})
        coordinator = await client.coordinator_lookup(GROUP_COORDINATOR, topics.group)
        other = next(b.nodeId for b in client.cluster.brokers() if b.nodeId != coordinator)
        answer = await client.send(other, OffsetFetchRequest(topics.group, [(tp.topic, [0])]))
        with pytest.raises(NotCoordinatorError):
            committed_from(answer)
        reader = CommittedOffsets({"bootstrap_servers": bootstrap}, topics.group)
        try:
            assert await reader.fetch([tp]) == {tp: 3}
        finally:
            await reader.close()
    finally:
        await client.close()
        await consumer.stop()
