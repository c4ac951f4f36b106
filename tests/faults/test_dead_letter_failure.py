"""The dead-letter write refused by the broker: the partition blocks, nothing is committed past it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import BrokerHandle
from tests.faults.harness import Fleet, ServiceProcess, committed, wait_until
from tests.support import Ledger, Topics, expected_outcomes, feed, produce, record, service_env

pytestmark = [pytest.mark.faults]

REQUEST_TIMEOUT_MS = 3000
GRACE_SECONDS = 5


@pytest.mark.kafka
@pytest.mark.timeout(240)
async def test_a_refused_dead_letter_blocks_its_partition_and_is_never_committed_past(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """How the write is refused: the dead-letter topic's ``max.message.bytes`` is 512, smaller than
    any dead letter, so Apache Kafka refuses every dead-letter write (``MessageSizeTooLargeError``,
    which the client deems permanent) while article events to the output topic succeed.

    Expected: the service keeps running and retrying, logging each attempt (``send.refused`` at
    error level, ``send.retrying`` at warning level for an error the client deems transient) with
    the cause, the destination and the input coordinates; the committed offset stays at the failing
    record; SIGTERM ends it within the grace period plus one request timeout, with exit status 1 (it
    could not acknowledge in time) and still nothing committed past the record. A second instance
    blocks the same way until the topic's limit is raised: then it writes the dead letter without a
    restart, so the record was never dropped.
    """
    bootstrap = fault_broker.bootstrap_servers
    topics = Topics.unique("dlq-refused")
    await topics.create(bootstrap, **fault_broker.topic_kwargs)
    await _set_topic_config(bootstrap, topics.dlq, {**fault_broker.topic_configs, "max.message.bytes": "512"})
    env = service_env(
        bootstrap,
        topics,
        idempotence=fault_broker.idempotence,
        KAFKA_REQUEST_TIMEOUT_MS=str(REQUEST_TIMEOUT_MS),
        INGEST_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        INGEST_RETRY_MAX_SECONDS="1",
    )

    async def offset() -> int | None:
        return (await committed(bootstrap, topics.group, topics.input, [0]))[0]

    async def offset_is(value: int) -> bool:
        return await offset() == value

    # Ten good records go through and are committed: the dead-letter topic is not needed yet.
    sent = await produce(bootstrap, topics.input, feed(10))
    svc = fleet.start(env, "refused")
    await wait_until(lambda: offset_is(10), within=90, what="offset 10 committed", detail=svc.tail)

    # Then a bad record (offset 10) followed by good ones (11-15).
    more = await produce(
        bootstrap, topics.input, [record(99, date="2024-02-30").encode(), *feed(5, start_fn=200)]
    )
    failing = more[0].offset
    assert failing == 10
    await wait_until(lambda: len(_send_failures(svc)) >= 2, within=60, detail=svc.tail)
    warning = _send_failures(svc)[0]
    assert warning["level"] == ("error" if warning["event"] == "send.refused" else "warning"), warning
    assert warning["destination"] == topics.dlq, warning
    assert warning["offset"] == failing, warning
    assert "MessageSizeTooLarge" in warning["error"], warning
    assert svc.alive, svc.tail()
    assert await offset() == failing, "an offset was committed past the failing record"

    svc.terminate()
    signalled = time.monotonic()
    code = await svc.wait_exit(within=GRACE_SECONDS + REQUEST_TIMEOUT_MS / 1000 + 30)
    took = time.monotonic() - signalled
    assert code == 1, svc.tail()
    assert took < GRACE_SECONDS + REQUEST_TIMEOUT_MS / 1000 + 10, f"took {took:.1f}s"
    assert svc.count("stop.grace_expired") + svc.count("stop.forced") >= 1, svc.tail()
    assert await offset() == failing, "an offset was committed past the failing record at shutdown"

    # A new instance blocks on the same record, until the topic accepts dead letters again.
    second = fleet.start(env, "resumes")
    await wait_until(lambda: len(_send_failures(second)) >= 1, within=60, detail=second.tail)
    assert await offset() == failing, "the second instance committed past the failing record"
    await _set_topic_config(
        bootstrap, topics.dlq, {**fault_broker.topic_configs, "max.message.bytes": "1048588"}
    )
    await wait_until(lambda: offset_is(16), within=60, what="offset 16 committed", detail=second.tail)
    assert second.alive, second.tail()
    ledger = await Ledger.read(bootstrap, topics)
    expected = expected_outcomes([*sent, *more], topics.input)
    assert expected[(0, failing, 0)] == "invalid_field"
    ledger.check(expected, exactly_once=False)
    second.terminate()
    assert await second.wait_exit(within=40) == 0, second.tail()
    print(
        f"{len(_send_failures(svc))} send failures logged ({warning['event']}); SIGTERM to exit {took:.1f}s; "
        f"{ledger.duplicates} duplicate events (the articles after the failing record, sent again "
        "with every retry)"
    )


async def _set_topic_config(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Change a topic's configs (incremental alter is not in aiokafka; the legacy alter replaces all
    of the topic's overrides, and this test sets just one)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


def _send_failures(svc: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in svc.lines() if e.get("event") in ("send.retrying", "send.refused")]
