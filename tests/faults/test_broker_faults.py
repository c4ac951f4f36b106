"""Broker faults: the broker frozen mid-stream, and the broker absent at start-up.

Both use a Tansu broker of their own (``EmbeddedBroker``), never the session broker: freezing or
starting late the shared one would disturb every other test. Tansu keeps its data in memory, so a
"broker down" fault is a SIGSTOP/SIGCONT pause or a late start, never a restart mid-test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.broker import EmbeddedBroker, free_port
from tests.faults.harness import Feeder, Fleet, wait_accounted, wait_until
from tests.support import Topics, expected_outcomes, feed, produce, service_env

pytestmark = [pytest.mark.faults]

# Low, but not below the time a group join takes: JoinGroup requests use the same timeout, and a
# join on Tansu takes about 5 s (see test_a_request_timeout_shorter_than_a_group_join_still_joins).
REQUEST_TIMEOUT_MS = 10_000
PAUSE_SECONDS = 1.6 * REQUEST_TIMEOUT_MS / 1000


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A Tansu broker for this test alone (stopped, and thawed first, at the end)."""
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(180)
async def test_broker_frozen_longer_than_the_request_timeout_then_thawed(
    own_broker: EmbeddedBroker, fleet: Fleet
) -> None:
    """SIGSTOP the broker mid-stream for longer than the request timeout, then SIGCONT it.

    The service must ride it out without a restart: requests time out, sends and commits are
    retried, and once the broker answers again every record is accounted for (redeliveries allowed,
    always with identical ids).
    """
    bootstrap = own_broker.bootstrap_servers
    topics = await Topics.unique("pause").create(bootstrap, partitions=2)
    sent = await produce(bootstrap, topics.input, feed(1500, body_bytes=800, bad_every=8), partitions=2)
    env = service_env(
        bootstrap,
        topics,
        idempotence=False,
        KAFKA_REQUEST_TIMEOUT_MS=str(REQUEST_TIMEOUT_MS),
        INGEST_BATCH_MAX_MESSAGES="50",
    )
    svc = fleet.start(env, "service")
    async with Feeder(bootstrap, topics.input, partitions=2, rate=100, start_fn=100_000) as feeder:
        await svc.wait_for("record", within=60)
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
    print(
        f"frozen {frozen_for:.1f}s; {len(expected)} records, {ledger.duplicates} redelivered; "
        f"warnings: {sorted({e['event'] for e in svc.events() if e.get('level') == 'warning'})}"
    )


@pytest.mark.timeout(180)
async def test_broker_absent_at_start_up_arriving_later(tmp_path: Path, fleet: Fleet) -> None:
    """Start the service against a port where nothing listens; start the broker there later.

    The service logs ``broker.unreachable`` with a growing backoff and keeps running; once the broker
    is up, the topics exist and the feed is produced, it processes everything exactly once.
    """
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics.unique("late")
    env = service_env(bootstrap, topics, idempotence=False, INGEST_RETRY_MAX_SECONDS="2")
    svc = fleet.start(env, "service")

    await svc.wait_for("broker.unreachable", within=60, count=3)
    waits = [e["retry_in"] for e in svc.events("broker.unreachable")]
    assert all(w > 0 for w in waits), waits
    assert max(waits) > min(waits), f"the backoff must grow: {waits}"
    assert svc.alive, svc.tail()

    with EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log") as late:
        await topics.create(late.bootstrap_servers, partitions=2)
        sent = await produce(late.bootstrap_servers, topics.input, feed(800, bad_every=6), partitions=2)
        expected = expected_outcomes(sent, topics.input)
        ledger = await wait_accounted(late.bootstrap_servers, topics, expected, within=120, services=[svc])
        svc.terminate()
        assert await svc.wait_exit(within=30) == 0, svc.tail()
        ledger.check(expected, exactly_once=True)
    print(f"unreachable {len(waits)} times, waits {waits}")


@pytest.mark.timeout(120)
async def test_a_request_timeout_shorter_than_a_group_join_still_joins(
    own_broker: EmbeddedBroker, fleet: Fleet
) -> None:
    """KAFKA_REQUEST_TIMEOUT_MS=3000 is accepted by the settings (the floor is 1000), so it must work.

    Reproduction: a fresh group, ten good records, the service started with the 3 s timeout. A
    healthy service processes them within seconds; this one logs aiokafka's "Error sending
    JoinGroupRequest ... RequestTimedOutError -- marking coordinator dead" every 3 s and never
    gets a partition. Either the settings must reject such a value (kafka-python required
    request_timeout_ms > session_timeout_ms) or the consumer must give JoinGroup a longer timeout
    (the Java client uses rebalance.timeout.ms + 5 s).
    """
    bootstrap = own_broker.bootstrap_servers
    topics = await Topics.unique("short-timeout").create(bootstrap)
    sent = await produce(bootstrap, topics.input, feed(10))
    env = service_env(bootstrap, topics, idempotence=False, KAFKA_REQUEST_TIMEOUT_MS="3000")
    svc = fleet.start(env, "service")
    expected = expected_outcomes(sent, topics.input)
    ledger = await wait_accounted(bootstrap, topics, expected, within=30, services=[svc])
    ledger.check(expected, exactly_once=True)
