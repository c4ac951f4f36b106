"""Stopping, whatever the broker and the log stream do: within the grace period and a small margin."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from service.delivery.app import HARD_STOP_MARGIN_SECONDS
from service.delivery.grace import STOP_MARGIN_SECONDS
from service.tools.broker import free_port
from tests.conftest import BrokerHandle
from tests.faults.harness import Fleet, wait_until
from tests.support import SERVICE_CMD, Topics, feed, produce, service_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def fleet(tmp_path: Path) -> object:
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.cleanup()


async def test_sigterm_while_the_broker_is_unreachable_stops_at_once(fleet: Fleet) -> None:
    """A long backoff (30 s cap) between connection attempts: SIGTERM ends the wait at once, and the
    service logs ``service.stopped`` and exits 0."""
    topics = Topics.unique("unreachable")
    env = service_env(
        f"127.0.0.1:{free_port()}",
        topics,
        idempotence=False,
        INGEST_RETRY_INITIAL_SECONDS="8",
        INGEST_RETRY_MAX_SECONDS="30",
    )
    svc = fleet.start(env, "unreachable")
    await svc.wait_for("broker.unreachable", within=30)
    svc.terminate()
    signalled = time.monotonic()
    assert await svc.wait_exit(within=20) == 0, svc.tail()
    took = time.monotonic() - signalled
    assert took < 2.0, f"took {took:.1f}s to stop"
    assert svc.count("service.stopped") == 1, svc.tail()


async def test_a_burst_run_gives_up_on_an_unreachable_broker_after_the_request_timeout(fleet: Fleet) -> None:
    """A burst run is a batch job: with no broker answering it exits 1 once
    ``KAFKA_REQUEST_TIMEOUT_MS`` has passed, with one error line (a service keeps waiting)."""
    env = service_env(
        f"127.0.0.1:{free_port()}",
        Topics.unique("burst-unreachable"),
        idempotence=False,
        INGEST_BURST="true",
        KAFKA_REQUEST_TIMEOUT_MS="2000",
        INGEST_RETRY_MAX_SECONDS="1",
    )
    svc = fleet.start(env, "burst-unreachable")
    assert await svc.wait_exit(within=30) == 1, svc.tail()
    took = time.monotonic() - svc.started_at
    assert took < 15, f"took {took:.1f}s to give up"
    [line] = svc.events("broker.gave_up")
    assert "KAFKA_REQUEST_TIMEOUT_MS" in line["detail"]
    assert svc.count("broker.unreachable") >= 1


async def test_a_broken_log_pipe_does_not_stop_sigterm(broker: BrokerHandle, tmp_path: Path) -> None:
    """``marker-ingest run 2>&1 | head -3`` against an idle topic: once ``head`` has gone, every log
    write fails (EPIPE). The service keeps running; SIGTERM still stops it, with status 0."""
    topics = await Topics.unique("brokenpipe").create(broker.bootstrap_servers)
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)
    read, write = os.pipe()
    proc = subprocess.Popen(SERVICE_CMD, env=env, stdout=subprocess.DEVNULL, stderr=write)  # noqa: ASYNC220
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            for _ in range(3):
                pipe.readline()
        # The reader is gone: the next write to stderr fails with EPIPE.
        await asyncio.sleep(2.0)
        assert proc.poll() is None, "the service died when its log stream broke"
        proc.terminate()
        signalled = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
        assert time.monotonic() - signalled < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.kafka
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_sigterm_with_the_broker_frozen_exits_within_the_grace_period(
    broker: BrokerHandle, tmp_path: Path, fleet: Fleet, delivery: str
) -> None:
    """A broker of its own, frozen (SIGSTOP) while a backlog is worked through; then SIGTERM with a
    5 s grace period: the batch in flight cannot be acknowledged, so the service exits 1 with
    ``stop.grace_expired``, within the grace period plus ``STOP_MARGIN_SECONDS`` and a second,
    never as late as the hard stop (grace + ``HARD_STOP_MARGIN_SECONDS``)."""
    from tests.kafka.cluster import KafkaCluster

    grace = 5.0
    with KafkaCluster(tmp_path / "kafka") as own:
        bootstrap = own.bootstrap_servers
        topics = await Topics.unique("frozen-stop").create(bootstrap)
        await produce(bootstrap, topics.input, feed(20000, body_bytes=400))
        env = service_env(
            bootstrap,
            topics,
            idempotence=True,
            INGEST_SHUTDOWN_GRACE_SECONDS=str(grace),
            INGEST_BATCH_MAX_MESSAGES="50",
            INGEST_DELIVERY=delivery,
        )
        svc = fleet.start(env, "frozen")
        await wait_until(lambda: svc.count("record") >= 500, within=60, interval=0.01, detail=svc.tail)
        own.nodes[0].pause()
        try:
            await asyncio.sleep(0.5)
            svc.terminate()
            signalled = time.monotonic()
            code = await svc.wait_exit(within=grace + HARD_STOP_MARGIN_SECONDS + 10)
            took = time.monotonic() - signalled
        finally:
            own.nodes[0].resume()
    assert code == 1, svc.tail()
    assert took < grace + STOP_MARGIN_SECONDS + 1.5, f"took {took:.1f}s with a {grace:g}s grace period"
    assert svc.count("stop.grace_expired") == 1, svc.tail()
    assert svc.count("stop.hard_exit") == 0, svc.tail()
    print(f"exited {took:.1f}s after SIGTERM (grace {grace:g}s)")
