"""The pure part of ``marker-ingest redrive``: selection, original bytes, headers, dedup, the report."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os

import orjson
import pytest
from markertext import NOW, VERSION, record
from pydantic import SecretStr

from schemas.errors import ErrorCode
from schemas.events import DROPPED_HEADER, ORIGIN_HEADER, REDRIVE_COUNT_HEADER, RecordDeadLettered
from service.cli import main
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.core.origin import origin_of
from service.delivery.routing import Routes, redrive_count, route
from service.errors import ExitStatus
from service.tools import redrive as rd
from service.tools import redrive_plan as plan
from service.tools.redrive import parse_time
from service.tools.redrive_messages import (
    DeadLetterRecord,
    RedriveMessage,
    original_bytes,
    original_key,
    parse_dead_letter,
    redriven_headers,
)
from service.tools.redrive_plan import (
    Filters,
    SkipReason,
    plan_redrive,
    recover,
    would_succeed,
)
from service.tools.redrive_report import build_report, render_json, render_text

INPUT = "news.raw"
ERROR_HEADER = "marker-ingest-error-code"
KEY = SecretStr("the-redrive-key-of-these-tests-0123")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)


class DLQ:
    """A dead-letter topic in memory, filled by running the real core over payloads."""

    def __init__(self) -> None:
        self.records: list[DeadLetterRecord] = []
        self._next_input_offset = 0

    def add(
        self,
        payload: bytes | str | None,
        *,
        partition: int = 0,
        offset: int | None = None,
        key: bytes | None = b"file.txt",
        limits: Limits | None = None,
        headers: tuple[tuple[str, bytes], ...] = (),
        now: dt.datetime = NOW,
    ) -> list[DeadLetterRecord]:
        """Process ``payload`` as the service would and append its dead letters; return them."""
        if isinstance(payload, str):
            payload = payload.encode()
        if offset is None:
            offset = self._next_input_offset
        self._next_input_offset = offset + 1
        source = Source(INPUT, partition, offset, 1_706_100_000_000, key)
        added = []
        for outcome in process_payload(payload, source, limits or Limits(), now=now, version=VERSION):
            if outcome.error is None:
                continue
            dl_headers = (*headers, (ERROR_HEADER, outcome.error.value.encode()))
            rec = DeadLetterRecord(0, len(self.records), outcome.key, outcome.value, dl_headers)
            self.records.append(rec)
            added.append(rec)
        return added


def _event(rec: DeadLetterRecord) -> RecordDeadLettered:
    event = parse_dead_letter(rec.value)
    assert event is not None
    return event


BAD_DATE = record(fn="7", date="2024-02-30")
NO_MARKERS = "just words"
MISSING_TITLE = "F-N-S-T-A-R-T. 8 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-01 D-A-T-E-E-N-D. " + (
    "T-E-X-T-S-T-A-R-T. body T-E-X-T-E-N-D."
)


# --- original bytes, key, headers ------------------------------------------------------------------


def test_a_record_level_dead_letter_gives_back_the_records_text() -> None:
    payload = " ".join([record(fn="1"), BAD_DATE, record(fn="2")])
    [rec] = DLQ().add(payload)
    event = _event(rec)
    assert event.scope == "record"
    assert event.source.record_index == 1
    assert original_bytes(event) == BAD_DATE.encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xef\xbb\xbf" + record(fn="1").encode() + b"\xff\xfe\x80 tail",
        b"\x00\x01\x02\xfe\xff" * 50,
        b"\xc3",
    ],
    ids=["bom-then-invalid", "binary", "cut-sequence"],
)
def test_an_invalid_utf8_payload_comes_back_byte_for_byte(payload: bytes) -> None:
    [rec] = DLQ().add(payload)
    event = _event(rec)
    assert event.error.code is ErrorCode.INVALID_ENCODING
    assert event.raw.text is None
    assert original_bytes(event) == payload


def test_a_utf8_payload_level_dead_letter_keeps_its_bom_and_spacing() -> None:
    payload = "\ufeff  just words, no markers \n\n".encode()
    [rec] = DLQ().add(payload)
    assert original_bytes(_event(rec)) == payload


def test_a_truncated_raw_copy_gives_nothing() -> None:
    limits = Limits(max_dead_letter_raw_bytes=1024)
    [rec] = DLQ().add("x" * 5000, limits=limits)
    event = _event(rec)
    assert event.raw.truncated
    assert original_bytes(event) is None


def test_a_raw_copy_shorter_than_its_size_gives_nothing() -> None:
    [rec] = DLQ().add(NO_MARKERS)
    event = orjson.loads(rec.value or b"")
    event["raw"]["size_bytes"] += 1
    assert original_bytes(RecordDeadLettered.model_validate(event)) is None


def test_the_original_key_comes_from_key_base64() -> None:
    [rec] = DLQ().add(NO_MARKERS, key=b"\x00binary key")
    assert original_key(_event(rec)) == b"\x00binary key"
    [rec] = DLQ().add(NO_MARKERS, key=None)
    assert original_key(_event(rec)) is None


@pytest.mark.parametrize(
    ("headers", "count"),
    [
        ([], 0),
        ([("trace", b"t")], 0),
        ([(REDRIVE_COUNT_HEADER, b"2")], 2),
        ([(REDRIVE_COUNT_HEADER, b"1"), (REDRIVE_COUNT_HEADER, b"3")], 3),
        ([(REDRIVE_COUNT_HEADER, b"3"), (REDRIVE_COUNT_HEADER, b"abc")], 0),
        ([(REDRIVE_COUNT_HEADER, b"two")], 0),
        ([(REDRIVE_COUNT_HEADER, b"-1")], 0),
        ([(REDRIVE_COUNT_HEADER, b"")], 0),
        ([(REDRIVE_COUNT_HEADER, "٣".encode())], 0),
        ([(REDRIVE_COUNT_HEADER, b"1234567890")], 0),
        ([("Marker-Ingest-Redrive-Count", b"2")], 0),
    ],
)
def test_redrive_count_is_read_from_the_headers(headers: list[tuple[str, bytes]], count: int) -> None:
    """A malformed count is no count: it must not make a dead letter unredrivable."""
    assert redrive_count(headers) == count


def test_redriven_headers_keep_the_input_headers_and_set_the_count() -> None:
    headers = [
        ("trace", b"t-1"),
        (ERROR_HEADER, b"no_markers"),
        (REDRIVE_COUNT_HEADER, b"1"),
        ("b", b""),
        ("Marker-Ingest-Anything", b"x"),
    ]
    assert redriven_headers(headers, 2) == (("trace", b"t-1"), ("b", b""), (REDRIVE_COUNT_HEADER, b"2"))


def test_the_error_code_header_is_the_services() -> None:
    from schemas.events import ERROR_CODE_HEADER

    assert ERROR_CODE_HEADER == ERROR_HEADER


# --- selection ------------------------------------------------------------------------------------


def _ids(plan: plan.Plan) -> list[str]:
    return [d.dead_letter_id for d in plan.decisions]


@pytest.fixture
def dlq() -> DLQ:
    """Six dead letters over two input partitions and two days."""
    q = DLQ()
    day1 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    day2 = dt.datetime(2024, 3, 2, 12, tzinfo=dt.UTC)
    q.add(BAD_DATE, partition=0, offset=0, now=day1)
    q.add(NO_MARKERS, partition=0, offset=1, now=day1)
    q.add(MISSING_TITLE, partition=1, offset=0, now=day1)
    q.add(BAD_DATE, partition=1, offset=1, now=day2)
    q.add(NO_MARKERS, partition=0, offset=2, now=day2)
    q.add(MISSING_TITLE, partition=0, offset=3, now=day2)
    return q


def test_without_filters_everything_is_selected(dlq: DLQ) -> None:
    plan = plan_redrive(dlq.records, Filters())
    assert plan.read == 6
    assert len(plan.decisions) == 6
    assert all(d.skip is None and d.message is not None for d in plan.decisions)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(codes=frozenset({ErrorCode.INVALID_FIELD})), ["0:0", "1:1"]),
        (
            Filters(codes=frozenset({ErrorCode.INVALID_FIELD, ErrorCode.NO_MARKERS})),
            ["0:0", "0:1", "1:1", "0:2"],
        ),
        (Filters(since=dt.datetime(2024, 3, 2, tzinfo=dt.UTC)), ["1:1", "0:2", "0:3"]),
        (Filters(until=dt.datetime(2024, 3, 2, tzinfo=dt.UTC)), ["0:0", "0:1", "1:0"]),
        (Filters(until=dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)), []),
        (
            Filters(since=dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)),
            ["0:0", "0:1", "1:0", "1:1", "0:2", "0:3"],
        ),
        (Filters(partition=1), ["1:0", "1:1"]),
        (Filters(partition=0, from_offset=1, to_offset=2), ["0:1", "0:2"]),
        (Filters(from_offset=1), ["0:1", "1:1", "0:2", "0:3"]),
        (Filters(to_offset=0), ["0:0", "1:0"]),
        (Filters(limit=2), ["0:0", "0:1"]),
        (Filters(codes=frozenset({ErrorCode.MISSING_FIELD}), limit=1), ["1:0"]),
    ],
    ids=[
        "code",
        "codes",
        "since",
        "until",
        "until-excludes",
        "since-includes",
        "partition",
        "partition-offsets",
        "from-offset",
        "to-offset",
        "limit",
        "code-limit",
    ],
)
def test_filters_select_by_code_time_partition_offset_and_limit(
    dlq: DLQ, filters: Filters, expected: list[str]
) -> None:
    plan = plan_redrive(dlq.records, filters)
    assert [i.removeprefix(f"{INPUT}:").removesuffix(":0") for i in _ids(plan)] == expected


def test_the_limit_stops_reading(dlq: DLQ) -> None:
    plan = plan_redrive(dlq.records, Filters(partition=1, limit=1))
    assert _ids(plan) == [f"{INPUT}:1:0:0"]
    assert plan.read == 3


def test_payload_level_copies_of_one_input_are_selected_once() -> None:
    q = DLQ()
    [first] = q.add(b"\xff binary", offset=5)
    # The same input dead-lettered again (a redelivery), and a copy claiming another record index.
    q.add(b"\xff binary", offset=5)
    other_index = orjson.loads(first.value or b"")
    other_index["source"]["record_index"] = 1
    q.records.append(DeadLetterRecord(0, 2, first.key, orjson.dumps(other_index), first.headers))
    plan = plan_redrive(q.records, Filters())
    assert len(plan.decisions) == 1
    assert plan.duplicates == 2
    assert len(plan.messages) == 1


def test_record_level_dead_letters_of_one_input_publish_each_record() -> None:
    bad_fn = record(fn="x1")
    payload = " ".join([BAD_DATE, record(fn="3"), bad_fn])
    q = DLQ()
    q.add(payload, offset=4)
    q.add(payload, offset=4)  # a redelivered copy
    plan = plan_redrive(q.records, Filters())
    assert [m.value for _, m in plan.messages] == [BAD_DATE.encode(), bad_fn.encode()]
    assert plan.duplicates == 2


def test_records_that_are_not_dead_letters_are_counted_not_selected(dlq: DLQ) -> None:
    records = [
        DeadLetterRecord(0, 100, None, b"not json"),
        DeadLetterRecord(0, 101, None, None),
        *dlq.records,
    ]
    records.append(DeadLetterRecord(0, 102, None, b'{"id": "x"}'))
    plan = plan_redrive(records, Filters())
    assert plan.unreadable == [(0, 100), (0, 101), (0, 102)]
    assert len(plan.decisions) == 6


def test_a_message_carries_key_headers_and_the_next_count() -> None:
    q = DLQ()
    q.add(NO_MARKERS, key=b"k-9", headers=(("trace", b"t"), (REDRIVE_COUNT_HEADER, b"1")))
    [(decision, msg)] = plan_redrive(q.records, Filters()).messages
    assert decision.redrive_count == 1
    assert msg.key == b"k-9"
    assert msg.value == NO_MARKERS.encode()
    assert msg.headers == (
        ("trace", b"t"),
        (ORIGIN_HEADER, decision.dead_letter_id.encode()),
        (REDRIVE_COUNT_HEADER, b"2"),
    )


@pytest.mark.parametrize(
    ("count", "max_redrives", "skip"),
    [
        (b"2", 3, None),
        (b"3", 3, SkipReason.MAX_REDRIVES),
        (b"7", 3, SkipReason.MAX_REDRIVES),
        (b"0", 1, None),
    ],
)
def test_a_dead_letter_at_the_redrive_limit_is_skipped(
    count: bytes, max_redrives: int, skip: SkipReason
) -> None:
    q = DLQ()
    q.add(NO_MARKERS, headers=((REDRIVE_COUNT_HEADER, count),))
    [decision] = plan_redrive(q.records, Filters(), max_redrives=max_redrives).decisions
    assert decision.skip is skip
    assert (decision.message is None) == (skip is not None)


def test_a_truncated_dead_letter_is_skipped_and_a_malformed_count_counts_as_none() -> None:
    """A dead letter written before the service dropped malformed counts still carries one (the
    issue's forged ``abc``): it is redriven as a first redrive, not skipped."""
    q = DLQ()
    q.add("y" * 3000, limits=Limits(max_dead_letter_raw_bytes=1024))
    q.add(NO_MARKERS, headers=((REDRIVE_COUNT_HEADER, b"abc"),))
    plan = plan_redrive(q.records, Filters())
    recover(plan, {})
    assert [(d.skip, d.redrive_count) for d in plan.decisions] == [(SkipReason.TRUNCATED, 0), (None, 0)]
    [(_, msg)] = plan.messages
    assert dict(msg.headers)[REDRIVE_COUNT_HEADER] == b"1"


# --- dry run --------------------------------------------------------------------------------------


def test_would_succeed_uses_the_limits_it_is_given() -> None:
    small = Limits(max_payload_bytes=500, max_records_per_payload=2)
    q = DLQ()
    q.add(record(fn="1", text="x" * 600), limits=small)
    q.add(" ".join(record(fn=str(i)) for i in range(3)), limits=small)
    q.add(BAD_DATE, limits=small)
    plan = plan_redrive(q.records, Filters())
    assert [d.code for d in plan.decisions] == [
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.TOO_MANY_RECORDS,
        ErrorCode.INVALID_FIELD,
    ]
    for limits, expected in [(small, [False, False, False]), (Limits(), [True, True, False])]:
        assert [would_succeed(m, limits, topic=INPUT, now=NOW) for _, m in plan.messages] == expected


# --- the report -----------------------------------------------------------------------------------


def _mixed_plan() -> plan.Plan:
    q = DLQ()
    q.add(BAD_DATE)
    q.add(NO_MARKERS)
    q.add(NO_MARKERS, offset=1)  # a duplicate
    q.add("z" * 3000, limits=Limits(max_dead_letter_raw_bytes=1024))
    q.add(MISSING_TITLE, headers=((REDRIVE_COUNT_HEADER, b"3"),))
    return plan_redrive(q.records, Filters())


def test_the_report_counts_by_code_and_by_skip_reason() -> None:
    plan = _mixed_plan()
    failed = [f"{INPUT}:0:1:0"]
    report = build_report(plan, dlq_topic="dlq", target_topic=INPUT, dry_run=False, failed=failed)
    assert (report.read, report.selected, report.duplicates, report.redriven) == (5, 4, 1, 1)
    assert report.skipped == {"max_redrives": 1, "publish_failed": 1, "truncated": 1}
    assert report.would_succeed is None
    assert {code: (c.selected, c.redriven, c.skipped) for code, c in report.by_code.items()} == {
        "invalid_field": (1, 1, 0),
        "missing_field": (1, 0, 1),
        "no_markers": (2, 0, 2),
    }
    assert [(s["id"], s["reason"]) for s in report.skipped_dead_letters] == [
        (f"{INPUT}:0:1:0", "publish_failed"),
        (f"{INPUT}:0:2:0", "truncated"),
        (f"{INPUT}:0:3:0", "max_redrives"),
    ]
    assert report.exit_status == 1


def test_a_clean_redrive_exits_0() -> None:
    q = DLQ()
    q.add(BAD_DATE)
    report = build_report(plan_redrive(q.records, Filters()), dlq_topic="d", target_topic="i", dry_run=False)
    assert report.exit_status == 0
    assert report.skipped == {}


def test_the_dry_run_report_counts_what_would_succeed() -> None:
    plan = _mixed_plan()
    report = build_report(
        plan, dlq_topic="dlq", target_topic=INPUT, dry_run=True, succeeding=[f"{INPUT}:0:1:0"]
    )
    assert report.would_succeed == 1
    assert report.redriven == 2
    assert report.by_code["no_markers"].would_succeed == 1
    assert report.by_code["invalid_field"].would_succeed == 0
    data = report.as_dict()
    assert data["dry_run"] is True
    assert data["by_code"]["no_markers"] == {"selected": 2, "redriven": 1, "would_succeed": 1, "skipped": 1}


def test_render_json_is_one_object_with_every_count() -> None:
    report = build_report(_mixed_plan(), dlq_topic="dlq", target_topic=INPUT, dry_run=False)
    out = render_json(report)
    assert out.endswith("\n")
    assert out.count("\n") == 1
    data = orjson.loads(out)
    assert data["selected"] == 4
    assert data["skipped"] == {"max_redrives": 1, "truncated": 1}
    assert data["exit_status"] == 1
    assert data["by_code"]["invalid_field"]["would_succeed"] is None


def test_render_text_says_what_was_done_and_what_was_skipped() -> None:
    report = build_report(_mixed_plan(), dlq_topic="dlq", target_topic=INPUT, dry_run=False)
    text = render_text(report)
    assert text.startswith(f"redrive dlq -> {INPUT}\n")
    assert "read 5 record(s), selected 4 dead letter(s) (1 duplicate(s) of selected ones)" in text
    assert "redriven 2\n" in text
    assert "skipped 2: max_redrives=1, truncated=1" in text
    assert f"{INPUT}:0:2:0 (no_markers, dead-letter partition 0 offset 3, redrive count 0): truncated" in text
    assert "redrive limit reached" in text
    dry = render_text(build_report(_mixed_plan(), dlq_topic="dlq", target_topic=INPUT, dry_run=True))
    assert "(dry run: nothing published)" in dry
    assert "would redrive 2; 0 would now succeed" in dry


def test_render_text_caps_the_list_of_skipped_dead_letters() -> None:
    q = DLQ()
    for _ in range(25):
        q.add(NO_MARKERS, headers=((REDRIVE_COUNT_HEADER, b"9"),))
    text = render_text(
        build_report(plan_redrive(q.records, Filters()), dlq_topic="d", target_topic="i", dry_run=False)
    )
    assert "... and 5 more (see --json)" in text


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T12:00:00Z", dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)),
        ("2024-03-01T14:00:00+02:00", dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)),
        ("2024-03-01T12:00", dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)),
        ("2024-03-01", dt.datetime(2024, 3, 1, tzinfo=dt.UTC)),
    ],
)
def test_times_are_iso_8601_and_utc_without_a_zone(text: str, expected: dt.datetime) -> None:
    assert parse_time(text) == expected


def test_a_bad_time_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
        parse_time("yesterday")


@pytest.mark.parametrize(
    "argv",
    [
        ["redrive", "--code", "no_such_code"],
        ["redrive", "--since", "yesterday"],
        ["redrive", "--partition", "-1"],
        ["redrive", "--limit", "0"],
        ["redrive", "--max-redrives", "0"],
        ["redrive", "--from-offset", "x"],
    ],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == ExitStatus.USAGE
    assert "marker-ingest redrive: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2024-03-02", "--until", "2024-03-01"], "--since must be before --until"),
        (["--from-offset", "5", "--to-offset", "4"], "--from-offset must not be after --to-offset"),
        (["--to-topic", "news.dead-letters"], "--to-topic must not be"),
        (["--to-topic", "news.articles"], "--to-topic must not be"),
    ],
)
def test_inconsistent_options_exit_2_before_any_connection(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["redrive", "--bootstrap-servers", "127.0.0.1:1", *argv]) == ExitStatus.USAGE
    assert message in capsys.readouterr().err


def test_invalid_settings_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert main(["redrive", "--dry-run"]) == ExitStatus.USAGE
    assert "KAFKA_SASL_MECHANISM" in capsys.readouterr().err


def test_codes_are_read_into_filters() -> None:
    from service.cli import make_parser

    args = make_parser().parse_args(
        ["redrive", "--code", "no_markers", "--code", "invalid_field", "--partition", "2", "--limit", "5"]
    )
    options = rd.options_from(args)
    assert isinstance(options, rd.RedriveOptions)
    assert options.filters.codes == {ErrorCode.NO_MARKERS, ErrorCode.INVALID_FIELD}
    assert options.filters.partition == 2
    assert options.filters.limit == 5
    assert options.max_redrives == plan.DEFAULT_MAX_REDRIVES
    assert not options.dry_run


def test_key_base64_of_an_empty_key() -> None:
    q = DLQ()
    [rec] = q.add(NO_MARKERS, key=b"")
    assert _event(rec).source.key_base64 == base64.b64encode(b"").decode()
    assert original_key(_event(rec)) == b""


def test_a_key_too_long_to_copy_into_the_dead_letter_is_taken_from_its_kafka_key() -> None:
    import datetime as dt

    from service.core.events import Source, process_payload

    key = b"k" * 5000
    [outcome] = process_payload(
        b"no markers here",
        Source("news.raw", 0, 7, key=key),
        Limits(),
        now=dt.datetime.now(dt.UTC),
        version="t",
    )
    assert parse_dead_letter(outcome.value).source.key_base64 is None  # type: ignore[union-attr]
    record = DeadLetterRecord(0, 0, outcome.key, outcome.value)
    [(_, message)] = plan.plan_redrive([record], plan.Filters()).messages
    assert message.key == key
    assert message.value == b"no markers here"


# --- redriving twice, what the bytes mean, null values ---------------------------------------------


def _service_dead_letters(q: DLQ, msg: RedriveMessage, *, offset: int) -> list[DeadLetterRecord]:
    """What the service dead-letters when it reads the redriven ``msg`` at ``offset``, added to ``q``."""
    source = Source(INPUT, 0, offset, 1_706_100_000_000, msg.key, origin_of(msg.headers, msg.value, KEY))
    added = []
    for outcome in process_payload(msg.value, source, Limits(), now=NOW, version=VERSION):
        if outcome.error is None:
            continue
        dest = route(outcome, msg.headers, Routes("out", "dlq", Limits().max_event_bytes))
        rec = DeadLetterRecord(0, len(q.records), dest.key, dest.value, tuple(dest.headers))
        q.records.append(rec)
        added.append(rec)
    return added


def test_a_dead_letter_redriven_twice_gives_events_with_the_original_id() -> None:
    q = DLQ()
    [original] = q.add("oops " + record(fn="9"), offset=15071)
    [(first, msg1)] = plan_redrive(q.records, Filters(), key=KEY).messages
    assert first.dead_letter_id == f"{INPUT}:0:15071:0"
    assert dict(msg1.headers)[ORIGIN_HEADER] == f"{INPUT}:0:15071:0".encode()
    # The service reads it again at 15073 and dead-letters it again (nothing was fixed).
    [again] = _service_dead_letters(q, msg1, offset=15073)
    assert _event(again).id == _event(original).id == f"{INPUT}:0:15071:0"
    assert _event(again).source.offset == 15073

    plan = plan_redrive(q.records, Filters(codes=frozenset({ErrorCode.STRAY_TEXT})), key=KEY)
    assert plan.duplicates == 1, "the first redrive's own dead letter is a copy of the original"
    [(second, msg2)] = plan.messages
    assert (second.redrive_count, second.dlq_offset) == (1, again.offset), "the most redriven copy"
    assert dict(msg2.headers)[ORIGIN_HEADER] == dict(msg1.headers)[ORIGIN_HEADER]
    assert dict(msg2.headers)[REDRIVE_COUNT_HEADER] == b"2"

    # Once fixed (here: read as an article), both redriven copies give one id, which dedup catches.
    for msg, offset in ((msg1, 15073), (msg2, 15075)):
        fixed = msg.value.replace(b"oops ", b"") if msg.value else b""
        source = Source(INPUT, 0, offset, None, msg.key, origin_of(msg.headers, msg.value, KEY))
        [article] = process_payload(fixed, source, Limits(), now=NOW, version=VERSION)
        assert article.is_article
        assert article.event_id == f"{INPUT}:0:15071:0"


def test_the_copy_with_the_highest_redrive_count_is_the_one_redriven() -> None:
    q = DLQ()
    q.add(NO_MARKERS, offset=3, headers=((REDRIVE_COUNT_HEADER, b"2"),))
    q.add(NO_MARKERS, offset=3)  # an older copy read after it (another dead-letter partition)
    [decision] = plan_redrive(q.records, Filters(), max_redrives=3).decisions
    assert decision.redrive_count == 2
    q.add(NO_MARKERS, offset=3, headers=((REDRIVE_COUNT_HEADER, b"3"),))
    [decision] = plan_redrive(q.records, Filters(), max_redrives=3).decisions
    assert decision.skip is SkipReason.MAX_REDRIVES, "an older copy must not reset the count"


def test_a_record_starting_with_u_feff_is_redriven_so_that_it_keeps_its_verdict() -> None:
    payload = "\ufeff\ufeff" + record(fn="5")  # a byte-order mark, then U+FEFF as text: stray_text at 0
    [rec] = DLQ().add(payload)
    event = _event(rec)
    assert (event.scope, event.error.code, event.error.position) == ("record", ErrorCode.STRAY_TEXT, 0)
    [(_, msg)] = plan_redrive([rec], Filters()).messages
    assert msg.value is not None
    [again] = process_payload(msg.value, Source(INPUT, 0, 9), Limits(), now=NOW, version=VERSION)
    assert (again.error, orjson.loads(again.value)["error"]["position"]) == (ErrorCode.STRAY_TEXT, 0)
    assert not would_succeed(msg, Limits(), topic=INPUT, now=NOW)
    assert orjson.loads(again.value)["raw"]["text"] == event.raw.text


def test_a_null_value_is_redriven_as_null_and_an_empty_one_as_empty() -> None:
    q = DLQ()
    q.add(None, key=b"tombstone")
    q.add(b"", key=b"empty")
    null, empty = (m for _, m in plan_redrive(q.records, Filters()).messages)
    assert (null.key, null.value) == (b"tombstone", None)
    assert (empty.key, empty.value) == (b"empty", b"")
    assert not would_succeed(null, Limits(), topic=INPUT, now=NOW)


def test_a_dead_letter_whose_input_key_or_headers_were_dropped_is_not_redriven() -> None:
    q = DLQ()
    [rec] = q.add(NO_MARKERS)
    q.records[0] = DeadLetterRecord(0, 0, None, rec.value, (*rec.headers, (DROPPED_HEADER, b"key")))
    plan = plan_redrive(q.records, Filters())
    assert plan.inputs_wanted == {(INPUT, 0, 0)}, "unless its input can be read back"
    recover(plan, {})
    [decision] = plan.decisions
    assert decision.skip is SkipReason.TRUNCATED


def test_redriven_headers_replace_the_services_own_headers() -> None:
    headers = [
        ("t", b"1"),
        (ORIGIN_HEADER, b"old:0:0:0"),
        (DROPPED_HEADER, b"key"),
        (REDRIVE_COUNT_HEADER, b"1"),
    ]
    assert redriven_headers(headers, 2, "news.raw:0:5:1") == (
        ("t", b"1"),
        (ORIGIN_HEADER, b"news.raw:0:5:1"),
        (REDRIVE_COUNT_HEADER, b"2"),
    )
