"""Scaling under load: a group of instances loses one (kill -9) and gains one, mid-stream."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.conftest import BrokerHandle
from tests.faults.harness import Feeder, Fleet, ServiceProcess, env_int, wait_accounted, wait_until
from tests.support import Topics, expected_outcomes, feed, produce, service_env

pytestmark = [pytest.mark.faults]

PARTITIONS = 6


def _assigned(svc: ServiceProcess) -> bool:
    return any(e["partitions"] for e in svc.events("partitions.assigned"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("instances", [2, 3])
async def test_one_instance_killed_and_one_added_under_load(
    fault_broker: BrokerHandle, fleet: Fleet, instances: int
) -> None:
    """``instances`` services share a 6-partition topic under a steady feed; one is killed (kill -9)
    at a random moment of its work and a new one is started at once.

    The group rebalances twice (the newcomer joins; the dead member's session expires). Every record
    must be accounted for, redeliveries only with identical ids; the survivors and the newcomer stop
    cleanly on SIGTERM, and the newcomer took a share of the work.
    """
    seed = env_int("FAULTS_SEED", random.randrange(2**32))
    rng = random.Random(seed)
    print(f"FAULTS_SEED={seed}")
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique(f"scale{instances}").create(
        bootstrap, **fault_broker.topic_kwargs, partitions=PARTITIONS
    )
    sent = await produce(bootstrap, topics.input, feed(1200, bad_every=9), partitions=PARTITIONS)
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence, INGEST_BATCH_MAX_MESSAGES="20")

    async with Feeder(bootstrap, topics.input, partitions=PARTITIONS, rate=120, start_fn=100_000) as feeder:
        group = [fleet.start(env, f"instance{k}") for k in range(instances)]
        for svc in group:
            await wait_until(lambda svc=svc: _assigned(svc), within=90, what="an assignment", detail=svc.tail)  # type: ignore[misc]
        victim = rng.choice(group)
        await victim.wait_for("record", within=60)
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        assert victim.alive, victim.tail()
        victim.kill()
        killed_at = time.monotonic()
        newcomer = fleet.start(env, "added")
        survivors = [svc for svc in group if svc is not victim]

        await newcomer.wait_for("record", within=90)
        # Keep the feed going a little longer, so the final assignment works under load too.
        mark = newcomer.count("record")
        await wait_until(lambda: newcomer.count("record") > mark + 50, within=60, detail=newcomer.tail)
        sent_live = await feeder.stop()

    expected = expected_outcomes([*sent, *sent_live], topics.input)
    live = [*survivors, newcomer]
    ledger = await wait_accounted(bootstrap, topics, expected, within=120, services=live)
    for svc in live:
        assert svc.alive, svc.tail()
        svc.terminate()
    codes = [await svc.wait_exit(within=40) for svc in live]
    assert codes == [0] * len(live), [svc.tail() for svc in live]
    ledger.check(expected, exactly_once=False)

    rebalances = [len(svc.events("partitions.assigned")) for svc in live]
    print(
        f"killed {victim.log.name} after {victim.count('record')} records "
        f"({time.monotonic() - killed_at:.0f}s before the end); records per instance "
        f"{[(svc.log.name, svc.count('record')) for svc in fleet.started]}; assignments {rebalances}; "
        f"{len(expected)} records, {ledger.duplicates} duplicate events"
    )
