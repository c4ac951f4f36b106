"""The dead-letter write refused by the broker: the partition blocks, nothing is committed past it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import BrokerHandle
from tests.faults.harness import Fleet, ServiceProcess, committed, wait_until
from tests.support import Ledger, Topics, expected_outcomes, feed, produce, record, service_env

pytestmark = [pytest.mark.faults]

REQUEST_TIMEOUT_MS = 3000
GRACE_SECONDS = 5


@pytest.mark.timeout(240)
async def test_a_refused_dead_letter_blocks_its_partition_and_is_never_committed_past(
    broker: BrokerHandle, fleet: Fleet
) -> None:
    """How the write is refused: ``INGEST_DLQ_TOPIC`` names a topic that is invalid for the broker
    (it contains a space). Nothing checks topic names at start-up, and Tansu (like Kafka) answers
    every metadata request for that name with an error, so each dead-letter send fails after
    ``KAFKA_REQUEST_TIMEOUT_MS`` with ``UnknownTopicOrPartitionError``, for as long as the service runs,
    while article events to the valid output topic succeed. (Other refusals were tried: Tansu
    auto-creates missing topics and accepts messages of 15 MB, so neither a missing topic nor an
    oversized message is refused by the broker itself.)

    Expected: the service keeps running and retrying, logging each attempt (``send.retrying`` at
    warning level, or ``send.refused`` at error level for an error the client deems permanent) with
    the cause, the destination and the input coordinates; the committed offset stays at the failing
    record; SIGTERM ends it within the grace period plus one request timeout, with exit status 1 (it
    could not acknowledge in time) and still nothing committed past the record; and a run with a
    valid dead-letter topic then writes the dead letter, so the record was never dropped.
    """
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("dlq-refused").create(bootstrap)
    refused = f"{topics.dlq} refused"
    env = service_env(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        INGEST_DLQ_TOPIC=refused,
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
    assert warning["destination"] == refused, warning
    assert warning["offset"] == failing, warning
    assert "UnknownTopicOrPartition" in warning["error"], warning
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

    # With a dead-letter topic the broker accepts, the record comes out as its dead letter.
    rerun = fleet.start(dict(env, INGEST_DLQ_TOPIC=topics.dlq, INGEST_BURST="true"), "repaired")
    assert await rerun.wait_exit(within=120) == 0, rerun.tail()
    ledger = await Ledger.read(bootstrap, topics)
    expected = expected_outcomes([*sent, *more], topics.input)
    assert expected[(0, failing, 0)] == "invalid_field"
    ledger.check(expected, exactly_once=False)
    print(
        f"{len(_send_failures(svc))} send failures logged ({warning['event']}); SIGTERM to exit {took:.1f}s; "
        f"{ledger.duplicates} duplicate events (the articles after the failing record, sent again "
        "with every retry)"
    )


def _send_failures(svc: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in svc.lines() if e.get("event") in ("send.retrying", "send.refused")]
