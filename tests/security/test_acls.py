"""Authorization against the secured Kafka: a principal that lacks an ACL.

Without WRITE on the dead-letter topic the input partition blocks (nothing skipped, nothing
committed past it), ``/readyz`` says why, and granting the ACL lets the service resume without a
restart. Without DESCRIBE or CREATE where start-up needs them, start-up stops with exit status 2.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from structlog.testing import capture_logs

from service.delivery.ingestor import Ingestor
from service.errors import ExitStatus
from tests.kafka.security import LIMITED_USER, SecuredKafka
from tests.support import Ledger, Topics, expected_outcomes, feed, produce, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

LIMITED = f"User:{LIMITED_USER}"


def _limited(kafka: SecuredKafka, topics: Topics, **overrides: Any) -> Any:
    return settings_for(
        kafka.bootstrap("SASL"),
        topics,
        idempotence=False,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=LIMITED_USER,
        kafka_sasl_password=kafka.limited_password,
        retry_initial_seconds=0.2,
        retry_max_seconds=1.0,
        **overrides,
    )


async def _committed(kafka: SecuredKafka, topics: Topics) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.admin_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(topics.group)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(topics.input, 0))
    return None if meta is None else int(meta.offset)


async def _wait(predicate: Any, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_missing_write_on_dead_letters_blocks_then_resumes(secured: SecuredKafka) -> None:
    topics = await Topics.unique("acl-dlq").create(secured.admin_bootstrap)
    await secured.grant(LIMITED, "topic", topics.input, ["read", "describe"])
    await secured.grant(LIMITED, "topic", topics.output, ["write", "describe"])
    await secured.grant(LIMITED, "topic", topics.dlq, ["describe"])
    await secured.grant(LIMITED, "group", topics.group, ["read"])
    sent = await produce(secured.admin_bootstrap, topics.input, feed(6, bad_every=3))
    ingestor = Ingestor(_limited(secured, topics, burst=True, burst_idle_seconds=3.0))
    with capture_logs() as logs:
        task = asyncio.create_task(ingestor.run())
        await _wait(lambda: ingestor.readiness()[1].get("reason") == "send_failing", 30)
        ready, why = ingestor.readiness()
        assert not ready
        assert topics.dlq in why["detail"]
        assert "lacks WRITE" in why["detail"]
        await asyncio.sleep(2)
        assert await _committed(secured, topics) is None, "committed past the refused dead letter"
        assert not task.done()
        await secured.grant(LIMITED, "topic", topics.dlq, ["write"])
        status = await asyncio.wait_for(task, 60)
    assert status == 0
    refused = [e for e in logs if e.get("missing_permission") == "WRITE"]
    assert refused
    assert refused[0]["resource"] == f"topic {topics.dlq}"
    assert refused[0]["log_level"] == "error"
    assert len(refused) < 15, "a retry storm"
    ledger = await Ledger.read(secured.admin_bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=False)
    assert await _committed(secured, topics) == len(sent)
    text = repr(logs) + ingestor.metrics.render().decode() + repr(ingestor.readiness())
    assert secured.limited_password not in text


async def test_missing_describe_on_input_stops_start_up(secured: SecuredKafka) -> None:
    topics = await Topics.unique("acl-read").create(secured.admin_bootstrap)
    await secured.grant(LIMITED, "topic", topics.output, ["write", "describe"])
    await secured.grant(LIMITED, "topic", topics.dlq, ["write", "describe"])
    with capture_logs() as logs:
        status = await asyncio.wait_for(Ingestor(_limited(secured, topics)).run(), 30)
    assert status == ExitStatus.USAGE
    [line] = [e for e in logs if e["event"] == "kafka.misconfigured"]
    assert line["resource"] == f"topic {topics.input}"
    assert line["missing_permission"] == "DESCRIBE"


async def test_missing_read_on_group_is_named(secured: SecuredKafka) -> None:
    topics = await Topics.unique("acl-group").create(secured.admin_bootstrap)
    for topic in (topics.input, topics.output, topics.dlq):
        await secured.grant(LIMITED, "topic", topic, ["read", "write", "describe"])
    await produce(secured.admin_bootstrap, topics.input, feed(1))
    ingestor = Ingestor(_limited(secured, topics))
    with capture_logs() as logs:
        task = asyncio.create_task(ingestor.run())
        await _wait(lambda: ingestor.readiness()[1].get("reason") == "fetch_failing", 30)
        ready, why = ingestor.readiness()
        ingestor.request_stop()
        await asyncio.wait_for(task, 30)
    assert not ready
    assert f"lacks READ on group {topics.group}" in why["detail"]
    assert len([e for e in logs if e["event"] == "fetch.refused"]) == 1


async def test_missing_create_stops_start_up(secured: SecuredKafka) -> None:
    topics = Topics.unique("acl-create")
    await secured.grant(LIMITED, "topic", topics.input.split(".")[0], ["describe"], pattern="prefixed")
    settings = _limited(secured, topics, create_topics=True)
    with capture_logs() as logs:
        status = await asyncio.wait_for(Ingestor(settings).run(), 30)
    assert status == ExitStatus.USAGE
    [line] = [e for e in logs if e["event"] == "kafka.misconfigured"]
    assert line["missing_permission"] == "CREATE"
    assert topics.input in line["resource"]


async def test_missing_read_on_input_is_named(secured: SecuredKafka) -> None:
    topics = await Topics.unique("acl-input").create(secured.admin_bootstrap)
    await secured.grant(LIMITED, "topic", topics.input, ["describe"])
    for topic in (topics.output, topics.dlq):
        await secured.grant(LIMITED, "topic", topic, ["write", "describe"])
    await secured.grant(LIMITED, "group", topics.group, ["read"])
    await produce(secured.admin_bootstrap, topics.input, feed(1))
    ingestor = Ingestor(_limited(secured, topics))
    with capture_logs() as logs:
        task = asyncio.create_task(ingestor.run())
        await _wait(lambda: ingestor.readiness()[1].get("reason") == "fetch_failing", 30)
        await asyncio.sleep(3)
        ready, why = ingestor.readiness()
        ingestor.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    assert not ready
    assert f"lacks READ on topic {topics.input}" in why["detail"]
    [refused] = [e for e in logs if e["event"] == "fetch.refused"]
    assert refused["resource"] == f"topic {topics.input}"
    assert refused["missing_permission"] == "READ"
    assert refused["log_level"] == "error"
    assert ingestor.messages_done == 0
    assert await _committed(secured, topics) is None


async def test_exactly_once_needs_write_on_its_transactional_ids(secured: SecuredKafka) -> None:
    """Without WRITE on the transactional ids ``<group>.<input>.<p>`` exactly-once stops with one line
    naming the transactional id and INGEST_TRANSACTIONAL_ID_PREFIX (exit 2); granted (a prefixed
    ACL), the same principal delivers every record exactly once to a read_committed reader."""
    topics = await Topics.unique("acl-txn").create(secured.admin_bootstrap)
    await secured.grant(LIMITED, "topic", topics.input, ["read", "describe"])
    for topic in (topics.output, topics.dlq):
        await secured.grant(LIMITED, "topic", topic, ["write", "describe"])
    await secured.grant(LIMITED, "group", topics.group, ["read"])
    sent = await produce(secured.admin_bootstrap, topics.input, feed(20, bad_every=4))
    settings = _limited(secured, topics, delivery="exactly-once", kafka_enable_idempotence=True, burst=True)
    with capture_logs() as logs:
        status = await asyncio.wait_for(Ingestor(settings).run(), 60)
    assert status == ExitStatus.USAGE
    [line] = [e for e in logs if e["event"] == "kafka.misconfigured"]
    assert line["resource"] == f"transactional id {topics.group}.{topics.input}.0"
    assert line["missing_permission"] == "WRITE"
    assert line["setting"] == "INGEST_TRANSACTIONAL_ID_PREFIX"
    assert await _committed(secured, topics) is None

    await secured.grant(LIMITED, "transactional_id", topics.group, ["write", "describe"], pattern="prefixed")
    assert await asyncio.wait_for(Ingestor(settings).run(), 90) == 0
    ledger = await Ledger.read(secured.admin_bootstrap, topics, committed=True)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
