"""The service against a real broker: contents, routing, accounting, restarts, scaling out."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.errors import ErrorCode
from schemas.events import ERROR_CODE_HEADER
from service.core.limits import Limits
from service.delivery.ingestor import Ingestor
from tests.conftest import BrokerHandle
from tests.support import (
    SERVICE_CMD,
    Ledger,
    Topics,
    expected_outcomes,
    feed,
    mixed_feed,
    produce,
    read_all,
    record,
    service_env,
    settings_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.smoke
async def test_seed_record_becomes_its_article_event(broker: BrokerHandle, seed_record: bytes) -> None:
    topics = await Topics.unique("seed").create(broker.bootstrap_servers)
    await produce(broker.bootstrap_servers, topics.input, [seed_record])

    code = await Ingestor(
        settings_for(broker.bootstrap_servers, topics, idempotence=broker.idempotence, burst=True)
    ).run()

    assert code == 0
    [out] = await read_all(broker.bootstrap_servers, topics.output)
    assert await read_all(broker.bootstrap_servers, topics.dlq) == []
    event = orjson.loads(out.value)
    assert out.key == b"2433"
    assert event["id"] == f"{topics.input}:0:0:0"
    assert event["type"] == "io.markeringest.article.ingested.v1"
    assert event["specversion"] == "1.0"
    data = event["data"]
    assert data["fn"] == 2433
    assert data["date"] == "2024-01-24"
    assert data["title"] == "Mediators push for Gaza ceasefire but gaps remain"
    assert data["text"].startswith("There is huge pressure for a new ceasefire")
    assert data["text"].endswith("which Israel says is not final.")
    assert "hostilities.  The handover" in data["text"]
    assert data["extra"] == {}
    assert len(data["sha256"]) == 64


@pytest.mark.smoke
async def test_mixed_feed_gives_one_event_per_record_on_the_right_topic(broker: BrokerHandle) -> None:
    topics = await Topics.unique("mixed").create(broker.bootstrap_servers)
    limits = Limits(max_payload_bytes=50_000, max_records_per_payload=4)
    cases = mixed_feed(limits.max_payload_bytes)
    sent = await produce(broker.bootstrap_servers, topics.input, cases.values(), headers=[("trace", b"t-1")])
    expected = expected_outcomes(sent, topics.input, limits)
    codes = {c for c in expected.values() if c}
    assert codes == {code.value for code in ErrorCode}, "the feed must exercise every error code"

    settings = settings_for(
        broker.bootstrap_servers,
        topics,
        idempotence=broker.idempotence,
        burst=True,
        max_payload_bytes=limits.max_payload_bytes,
        max_records_per_payload=limits.max_records_per_payload,
    )
    assert await Ingestor(settings).run() == 0

    ledger = await Ledger.read(broker.bootstrap_servers, topics)
    ledger.check(expected, exactly_once=True)
    articles = await read_all(broker.bootstrap_servers, topics.output)
    assert sorted(int(r.key) for r in articles) == [10, 11, 12, 14]
    dead = await read_all(broker.bootstrap_servers, topics.dlq)
    by_offset = {s.offset: s for s in sent}
    for rec in dead:
        event = orjson.loads(rec.value)
        assert rec.key == by_offset[event["source"]["offset"]].key, "a dead letter keeps the input key"
        headers = dict(rec.headers)
        assert headers[ERROR_CODE_HEADER].decode() == event["error"]["code"]
        assert headers["trace"] == b"t-1", "a dead letter carries the input headers"
    invalid = next(
        orjson.loads(r.value) for r in dead if orjson.loads(r.value)["error"]["code"] == "invalid_encoding"
    )
    assert invalid["raw"]["text"] is None
    assert invalid["raw"]["base64"]


async def test_stop_and_resume_processes_every_record_exactly_once(broker: BrokerHandle) -> None:
    topics = await Topics.unique("resume").create(broker.bootstrap_servers, partitions=2)
    sent = await produce(broker.bootstrap_servers, topics.input, feed(300, bad_every=7), partitions=2)
    base = {"idempotence": broker.idempotence, "batch_max_messages": 40}

    first = Ingestor(settings_for(broker.bootstrap_servers, topics, max_messages=120, **base))
    assert await first.run() == 0
    assert first.messages_done == 120
    second = Ingestor(settings_for(broker.bootstrap_servers, topics, burst=True, **base))
    assert await second.run() == 0
    assert second.messages_done == 180

    ledger = await Ledger.read(broker.bootstrap_servers, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(SERVICE_CMD, env=env, stdout=subprocess.DEVNULL, stderr=err)


RECORD_LINE = re.compile(r'"event": ?"record"')


def _wait_for_log(log: Path, pattern: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        assert time.monotonic() < deadline, (
            f"{pattern!r} not logged within {timeout}s:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_restart_after_stop_mid_stream_keeps_the_accounting(
    broker: BrokerHandle, tmp_path: Path, how: str
) -> None:
    topics = await Topics.unique(f"restart-{how}").create(broker.bootstrap_servers, partitions=2)
    sent = await produce(
        broker.bootstrap_servers, topics.input, feed(3000, body_bytes=2000, bad_every=10), partitions=2
    )
    env = service_env(
        broker.bootstrap_servers, topics, idempotence=broker.idempotence, INGEST_BATCH_MAX_MESSAGES="50"
    )
    log = tmp_path / "service.log"
    proc = _start(env, log)
    try:
        # Batches are 50 messages and the loop awaits every ack before it fetches again: a 51st
        # record line means the first batch is acknowledged and committed, and the run is mid-stream.
        deadline = time.monotonic() + 60
        while len(RECORD_LINE.findall(log.read_text())) <= 50:
            assert time.monotonic() < deadline, f"no second batch within 60s:\n{log.read_text()[-3000:]}"
            await asyncio.sleep(0.05)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(timeout=30) == 0
            assert time.monotonic() - started < 20, "stopped within the grace period"
            assert "service.stopped" in log.read_text()
        else:
            proc.kill()
            proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = await Ledger.read(broker.bootstrap_servers, topics)
    assert partial.total > 0, "the first run did some work"

    burst_env = dict(env, INGEST_BURST="true")
    rerun = await asyncio.to_thread(
        subprocess.run, SERVICE_CMD, env=burst_env, capture_output=True, timeout=180
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]

    ledger = await Ledger.read(broker.bootstrap_servers, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=(how == "sigterm"))


@pytest.mark.smoke
async def test_two_instances_share_a_four_partition_topic(broker: BrokerHandle, tmp_path: Path) -> None:
    topics = await Topics.unique("pair").create(broker.bootstrap_servers, partitions=4)
    env = service_env(
        broker.bootstrap_servers, topics, idempotence=broker.idempotence, INGEST_BATCH_MAX_MESSAGES="20"
    )
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start(env, log) for log in logs]
    try:
        for log in logs:
            await asyncio.to_thread(_wait_for_log, log, r'"partitions": ?\["')
        sent = await produce(broker.bootstrap_servers, topics.input, feed(2000, bad_every=9), partitions=4)
        expected = expected_outcomes(sent, topics.input)
        deadline = time.monotonic() + 120
        while (await Ledger.read(broker.bootstrap_servers, topics)).total < len(expected):
            assert time.monotonic() < deadline, "the pair did not process the feed in time"
            await asyncio.sleep(1)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    per_instance = [len(RECORD_LINE.findall(log.read_text())) for log in logs]
    assert all(n > 0 for n in per_instance), f"both instances must have worked: {per_instance}"
    assert sum(per_instance) == len(expected)

    ledger = await Ledger.read(broker.bootstrap_servers, topics)
    ledger.check(expected, exactly_once=True)


@pytest.mark.kafka
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_an_aborted_upstream_transaction_is_never_ingested(broker: BrokerHandle, delivery: str) -> None:
    """An upstream transactional producer aborts one record and commits the next: only the committed
    one becomes an event, in either delivery mode (the input is read read_committed), and a burst
    run still ends, drained, past the transaction markers."""
    topics = await Topics.unique(f"aborted-{delivery}").create(broker.bootstrap_servers)
    upstream = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, transactional_id=f"upstream-{topics.input}"
    )
    await upstream.start()
    try:
        await upstream.begin_transaction()
        await upstream.send_and_wait(topics.input, record(1).encode(), key=b"rolled-back")
        await upstream.abort_transaction()
        async with upstream.transaction():
            await upstream.send_and_wait(topics.input, record(2).encode(), key=b"committed")
    finally:
        await upstream.stop()

    ingestor = Ingestor(
        settings_for(broker.bootstrap_servers, topics, idempotence=True, burst=True, delivery=delivery)
    )
    assert await asyncio.wait_for(ingestor.run(), 90) == 0

    articles = await read_all(broker.bootstrap_servers, topics.output, committed=True)
    assert [orjson.loads(a.value)["data"]["fn"] for a in articles] == [2]
    assert await read_all(broker.bootstrap_servers, topics.dlq, committed=True) == []
