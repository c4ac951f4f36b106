"""``marker-ingest redrive`` against a real broker: filters, dry runs, the loop limit, exact bytes."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from schemas.events import (
    ERROR_CODE_HEADER,
    ORIGIN_HEADER,
    ORIGIN_TAG_HEADER,
    ORIGIN_TRACEPARENT_HEADER,
    REDRIVE_COUNT_HEADER,
    REDRIVEN_HEADER,
)
from service.cli import main
from service.core.origin import origin_tag
from service.delivery.ingestor import Ingestor
from service.kafka.topics import create_topics
from tests.conftest import BrokerHandle
from tests.support import Topics, produce, read_all, record, service_env, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REDRIVE_KEY = "integration-tests-redrive-key-0123456789"

BAD_DATE = record(7, date="2024-02-30").encode()
NO_MARKERS = b"just some words without any field markers"
MISSING_TITLE = (
    b"F-N-S-T-A-R-T. 8 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-01 D-A-T-E-E-N-D. "
    b"T-E-X-T-S-T-A-R-T. body T-E-X-T-E-N-D."
)
STRAY = ("oops " + record(9)).encode()


def _use_env(
    monkeypatch: pytest.MonkeyPatch, broker: BrokerHandle, topics: Topics, **extra: str
) -> dict[str, str]:
    """Point the in-process command at the test's broker and topics, as the environment would."""
    env = service_env(
        broker.bootstrap_servers,
        topics,
        idempotence=broker.idempotence,
        INGEST_REDRIVE_KEY=REDRIVE_KEY,
        **extra,
    )
    for name in list(os.environ):
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.setenv(name, value)
    return env


async def _redrive(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``marker-ingest redrive --json`` in-process; return its exit status and report."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["redrive", "--json", *args])
    out = capsys.readouterr().out
    report: dict[str, Any] = orjson.loads(out)
    return code, report


async def _dead_letters(bootstrap: str, topic: str, *, committed: bool = False) -> list[Any]:
    """The dead letters on ``topic``: its records but the redrive markers."""
    records = await read_all(bootstrap, topic, committed=committed)
    return [r for r in records if REDRIVEN_HEADER not in dict(r.headers)]


async def _markers(bootstrap: str, topic: str, *, committed: bool = False) -> list[dict[str, Any]]:
    """The redrive markers on ``topic``."""
    records = await read_all(bootstrap, topic, committed=committed)
    return [orjson.loads(r.value) for r in records if REDRIVEN_HEADER in dict(r.headers)]


async def _ingest(broker: BrokerHandle, topics: Topics, **overrides: Any) -> None:
    """Run the service over the input until it is drained."""
    overrides.setdefault("redrive_key", REDRIVE_KEY)
    settings = settings_for(
        broker.bootstrap_servers, topics, idempotence=broker.idempotence, burst=True, **overrides
    )
    assert await Ingestor(settings).run() == 0


def _selected_by_code(report: dict[str, Any]) -> dict[str, int]:
    return {code: c["selected"] for code, c in report["by_code"].items()}


@pytest.mark.smoke
async def test_redrive_selects_by_code_time_partition_offset_and_limit(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-filters").create(bootstrap, partitions=2)
    # Partition 0 gets offsets 0, 1, 2 = BAD_DATE, MISSING_TITLE, NO_MARKERS; partition 1 the others.
    first = [BAD_DATE, NO_MARKERS, MISSING_TITLE, BAD_DATE, NO_MARKERS, MISSING_TITLE]
    sent = await produce(bootstrap, topics.input, first, partitions=2, headers=[("trace", b"t-1")])
    await _ingest(broker, topics)
    between = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.05)
    await produce(bootstrap, topics.input, [STRAY, STRAY], partitions=2)
    await _ingest(broker, topics)
    _use_env(monkeypatch, broker, topics)

    code, everything = await _redrive(capsys, "--dry-run")
    assert code == 0
    assert (everything["read"], everything["selected"], everything["redriven"]) == (8, 8, 8)
    assert _selected_by_code(everything) == {
        "invalid_field": 2,
        "missing_field": 2,
        "no_markers": 2,
        "stray_text": 2,
    }
    assert everything["would_succeed"] == 0

    cases: list[tuple[list[str], dict[str, int]]] = [
        (["--code", "invalid_field"], {"invalid_field": 2}),
        (["--code", "invalid_field", "--code", "no_markers"], {"invalid_field": 2, "no_markers": 2}),
        (["--since", between.isoformat()], {"stray_text": 2}),
        (
            ["--until", between.isoformat()],
            {"invalid_field": 2, "missing_field": 2, "no_markers": 2},
        ),
        (
            ["--partition", "0", "--from-offset", "1", "--to-offset", "2"],
            {"missing_field": 1, "no_markers": 1},
        ),
        (["--partition", "1", "--from-offset", "3"], {"stray_text": 1}),
        (["--code", "stray_text", "--limit", "1"], {"stray_text": 1}),
    ]
    for args, expected in cases:
        code, report = await _redrive(capsys, "--dry-run", *args)
        assert code == 0, args
        assert _selected_by_code(report) == expected, args
    code, limited = await _redrive(capsys, "--dry-run", "--limit", "3")
    assert (code, limited["selected"]) == (0, 3)

    assert len(await read_all(bootstrap, topics.input)) == 8, "a dry run publishes nothing"

    code, report = await _redrive(capsys, "--code", "missing_field")
    assert code == 0
    assert (report["selected"], report["redriven"], report["skipped"]) == (2, 2, {})
    inputs = await read_all(bootstrap, topics.input)
    assert len(inputs) == 10
    redriven = [r for r in inputs if dict(r.headers).get(REDRIVE_COUNT_HEADER)]
    originals = {s.key for s in sent if s.value == MISSING_TITLE}
    assert {r.key for r in redriven} == originals == {b"k2", b"k5"}
    origins = set()
    for rec in redriven:
        assert rec.value == MISSING_TITLE
        headers = dict(rec.headers)
        origin = headers.pop(ORIGIN_HEADER).decode()
        origins.add(origin)
        tag = origin_tag(SecretStr(REDRIVE_KEY), origin, MISSING_TITLE)
        assert headers == {"trace": b"t-1", REDRIVE_COUNT_HEADER: b"1", ORIGIN_TAG_HEADER: tag.encode()}
        assert ERROR_CODE_HEADER not in headers
    assert origins == {f"{topics.input}:{s.partition}:{s.offset}:0" for s in sent if s.value == MISSING_TITLE}


async def test_dry_run_counts_what_the_current_limits_would_let_through(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-dry").create(bootstrap)
    large = record(20, text="long body " * 100).encode()
    many = " ".join(record(21 + i) for i in range(3)).encode()
    assert len(many) < 800 < len(large)
    await produce(bootstrap, topics.input, [large, many, BAD_DATE])
    await _ingest(broker, topics, max_payload_bytes=800, max_records_per_payload=2)

    _use_env(monkeypatch, broker, topics, INGEST_MAX_PAYLOAD_BYTES="800", INGEST_MAX_RECORDS_PER_PAYLOAD="2")
    code, same = await _redrive(capsys, "--dry-run")
    assert code == 0
    assert _selected_by_code(same) == {"payload_too_large": 1, "too_many_records": 1, "invalid_field": 1}
    assert same["would_succeed"] == 0

    monkeypatch.setenv("INGEST_MAX_PAYLOAD_BYTES", "100000")
    monkeypatch.setenv("INGEST_MAX_RECORDS_PER_PAYLOAD", "10")
    code, larger = await _redrive(capsys, "--dry-run")
    assert code == 0
    assert larger["would_succeed"] == 2
    assert {c: v["would_succeed"] for c, v in larger["by_code"].items()} == {
        "invalid_field": 0,
        "payload_too_large": 1,
        "too_many_records": 1,
    }
    assert len(await read_all(bootstrap, topics.input)) == 3, "a dry run publishes nothing"

    code, report = await _redrive(capsys, "--code", "payload_too_large", "--code", "too_many_records")
    assert (code, report["redriven"]) == (0, 2)
    await _ingest(broker, topics, max_payload_bytes=100_000, max_records_per_payload=10)
    articles = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output)]
    assert sorted(a["data"]["fn"] for a in articles) == [20, 21, 22, 23]


async def test_a_message_redriven_through_the_service_stops_at_the_redrive_limit(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-loop").create(bootstrap)
    await produce(bootstrap, topics.input, [BAD_DATE], headers=[("trace", b"t-9")])
    _use_env(monkeypatch, broker, topics)

    for round_ in range(3):
        await _ingest(broker, topics)
        code, report = await _redrive(capsys, "--partition", "0", "--from-offset", str(round_))
        assert (code, report["selected"], report["redriven"]) == (0, 1, 1), report
    await _ingest(broker, topics)

    capsys.readouterr()
    code = await asyncio.to_thread(main, ["redrive", "--from-offset", "3"])
    out = capsys.readouterr().out
    assert code == 1
    assert "redriven 0\n" in out
    assert "skipped 1: max_redrives=1" in out
    # Every round's dead letter keeps the original id: the redriven message carries its origin.
    # Dead letters at 0, 2, 4, 6 of the dead-letter topic; each round's marker after its dead letter.
    assert f"{topics.input}:0:0:0 (invalid_field, dead-letter partition 0 offset 6, redrive count 3)" in out
    assert "redrive limit reached" in out

    code, report = await _redrive(capsys, "--from-offset", "3", "--max-redrives", "4")
    assert (code, report["redriven"]) == (0, 1), "a higher limit lets it through once more"

    inputs = await read_all(bootstrap, topics.input)
    assert [r.value for r in inputs] == [BAD_DATE] * 5
    assert [dict(r.headers).get(REDRIVE_COUNT_HEADER) for r in inputs] == [None, b"1", b"2", b"3", b"4"]
    assert all(dict(r.headers)["trace"] == b"t-9" for r in inputs)
    assert {r.key for r in inputs} == {b"k0"}
    dead = await _dead_letters(bootstrap, topics.dlq)
    assert [dict(r.headers).get(REDRIVE_COUNT_HEADER) for r in dead] == [None, b"1", b"2", b"3"]


async def test_an_invalid_utf8_payload_is_redriven_byte_for_byte(broker: BrokerHandle) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-bytes").create(bootstrap)
    payload = b"\xef\xbb\xbf" + record(30).encode() + b" \xff\xfe\x80\x00 tail \xc3"
    await produce(bootstrap, topics.input, [payload])
    await _ingest(broker, topics)
    [dead] = await read_all(bootstrap, topics.dlq)
    event = orjson.loads(dead.value)
    assert event["error"]["code"] == "invalid_encoding"
    assert base64.b64decode(event["raw"]["base64"]) == payload

    env = service_env(bootstrap, topics, idempotence=broker.idempotence, INGEST_REDRIVE_KEY=REDRIVE_KEY)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "redrive", "--code", "invalid_encoding"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = proc.stdout.decode()
    assert out.startswith(f"redrive {topics.dlq} -> {topics.input}\n")
    assert "redriven 1\n" in out

    original, again = await read_all(bootstrap, topics.input)
    assert again.value == original.value == payload
    assert again.key == original.key == b"k0"

    await _ingest(broker, topics)
    first, second = (orjson.loads(r.value) for r in await _dead_letters(bootstrap, topics.dlq))
    assert second["raw"] == first["raw"]
    assert second["source"]["offset"] == 1


async def _delete_records_before(bootstrap: str, topic: str, offset: int) -> None:
    """What retention does: the partition's records before ``offset`` are gone."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=offset)})
    finally:
        await admin.close()


@pytest.mark.kafka  # Tansu has no DeleteRecords
async def test_a_truncated_dead_letter_is_read_back_from_its_input_or_skipped_and_reported(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-trunc").create(bootstrap)
    side = f"{topics.input}.side"
    await create_topics(bootstrap, {side: 1})
    await produce(bootstrap, topics.input, [b"words " * 500, NO_MARKERS])
    await _ingest(broker, topics, max_dead_letter_raw_bytes=1024)
    _use_env(monkeypatch, broker, topics)

    code, dry = await _redrive(capsys, "--dry-run")
    assert (code, dry["redriven"], dry["skipped"]) == (0, 2, {}), "the cut copy's input is on its topic"
    await _delete_records_before(bootstrap, topics.input, 1)
    code, report = await _redrive(capsys, "--to-topic", side)
    assert code == 1
    assert (report["selected"], report["redriven"], report["skipped"]) == (2, 1, {"truncated": 1})
    [skipped] = report["skipped_dead_letters"]
    assert (skipped["id"], skipped["reason"], skipped["code"]) == (
        f"{topics.input}:0:0:0",
        "truncated",
        "no_markers",
    )
    assert report["target_topic"] == side
    [rec] = await read_all(bootstrap, side)
    assert rec.value == NO_MARKERS
    assert len(await read_all(bootstrap, topics.input)) == 1


async def test_a_dead_letter_is_redriven_once_however_often_redrive_runs_and_null_stays_null(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-ids").create(bootstrap)
    large = record(40, text="long body " * 100).encode()
    await produce(bootstrap, topics.input, [large, None])
    await _ingest(broker, topics, max_payload_bytes=800)
    _use_env(monkeypatch, broker, topics)

    code, report = await _redrive(capsys, "--code", "payload_too_large")
    assert (code, report["redriven"]) == (0, 1), report
    code, report = await _redrive(capsys, "--code", "payload_too_large")
    assert (code, report["redriven"], report["already_redriven"], report["markers"]) == (0, 0, 1, 1), report
    code, report = await _redrive(capsys, "--code", "empty_payload")
    assert (code, report["redriven"]) == (0, 1), report
    inputs = await read_all(bootstrap, topics.input)
    assert [r.value for r in inputs] == [large, None, large, None], "null is redriven as null"
    assert [dict(r.headers).get(ORIGIN_HEADER) for r in inputs[2:]] == [
        f"{topics.input}:0:0:0".encode(),
        f"{topics.input}:0:1:0".encode(),
    ]
    markers = await _markers(bootstrap, topics.dlq)
    assert [(m["dead_letter"]["id"], m["dead_letter"]["offset"], m["target_topic"]) for m in markers] == [
        (f"{topics.input}:0:0:0", 0, topics.input),
        (f"{topics.input}:0:1:0", 1, topics.input),
    ]

    await _ingest(broker, topics, max_payload_bytes=100_000)
    articles = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output)]
    assert [(a["id"], a["kafkaoffset"]) for a in articles] == [(f"{topics.input}:0:0:0", 2)]
    dead = [orjson.loads(r.value) for r in await _dead_letters(bootstrap, topics.dlq)]
    null_again = [d for d in dead if d["source"]["offset"] == 3]
    assert [(d["id"], d["error"]["code"], d["raw"]["text"]) for d in null_again] == [
        (f"{topics.input}:0:1:0", "empty_payload", None)
    ]


async def test_a_dead_letter_topic_that_does_not_exist_is_a_usage_error(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = await Topics.unique("redrive-missing").create(broker.bootstrap_servers)
    _use_env(monkeypatch, broker, topics)
    missing = f"{topics.dlq}.does.not.exist"

    capsys.readouterr()
    assert await asyncio.to_thread(main, ["redrive", "--dlq-topic", missing]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"marker-ingest redrive: the dead-letter topic {missing!r} (--dlq-topic) does not exist\n"
    monkeypatch.setenv("INGEST_DLQ_TOPIC", missing)
    assert await asyncio.to_thread(main, ["redrive", "--dry-run"]) == 2
    assert capsys.readouterr().err.endswith("(INGEST_DLQ_TOPIC) does not exist\n")


@pytest.mark.kafka
async def test_in_exactly_once_only_committed_dead_letters_are_redriven(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead letter of an aborted transaction is not selected; the committed one is redriven, and the
    service (exactly-once) turns the redriven record into one more committed dead letter."""
    from aiokafka import AIOKafkaProducer

    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-eos").create(bootstrap)
    await produce(bootstrap, topics.input, [BAD_DATE])
    _use_env(monkeypatch, broker, topics, INGEST_DELIVERY="exactly-once")
    await _ingest(broker, topics, delivery="exactly-once")
    [committed_dead] = await read_all(bootstrap, topics.dlq, committed=True)
    # Another record's dead letter, in a transaction that is aborted: no read_committed reader sees it.
    ghost = orjson.loads(committed_dead.value)
    ghost["id"], ghost["source"]["offset"] = f"{topics.input}:0:99:0", 99
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topics.group}.test")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topics.dlq, orjson.dumps(ghost), key=committed_dead.key)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    assert len(await read_all(bootstrap, topics.dlq)) == 2

    code, report = await _redrive(capsys)
    assert (code, report["selected"], report["redriven"]) == (0, 1, 1), report
    await _ingest(broker, topics, delivery="exactly-once")
    assert len(await read_all(bootstrap, topics.input)) == 2
    dead = await _dead_letters(bootstrap, topics.dlq, committed=True)
    assert [dict(r.headers).get(REDRIVE_COUNT_HEADER) for r in dead] == [None, b"1"]


async def test_an_input_cannot_choose_its_event_id_only_a_redrive_can(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record with a forged ``marker-ingest-origin-id`` (another record's id, untagged or with a
    made-up tag) gets its own coordinates as its id; the copy ``redrive`` tags gets its origin's."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-forged").create(bootstrap)
    await produce(bootstrap, topics.input, [record(50).encode()])
    victim = f"{topics.input}:0:0:0"
    await produce(bootstrap, topics.input, [record(51).encode()], headers=[(ORIGIN_HEADER, victim.encode())])
    forged_tag = [(ORIGIN_HEADER, victim.encode()), (ORIGIN_TAG_HEADER, b"0" * 64)]
    await produce(bootstrap, topics.input, [record(52).encode()], headers=forged_tag)
    await produce(bootstrap, topics.input, [BAD_DATE])
    await _ingest(broker, topics)
    articles = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output)]
    assert [(a["data"]["fn"], a["id"]) for a in articles] == [
        (50, victim),
        (51, f"{topics.input}:0:1:0"),
        (52, f"{topics.input}:0:2:0"),
    ], "one id per article: no input named another's"

    _use_env(monkeypatch, broker, topics)
    code, report = await _redrive(capsys)
    assert (code, report["redriven"]) == (0, 1), report
    await _ingest(broker, topics, max_payload_bytes=100_000)
    *_, redriven = await read_all(bootstrap, topics.input)
    assert dict(redriven.headers)[ORIGIN_HEADER] == f"{topics.input}:0:3:0".encode()
    [dead, again] = [orjson.loads(r.value) for r in await _dead_letters(bootstrap, topics.dlq)]
    assert again["id"] == dead["id"] == f"{topics.input}:0:3:0", "the tagged copy keeps its origin's id"
    assert again["source"]["offset"] == 4


async def test_a_dead_letter_keeps_no_cloudevents_header_and_a_forged_count_does_no_harm(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-headers").create(bootstrap)
    headers = [
        ("content-type", b"application/cloudevents+json"),
        ("ce_specversion", b"1.0"),
        (REDRIVE_COUNT_HEADER, b"abc"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("feed", b"bbc"),
    ]
    await produce(bootstrap, topics.input, [NO_MARKERS], headers=headers)
    await _ingest(broker, topics)
    [dead] = await read_all(bootstrap, topics.dlq)
    assert list(dead.headers) == [
        ("feed", b"bbc"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        (ERROR_CODE_HEADER, b"no_markers"),
        (ORIGIN_TRACEPARENT_HEADER, b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]

    _use_env(monkeypatch, broker, topics)
    code, report = await _redrive(capsys)
    assert (code, report["redriven"], report["skipped"]) == (0, 1, {}), report
    *_, redriven = await read_all(bootstrap, topics.input)
    assert [(k, v) for k, v in redriven.headers if k in ("feed", REDRIVE_COUNT_HEADER, "content-type")] == [
        ("feed", b"bbc"),
        (REDRIVE_COUNT_HEADER, b"1"),
    ]


async def test_the_documented_payload_too_large_example_works_with_the_default_limits(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/tools.md: ``INGEST_MAX_PAYLOAD_BYTES=4000000 marker-ingest redrive --code
    payload_too_large``. Such a payload's copy is always cut (it is over 256 KiB): the payload is
    read back from the input topic."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-large").create(
        bootstrap, input_configs={"max.message.bytes": "5000000"}
    )
    big = b" ".join(record(60 + i, text="w" * 400_000).encode() for i in range(3))
    await produce(bootstrap, topics.input, [big])
    await _ingest(broker, topics)
    [dead] = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.dlq)]
    assert (dead["error"]["code"], dead["raw"]["truncated"], dead["raw"]["size_bytes"]) == (
        "payload_too_large",
        True,
        len(big),
    )

    _use_env(monkeypatch, broker, topics, INGEST_MAX_PAYLOAD_BYTES="4000000")
    code, dry = await _redrive(capsys, "--code", "payload_too_large", "--dry-run")
    assert (code, dry["would_succeed"], dry["skipped"]) == (0, 1, {}), dry
    code, report = await _redrive(capsys, "--code", "payload_too_large")
    assert (code, report["redriven"], report["skipped"]) == (0, 1, {}), report
    original, redriven = await read_all(bootstrap, topics.input)
    assert (redriven.value, redriven.key) == (big, original.key)

    await _ingest(broker, topics, max_payload_bytes=4_000_000)
    articles = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output)]
    assert [(a["id"], a["data"]["fn"]) for a in articles] == [
        (f"{topics.input}:0:0:{i}", 60 + i) for i in range(3)
    ]


@pytest.mark.kafka
async def test_in_exactly_once_running_the_same_redrive_twice_gives_one_article(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: two runs of one redrive left two article events with one id in the
    read_committed output. The first run commits a marker with its copy; the second finds it."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-eos-twice").create(bootstrap)
    large = record(70, text="long body " * 100).encode()
    await produce(bootstrap, topics.input, [large])
    _use_env(monkeypatch, broker, topics, INGEST_DELIVERY="exactly-once")
    await _ingest(broker, topics, delivery="exactly-once", max_payload_bytes=800)

    code, first = await _redrive(capsys, "--code", "payload_too_large")
    assert (code, first["redriven"]) == (0, 1), first
    code, second = await _redrive(capsys, "--code", "payload_too_large")
    assert (code, second["redriven"], second["already_redriven"]) == (0, 0, 1), second
    await _ingest(broker, topics, delivery="exactly-once", max_payload_bytes=100_000)

    articles = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output, committed=True)]
    assert [(a["id"], a["data"]["fn"]) for a in articles] == [(f"{topics.input}:0:0:0", 70)]
    assert len(await read_all(bootstrap, topics.input, committed=True)) == 2
    [marker] = await _markers(bootstrap, topics.dlq, committed=True)
    assert (marker["dead_letter"]["id"], marker["redrive_count"]) == (f"{topics.input}:0:0:0", 1)


@pytest.mark.kafka
async def test_in_exactly_once_a_redrive_fences_an_earlier_run_that_never_finished(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier run, stalled with its copy and marker in an open transaction, is fenced by the next
    run's producer before that run reads: its transaction is aborted, it can commit nothing after,
    and the next run redrives the dead letter once."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import ProducerFenced

    from service.tools.redrive_publish import redrive_transactional_id

    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-eos-zombie").create(bootstrap)
    await produce(bootstrap, topics.input, [NO_MARKERS])
    env = _use_env(monkeypatch, broker, topics, INGEST_DELIVERY="exactly-once")
    await _ingest(broker, topics, delivery="exactly-once")
    [dead] = await _dead_letters(bootstrap, topics.dlq, committed=True)

    settings = settings_for(bootstrap, topics, idempotence=True, delivery="exactly-once")
    zombie = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=redrive_transactional_id(settings),
        enable_idempotence=True,
    )
    await zombie.start()
    try:
        await zombie.begin_transaction()
        await zombie.send_and_wait(topics.input, NO_MARKERS, key=b"k0")
        marker = {"type": "io.markeringest.record.redriven.v1", "time": "2024-03-01T00:00:00.000Z"}
        marker |= {"service_version": "0", "redrive_count": 1, "target_topic": topics.input}
        marker["dead_letter"] = {
            "id": f"{topics.input}:0:0:0",
            "scope": "payload",
            "partition": 0,
            "offset": 0,
        }
        await zombie.send_and_wait(
            topics.dlq, orjson.dumps(marker), key=b"0:0", partition=0, headers=[(REDRIVEN_HEADER, b"0:0")]
        )
        assert env["INGEST_DELIVERY"] == "exactly-once"
        code, report = await _redrive(capsys)
        assert (code, report["redriven"], report["markers"]) == (0, 1, 0), report
        with pytest.raises(ProducerFenced):
            await zombie.commit_transaction()
    finally:
        await zombie.stop()

    inputs = await read_all(bootstrap, topics.input, committed=True)
    assert [dict(r.headers).get(ORIGIN_HEADER) for r in inputs] == [None, f"{topics.input}:0:0:0".encode()]
    assert len(await read_all(bootstrap, topics.input)) == 3, "the zombie's copy is there, aborted"
    [committed] = await _markers(bootstrap, topics.dlq, committed=True)
    assert committed["dead_letter"]["offset"] == dead.offset
    assert committed["service_version"] != "0"


@pytest.mark.kafka
async def test_in_exactly_once_concurrent_redrives_publish_each_dead_letter_once(
    broker: BrokerHandle,
) -> None:
    """Two runs at once: whichever way they interleave, each dead letter's input is committed once
    (a run fenced mid-way reports what it could not commit as publish_failed)."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-eos-race").create(bootstrap)
    count = 120
    await produce(bootstrap, topics.input, [record(i, date="2024-02-30").encode() for i in range(count)])
    await _ingest(broker, topics, delivery="exactly-once")
    env = service_env(
        bootstrap, topics, idempotence=True, INGEST_DELIVERY="exactly-once", INGEST_REDRIVE_KEY=REDRIVE_KEY
    )
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "redrive",
            "--json",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await asyncio.wait_for(run.communicate(), timeout=180) for run in runs]
    assert all(run.returncode in (0, 1) for run in runs), [err.decode()[-2000:] for _, err in outputs]
    assert all(out and b"Traceback" not in err for out, err in outputs), [
        err.decode()[-3000:] for _, err in outputs
    ]
    reports = [orjson.loads(out) for out, _ in outputs]
    assert sum(r["redriven"] for r in reports) == count, reports
    assert all(set(r["skipped"]) <= {"publish_failed"} for r in reports), reports

    copies = (await read_all(bootstrap, topics.input, committed=True))[count:]
    origins = sorted(dict(r.headers)[ORIGIN_HEADER].decode() for r in copies)
    assert origins == sorted(f"{topics.input}:0:{i}:0" for i in range(count)), "each once"
    markers = await _markers(bootstrap, topics.dlq, committed=True)
    assert sorted(m["dead_letter"]["offset"] for m in markers) == list(range(count))


@pytest.mark.kafka
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_a_copy_the_target_topic_would_refuse_is_skipped_alone(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], delivery: str
) -> None:
    """A copy over the target topic's max.message.bytes is skipped as too_large before anything is
    sent: sent, the broker would refuse the whole batch it was in (and aiokafka's idempotent producer
    would refuse what follows). The others are published and marked."""
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-refused").create(bootstrap)
    side = f"{topics.input}.side"
    await create_topics(bootstrap, {side: 1}, configs={"max.message.bytes": "2000"})
    wide = b"words " * 1000
    await produce(bootstrap, topics.input, [NO_MARKERS, wide, BAD_DATE, NO_MARKERS])
    _use_env(monkeypatch, broker, topics, INGEST_DELIVERY=delivery)
    await _ingest(broker, topics, delivery=delivery)

    code, report = await _redrive(capsys, "--to-topic", side)
    assert (code, report["redriven"], report["skipped"]) == (1, 3, {"too_large": 1}), report
    assert [s["id"] for s in report["skipped_dead_letters"]] == [f"{topics.input}:0:1:0"]
    copies = await read_all(bootstrap, side, committed=True)
    assert [r.value for r in copies] == [NO_MARKERS, BAD_DATE, NO_MARKERS]
    markers = await _markers(bootstrap, topics.dlq, committed=True)
    assert sorted(m["dead_letter"]["id"] for m in markers) == [
        f"{topics.input}:0:{offset}:0" for offset in (0, 2, 3)
    ]

    code, again = await _redrive(capsys, "--to-topic", side)
    assert (code, again["already_redriven"], again["redriven"], again["skipped"]) == (
        1,
        3,
        0,
        {"too_large": 1},
    ), "only the refused one is tried again"


@pytest.mark.smoke
async def test_exactly_once_redrive_on_a_broker_without_transactions_is_one_line(
    broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not broker.tansu:
        pytest.skip("Apache Kafka has transactions; this is what Tansu, which has none, gets")
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("redrive-tansu-eos").create(bootstrap)
    await produce(bootstrap, topics.input, [NO_MARKERS])
    await _ingest(broker, topics)
    _use_env(monkeypatch, broker, topics, INGEST_DELIVERY="exactly-once", KAFKA_ENABLE_IDEMPOTENCE="true")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["redrive"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = [line for line in err.splitlines() if line.startswith("marker-ingest")]
    assert line.startswith("marker-ingest redrive: the broker refused the idempotent producer")
    assert "INGEST_DELIVERY" in line
    assert len(await read_all(bootstrap, topics.input)) == 1, "nothing published"
