"""Operating the service against a real broker: metrics over HTTP, the probes, the safety switch."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from service.delivery.ingestor import Ingestor
from service.tools.broker import free_port
from tests.conftest import BrokerHandle
from tests.support import (
    SERVICE_CMD,
    Ledger,
    Sent,
    Topics,
    expected_outcomes,
    feed,
    mixed_feed,
    produce,
    service_env,
    settings_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SAFETY = {
    "safety_dlq_ratio": 0.5,
    "safety_window_records": 100,
    "safety_min_records": 50,
    "batch_max_messages": 20,
}


# ----------------------------------------------------------------- helpers


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET over a fresh connection: (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """A probe's status and JSON body."""
    status, body = await http_get(port, path)
    return status, orjson.loads(body)


async def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by name and labels."""
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
    """Poll ``check`` until it holds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.2)


async def ready_is(port: int, status: int, reason: str | None = None) -> bool:
    try:
        got, body = await probe(port, "/readyz")
    except OSError:
        return False
    return got == status and (reason is None or body.get("reason") == reason)


async def committed(bootstrap: str, topics: Topics, partitions: int) -> dict[int, int]:
    """The group's committed offsets on the input topic (0 where nothing was committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {
            p: (await consumer.committed(TopicPartition(topics.input, p))) or 0 for p in range(partitions)
        }
    finally:
        await consumer.stop()


def flood_then_good(flood: int = 60, good: int = 240) -> list[bytes]:
    """``flood`` messages of which 90 % are dead letters (one record each), then ``good`` good ones."""
    bad = feed(flood, bad_every=1)
    fine = feed(flood + good, start_fn=10_000)
    return [fine[i] if i % 10 == 0 else bad[i] for i in range(flood)] + fine[flood:]


def _urlopen(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), bytes(response.read())


def check_processed_prefix(ledger: Ledger, sent: list[Sent], topic: str, done: dict[int, int]) -> None:
    """Exactly once and complete up to the committed offsets, nothing past them."""
    ledger.check(
        expected_outcomes([s for s in sent if s.offset < done[s.partition]], topic), exactly_once=True
    )


# ----------------------------------------------------------------- probes and metrics


async def test_probes_answer_while_the_broker_is_unreachable() -> None:
    topics = Topics.unique("nobroker")
    port = free_port()
    settings = settings_for(
        f"127.0.0.1:{free_port()}",
        topics,
        idempotence=False,
        http_port=port,
        http_host="127.0.0.1",
        retry_initial_seconds=0.1,
        retry_max_seconds=0.5,
    )
    ingestor = Ingestor(settings)
    task = asyncio.create_task(ingestor.run())
    try:
        await eventually(lambda: ready_is(port, 503, "connecting"), "/readyz says connecting", 20)
        status, body = await asyncio.to_thread(_urlopen, f"http://127.0.0.1:{port}/healthz")
        assert status == 200, "what the compose healthcheck does"
        assert orjson.loads(body)["status"] == "ok"

        async def connect_retried() -> bool:
            return value(await scrape(port), "marker_ingest_retries_total", cause="connect") >= 2

        await eventually(connect_retried, "connection retries counted", 30)
        status, body = await http_get(port, "/nope")
        assert status == 404
        assert orjson.loads(body)["paths"] == ["/healthz", "/metrics", "/readyz"]
    finally:
        ingestor.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    with pytest.raises(ConnectionRefusedError):
        await http_get(port, "/healthz")


async def test_a_port_already_taken_stops_the_service_at_start_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(
            f"127.0.0.1:{free_port()}",
            Topics.unique("taken"),
            idempotence=False,
            http_port=port,
            http_host="127.0.0.1",
        )
        assert await asyncio.wait_for(Ingestor(settings).run(), 10) == 1


@pytest.mark.kafka
async def test_readyz_fails_within_seconds_of_a_broker_freeze_and_recovers(tmp_path: Path) -> None:
    """A broker of its own, frozen (SIGSTOP) under an idle, connected service: ``/readyz`` answers
    503 ``fetch_failing`` within ``FETCH_SILENCE_SECONDS`` and a margin (it once stayed ready 8 s
    into a 25 s freeze), and 200 again once the broker is thawed."""
    from service.ops.readiness import FETCH_SILENCE_SECONDS
    from tests.kafka.cluster import KafkaCluster

    with KafkaCluster(tmp_path / "kafka") as own:
        topics = await Topics.unique("freeze-ready").create(own.bootstrap_servers)
        port = free_port()
        settings = settings_for(
            own.bootstrap_servers, topics, idempotence=True, http_port=port, http_host="127.0.0.1"
        )
        ingestor = Ingestor(settings)
        task = asyncio.create_task(ingestor.run())
        try:
            await eventually(lambda: ready_is(port, 200), "/readyz 200 once partitions are assigned", 60)
            own.nodes[0].pause()
            frozen = time.monotonic()
            try:
                await eventually(lambda: ready_is(port, 503, "fetch_failing"), "not ready in the freeze", 30)
                noticed = time.monotonic() - frozen
                _, why = await probe(port, "/readyz")
                assert "answered no fetch" in why["detail"]
            finally:
                own.nodes[0].resume()
            assert noticed < FETCH_SILENCE_SECONDS + 3, f"noticed after {noticed:.1f}s"
            await eventually(lambda: ready_is(port, 200), "/readyz 200 again once thawed", 60)
        finally:
            ingestor.request_stop()
            assert await asyncio.wait_for(task, 60) == 0


DELIVERY = [pytest.param("at-least-once"), pytest.param("exactly-once", marks=pytest.mark.kafka)]
"""Both delivery modes (exactly-once needs Apache Kafka: Tansu has no transactions)."""


@pytest.mark.smoke
@pytest.mark.parametrize("delivery", DELIVERY)
async def test_metrics_follow_the_records(broker: BrokerHandle, delivery: str) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("metrics").create(bootstrap, partitions=2)
    port = free_port()
    settings = settings_for(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        http_port=port,
        http_host="127.0.0.1",
        batch_max_messages=50,
        delivery=delivery,
    )
    ingestor = Ingestor(settings)
    task = asyncio.create_task(ingestor.run())
    try:

        async def healthy() -> bool:
            try:
                return (await probe(port, "/healthz"))[0] == 200
            except OSError:
                return False

        await eventually(healthy, "/healthz 200", 10)
        await eventually(lambda: ready_is(port, 200), "/readyz 200 once partitions are assigned", 60)
        _, ready = await probe(port, "/readyz")
        assert ready["partitions"] == [f"{topics.input}:0", f"{topics.input}:1"]

        cases = mixed_feed()
        values = feed(150, bad_every=4) + [
            cases[k] for k in ("null", "no_markers", "stray", "multi_bad_middle")
        ]
        sent = await produce(bootstrap, topics.input, values, partitions=2)
        expected = expected_outcomes(sent, topics.input)

        async def all_counted() -> bool:
            return value(await scrape(port), "marker_ingest_input_messages_total") == len(sent)

        await eventually(all_counted, "every input message counted", 90)

        async def caught_up() -> bool:
            s = await scrape(port)
            lags = [
                value(s, "marker_ingest_consumer_lag_messages", topic=topics.input, partition=p) for p in "01"
            ]
            present = all(
                ("marker_ingest_consumer_lag_messages", (("partition", p), ("topic", topics.input))) in s
                for p in "01"
            )
            return present and lags == [0, 0]

        await eventually(caught_up, "lag 0 on both partitions", 30)
        s = await scrape(port)
        codes = Counter(code for code in expected.values() if code is not None)
        assert value(s, "marker_ingest_input_records_total") == len(expected)
        assert value(s, "marker_ingest_articles_total") == sum(1 for c in expected.values() if c is None)
        for code, n in codes.items():
            assert value(s, "marker_ingest_dead_letters_total", code=code) == n, code
        assert value(s, "marker_ingest_dead_letters_total", code="payload_too_large") == 0
        assert value(s, "marker_ingest_input_bytes_total") == sum(len(x.value or b"") for x in sent)
        assert value(s, "marker_ingest_commits_total") >= 2  # at least one batch per partition
        assert value(s, "marker_ingest_commit_failures_total") == 0
        assert value(s, "marker_ingest_batch_messages_sum") == len(sent)
        assert value(s, "marker_ingest_batch_duration_seconds_count") == value(
            s, "marker_ingest_batch_messages_count"
        )
        assert value(s, "marker_ingest_end_to_end_latency_seconds_count") == len(sent)
        assert value(s, "marker_ingest_assigned_partitions") == 2
        assert value(s, "marker_ingest_paused") == 0
        assert value(s, "marker_ingest_in_flight_bytes") == 0
        assert all(value(s, "marker_ingest_retries_total", cause=c) == 0 for c in ("send", "commit"))
        transactions = value(s, "marker_ingest_transactions_total", outcome="committed")
        if delivery == "exactly-once":
            assert transactions >= 2, "a transaction per partition and batch"
            assert value(s, "marker_ingest_transaction_duration_seconds_count") >= 1
            assert value(s, "marker_ingest_transactions_total", outcome="aborted") == 0
        else:
            assert transactions == 0
        status, _ = await probe(port, "/healthz")
        assert status == 200
    finally:
        ingestor.request_stop()
        assert await asyncio.wait_for(task, 60) == 0

    ledger = await Ledger.read(bootstrap, topics, committed=delivery == "exactly-once")
    ledger.check(expected, exactly_once=True)


# ----------------------------------------------------------------- the safety switch


@pytest.mark.parametrize("delivery", DELIVERY)
async def test_safety_switch_trips_on_a_dead_letter_flood_and_resumes_after_the_cool_down(
    broker: BrokerHandle, delivery: str
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("safety-cooldown").create(bootstrap)
    sent = await produce(bootstrap, topics.input, flood_then_good())
    expected = expected_outcomes(sent, topics.input)
    port = free_port()
    cooldown = 12.0
    settings = settings_for(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        http_port=port,
        http_host="127.0.0.1",
        safety_cooldown_seconds=cooldown,
        delivery=delivery,
        **SAFETY,
    )
    ingestor = Ingestor(settings)
    task = asyncio.create_task(ingestor.run())
    try:
        await eventually(lambda: ready_is(port, 503, "safety_switch_tripped"), "/readyz reports the trip", 60)
        _, why = await probe(port, "/readyz")
        assert why["ratio"] >= 0.5
        assert why["threshold"] == 0.5
        assert 50 <= why["window"] <= 100
        assert 0 < why["resumes_in_seconds"] <= cooldown
        s = await scrape(port)
        assert value(s, "marker_ingest_paused") == 1
        assert value(s, "marker_ingest_safety_trips_total") == 1

        done = ingestor.messages_done
        assert 50 <= done < len(sent), f"stopped after the batch that tripped it, not at {done}"
        await asyncio.sleep(2)
        assert ingestor.messages_done == done, "a tripped service consumes nothing"
        assert await committed(bootstrap, topics, 1) == {0: done}, "the batch that tripped it is committed"
        processed = await Ledger.read(bootstrap, topics, committed=delivery == "exactly-once")
        check_processed_prefix(processed, sent, topics.input, {0: done})
        assert ingestor.paused, "the cool-down ended during the checks; they proved nothing"

        await eventually(lambda: ready_is(port, 200), "ready again after the cool-down", cooldown + 30)

        async def all_done() -> bool:
            return ingestor.messages_done == len(sent)

        await eventually(all_done, "the rest of the input processed", 60)
        s = await scrape(port)
        assert value(s, "marker_ingest_paused") == 0
        assert value(s, "marker_ingest_safety_trips_total") == 1, "the good records do not trip it again"
    finally:
        ingestor.request_stop()
        assert await asyncio.wait_for(task, 60) == 0

    ledger = await Ledger.read(bootstrap, topics, committed=delivery == "exactly-once")
    ledger.check(expected, exactly_once=True)


async def test_a_tripped_service_stays_paused_across_rebalances(broker: BrokerHandle) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("safety-rebalance").create(bootstrap, partitions=2)
    sent = await produce(bootstrap, topics.input, flood_then_good(flood=120), partitions=2)
    expected = expected_outcomes(sent, topics.input)
    port = free_port()
    settings = settings_for(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        http_port=port,
        http_host="127.0.0.1",
        safety_cooldown_seconds=0,
        **SAFETY,
    )
    ingestor = Ingestor(settings)
    task = asyncio.create_task(ingestor.run())
    try:
        await eventually(lambda: ready_is(port, 503, "safety_switch_tripped"), "tripped", 60)
        done = ingestor.messages_done

        # Another member joins (taking a partition) and leaves (giving it back): two rebalances.
        intruder = AIOKafkaConsumer(
            topics.input, bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False
        )
        await intruder.start()
        try:

            async def intruder_assigned() -> bool:
                return bool(intruder.assignment())

            await eventually(intruder_assigned, "the intruder got a partition", 60)
        finally:
            await intruder.stop()

        async def both_back() -> bool:
            return value(await scrape(port), "marker_ingest_assigned_partitions") == 2

        await eventually(both_back, "both partitions back with the service", 60)
        await asyncio.sleep(2)
        assert ingestor.messages_done == done, "partitions assigned while tripped stay paused"
        status, why = await probe(port, "/readyz")
        assert (status, why["reason"]) == (503, "safety_switch_tripped")
        offsets = await committed(bootstrap, topics, 2)
        assert sum(offsets.values()) == done
        check_processed_prefix(await Ledger.read(bootstrap, topics), sent, topics.input, offsets)

        ingestor.request_resume()

        async def all_done() -> bool:
            # The other partition's share of the flood may trip the switch again (fetch order is
            # the broker's): that is the switch working; resume it again.
            if ingestor.paused:
                ingestor.request_resume()
            return ingestor.messages_done == len(sent)

        await eventually(all_done, "the rest of the input processed after the resume", 60)
        assert await ready_is(port, 200)
    finally:
        ingestor.request_stop()
        assert await asyncio.wait_for(task, 60) == 0

    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected, exactly_once=True)


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(SERVICE_CMD, env=env, stdout=subprocess.DEVNULL, stderr=err)


def _wait_for_log(log: Path, needle: str, timeout: float = 60) -> dict[str, Any]:
    """The first JSON log line containing ``needle``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text().splitlines():
            if needle in line and line.startswith("{"):
                parsed: dict[str, Any] = orjson.loads(line)
                return parsed
        assert time.monotonic() < deadline, (
            f"{needle!r} not logged within {timeout}s:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.1)


async def test_sigusr1_resumes_a_tripped_service_process(broker: BrokerHandle, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("safety-signal").create(bootstrap)
    sent = await produce(bootstrap, topics.input, flood_then_good())
    expected = expected_outcomes(sent, topics.input)
    port = free_port()
    env = service_env(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        INGEST_HTTP_PORT=str(port),
        INGEST_HTTP_HOST="127.0.0.1",
        INGEST_SAFETY_DLQ_RATIO="0.5",
        INGEST_SAFETY_WINDOW_RECORDS="100",
        INGEST_SAFETY_MIN_RECORDS="50",
        INGEST_SAFETY_COOLDOWN_SECONDS="0",
        INGEST_BATCH_MAX_MESSAGES="20",
    )
    log = tmp_path / "service.log"
    proc = _start(env, log)
    try:
        tripped = await asyncio.to_thread(_wait_for_log, log, '"safety.tripped"')
        assert tripped["level"] == "error"
        assert tripped["ratio"] >= 0.5
        assert tripped["threshold"] == 0.5
        assert 50 <= tripped["window"] <= 100
        await eventually(lambda: ready_is(port, 503, "safety_switch_tripped"), "/readyz reports the trip", 10)
        assert (await probe(port, "/readyz"))[1]["resumes_in_seconds"] is None, "signal only"

        await asyncio.sleep(2)
        [done] = (await committed(bootstrap, topics, 1)).values()
        assert 50 <= done < len(sent)
        partial = await Ledger.read(bootstrap, topics)
        check_processed_prefix(partial, sent, topics.input, {0: done})
        assert value(await scrape(port), "marker_ingest_input_messages_total") == done

        proc.send_signal(signal.SIGUSR1)
        resumed = await asyncio.to_thread(_wait_for_log, log, '"safety.resumed"', 30)
        assert resumed["reason"] == "signal"

        async def all_out() -> bool:
            return (await Ledger.read(bootstrap, topics)).total >= len(expected)

        await eventually(all_out, "every record accounted for after SIGUSR1", 90)
        assert await ready_is(port, 200)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected, exactly_once=True)
