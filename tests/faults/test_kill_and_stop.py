"""The service process killed (kill -9) or stopped (SIGTERM) at random points under load.

The random points come from a seeded generator; the seed is printed, and ``FAULTS_SEED=<seed>``
replays a run.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.conftest import BrokerHandle
from tests.faults.harness import (
    Feeder,
    Fleet,
    ServiceProcess,
    committed,
    env_int,
    processed_again,
    wait_records,
    wait_until,
)
from tests.support import Ledger, Topics, expected_outcomes, feed, produce, service_env

pytestmark = [pytest.mark.faults]

GRACE_SECONDS = 10


@pytest.mark.timeout(300)
async def test_kill9_at_random_points_four_times_then_a_burst_run(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """Four kill -9s under live load: two mid-stream (after a random number of records, so a batch
    is in flight), two at a random moment after start (start-up, the group join, or work).

    Then a burst run drains the rest. Every record must be accounted for; redeliveries (the batches
    in flight at each kill) are allowed and must carry identical ids.
    """
    seed = env_int("FAULTS_SEED", random.randrange(2**32))
    rng = random.Random(seed)
    print(f"FAULTS_SEED={seed}")
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("kill9x4").create(bootstrap, **fault_broker.topic_kwargs, partitions=3)
    sent = await produce(bootstrap, topics.input, feed(4000, body_bytes=1000, bad_every=11), partitions=3)
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence, INGEST_BATCH_MAX_MESSAGES="50")

    kills = []
    async with Feeder(bootstrap, topics.input, partitions=3, rate=50, start_fn=100_000) as feeder:
        for run in range(4):
            svc = fleet.start(env, f"run{run}")
            if run % 2 == 0:
                target = rng.randint(1, 1200)
                await wait_records(svc, target, what=f"{target} records in run {run}")
            else:
                await asyncio.sleep(rng.uniform(0.3, 8.0))
            assert svc.alive, f"run {run} exited by itself ({svc.returncode})\n{svc.tail()}"
            svc.kill()
            kills.append((round(time.monotonic() - svc.started_at, 2), svc.count("record")))
        sent_live = await feeder.stop()

    # Right after the kills, dead members may still hold partitions: the burst run must wait for them
    # (see test_a_burst_run_does_not_exit_while_a_dead_peer_holds_partitions).
    expected = expected_outcomes([*sent, *sent_live], topics.input)
    final = fleet.start(dict(env, INGEST_BURST="true"), "final")
    assert await final.wait_exit(within=180) == 0, final.tail()
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected, exactly_once=False)

    # Evidence that kills landed mid-batch: records a killed run logged were processed again later.
    reprocessed = processed_again(fleet.started)
    assert reprocessed > 0, f"no kill landed mid-batch: {kills}"
    print(
        f"kills (seconds after start, records logged): {kills}; burst run: {final.count('record')} records; "
        f"{len(expected)} records, {reprocessed} processed again, {ledger.duplicates} duplicate events"
    )


@pytest.mark.timeout(120)
async def test_a_burst_run_does_not_exit_while_a_dead_peer_holds_partitions(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """Two burst instances share a 6-partition topic; one is killed (kill -9) as soon as it is assigned.

    The survivor must not stop at its own three partitions: it exits 0 only once the dead peer's
    session expired, the group rebalanced and it drained the other three too. (A bug found by this
    suite: the survivor used to exit with ``burst.drained`` within a second, half the input left
    unprocessed, because only ``consumer.assignment()`` was checked. A single burst run started
    right after a kill -9 whose victim was in the middle of a group join had the same problem.)
    """
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("burst-peer").create(bootstrap, **fault_broker.topic_kwargs, partitions=6)
    sent = await produce(bootstrap, topics.input, feed(3000, body_bytes=500), partitions=6)
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence, INGEST_BURST="true")
    victim, survivor = fleet.start(env, "victim"), fleet.start(env, "survivor")
    await wait_until(
        lambda: victim.count("partitions.assigned") > 0, within=60, interval=0.005, detail=victim.tail
    )
    victim.kill()
    assert await survivor.wait_exit(within=90) == 0, survivor.tail()
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=False)


@pytest.mark.timeout(180)
async def test_a_burst_run_exits_while_a_live_peer_holds_committed_partitions(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """A ``run`` instance drains a 3-partition topic and keeps running; a burst run then joins its
    group. Every partition is committed to its end, so the burst run must exit 0 once it has taken
    its share (it used to wait forever: its probe of the peer's partitions never learned their ends).
    """
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("burst-live").create(bootstrap, **fault_broker.topic_kwargs, partitions=3)
    sent = await produce(bootstrap, topics.input, feed(300, body_bytes=500, bad_every=7), partitions=3)
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence)
    peer = fleet.start(env, "peer")
    await wait_records(peer, len(sent), what="the peer draining the input")
    burst = fleet.start(dict(env, INGEST_BURST="true"), "burst")
    assert await burst.wait_exit(within=90) == 0, burst.tail()
    assert peer.alive, peer.tail()
    assert burst.count("burst.drained") == 1
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)


def _stopped_mid_batch(svc: ServiceProcess) -> bool:
    """From a DEBUG log: records were logged after the last commit before the signal (a batch was in
    flight), and a commit followed the signal (that batch was finished and committed)."""
    names = [e.get("event") for e in svc.lines()]
    at = names.index("stop.requested")
    before = names[:at]
    last_commit = max((i for i, n in enumerate(before) if n == "commit.done"), default=-1)
    return "record" in before[last_commit + 1 :] and "commit.done" in names[at:]


@pytest.mark.timeout(240)
async def test_sigterm_mid_batch_exits_cleanly_and_a_restart_duplicates_nothing(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """SIGTERM while records flow, until two signals have landed mid-batch (at most five runs).

    Each time: exit 0 within the grace period, with everything processed so far acknowledged and
    committed (committed offset = last logged offset + 1 on every partition). Then a burst run:
    exactly once overall. The service runs at DEBUG level to log ``commit.done``.
    """
    seed = env_int("FAULTS_SEED", random.randrange(2**32))
    rng = random.Random(seed)
    print(f"FAULTS_SEED={seed}")
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("sigterm").create(bootstrap, **fault_broker.topic_kwargs, partitions=2)
    sent = await produce(bootstrap, topics.input, feed(6000, body_bytes=1000, bad_every=7), partitions=2)
    env = service_env(
        bootstrap,
        topics,
        idempotence=fault_broker.idempotence,
        INGEST_BATCH_MAX_MESSAGES="200",
        INGEST_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        INGEST_LOG_LEVEL="DEBUG",
    )

    stops = []
    for run in range(5):
        svc = fleet.start(env, f"run{run}")
        target = rng.randint(1, 600)
        await wait_records(svc, target, what=f"{target} records in run {run}")
        assert svc.alive, svc.tail()
        svc.terminate()
        signalled = time.monotonic()
        code = await svc.wait_exit(within=GRACE_SECONDS + 20)
        took = time.monotonic() - signalled
        assert code == 0, svc.tail()
        assert took < GRACE_SECONDS, f"took {took:.1f}s, over the grace period"
        assert svc.count("stop.requested") == 1
        assert svc.count("service.stopped") == 1

        # Everything this run logged was acknowledged and committed before it exited.
        last: dict[int, int] = {}
        for e in svc.events("record"):
            last[e["partition"]] = max(last.get(e["partition"], -1), e["offset"])
        offsets = await committed(bootstrap, topics.group, topics.input, last)
        assert offsets == {p: o + 1 for p, o in last.items()}, (offsets, last)
        stops.append((svc.count("record"), _stopped_mid_batch(svc), round(took, 2)))
        if sum(mid for _, mid, _ in stops) >= 2:
            break
    assert sum(mid for _, mid, _ in stops) >= 2, f"SIGTERM never landed mid-batch twice: {stops}"

    final = fleet.start(dict(env, INGEST_BURST="true", INGEST_LOG_LEVEL="INFO"), "burst")
    assert await final.wait_exit(within=180) == 0, final.tail()
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
    print(f"stops (records, mid-batch, seconds to exit): {stops}; burst run: {final.count('record')} records")


@pytest.mark.timeout(120)
async def test_sigterm_during_start_up_exits_cleanly(fault_broker: BrokerHandle, fleet: Fleet) -> None:
    """SIGTERM before the group join completed: exit 0 promptly, nothing processed or committed."""
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("sigterm-early").create(bootstrap, **fault_broker.topic_kwargs)
    await produce(bootstrap, topics.input, feed(50))
    svc = fleet.start(
        service_env(
            bootstrap,
            topics,
            idempotence=fault_broker.idempotence,
            INGEST_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        ),
        "service",
    )
    await svc.wait_for("service.started", within=60)
    await wait_until(lambda: time.monotonic() - svc.started_at > 1.5, within=10)
    svc.terminate()
    signalled = time.monotonic()
    assert await svc.wait_exit(within=GRACE_SECONDS + 20) == 0, svc.tail()
    assert time.monotonic() - signalled < GRACE_SECONDS
    assert svc.count("service.stopped") == 1
