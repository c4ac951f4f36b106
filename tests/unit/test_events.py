"""The events the core writes: envelopes, ids, keys, times, raw copies, and the published models."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re

import orjson
import pytest
from markertext import (
    NOW,
    NOW_RFC3339,
    SOURCE,
    TIMESTAMP_MS,
    TIMESTAMP_RFC3339,
    VERSION,
    decode,
    doc_section,
    end,
    fenced_blocks,
    fld,
    only,
    record,
    run,
    start,
)
from pydantic import SecretStr

from schemas.events import (
    ARTICLE_DATASCHEMA,
    ARTICLE_EVENT_TYPE,
    DEAD_LETTER_EVENT_TYPE,
    ORIGIN_HEADER,
    ORIGIN_TAG_HEADER,
    ArticleIngested,
    RecordDeadLettered,
)
from service.core.dead_letters import fit_dead_letter
from service.core.events import Source
from service.core.limits import Limits
from service.core.message import rfc3339
from service.core.origin import Origin, origin_of, origin_tag


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


# --- the article event ----------------------------------------------------------------------------


def test_article_event_envelope_exactly() -> None:
    outcomes = run(record(fn="2433", title="T  t", text="Body.", source="BBC"))
    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert outcome.is_article
    assert outcome.key == b"2433"
    assert outcome.event_id == "news.raw:3:42:0"
    assert decode(outcome) == {
        "specversion": "1.0",
        "id": "news.raw:3:42:0",
        "source": "urn:marker-ingest:topic:news.raw",
        "type": ARTICLE_EVENT_TYPE,
        "subject": "2433",
        "time": TIMESTAMP_RFC3339,
        "datacontenttype": "application/json",
        "dataschema": ARTICLE_DATASCHEMA,
        "kafkatopic": "news.raw",
        "kafkapartition": 3,
        "kafkaoffset": 42,
        "recordindex": 0,
        "data": {
            "fn": 2433,
            "date": "2024-01-24",
            "title": "T  t",
            "text": "Body.",
            "extra": {"source": "BBC"},
            "sha256": _digest("2433", "2024-01-24", "T  t", "Body.", "source=BBC"),
        },
    }
    assert ARTICLE_EVENT_TYPE == "io.markeringest.article.ingested.v1"
    assert ARTICLE_DATASCHEMA == "urn:marker-ingest:schema:article-ingested:v1"


def test_article_subject_and_key_are_the_normalized_fn() -> None:
    outcome = run(record(fn="007"))[0]
    assert outcome.key == b"7"
    assert outcome.fn == 7
    assert decode(outcome)["subject"] == "7"


@pytest.mark.parametrize(
    ("timestamp_ms", "expected"),
    [
        (None, NOW_RFC3339),
        (-1, NOW_RFC3339),  # Kafka's "no timestamp"
        (0, "1970-01-01T00:00:00.000Z"),
        (1_706_100_000_123, "2024-01-24T12:40:00.123Z"),
    ],
)
def test_event_time_is_the_message_timestamp_else_now(timestamp_ms: int | None, expected: str) -> None:
    source = Source("news.raw", 0, 1, timestamp_ms=timestamp_ms)
    assert decode(run(record(), source=source)[0])["time"] == expected


def test_the_latest_representable_timestamp_is_used_as_is() -> None:
    source = Source("news.raw", 0, 1, timestamp_ms=253_402_300_799_999)
    assert decode(run(record(), source=source)[0])["time"] == "9999-12-31T23:59:59.999Z"


@pytest.mark.parametrize("payload", [record(), "no markers"])
def test_a_timestamp_past_year_9999_does_not_make_the_core_raise(payload: str) -> None:
    # Kafka timestamps are any int64 the producer chose (CreateTime); the core must not raise on them.
    source = Source("news.raw", 0, 1, timestamp_ms=253_402_300_800_000)
    outcomes = run(payload, source=source)
    assert len(outcomes) == 1
    if outcomes[0].is_article:
        ArticleIngested.model_validate_json(outcomes[0].value)
    else:
        RecordDeadLettered.model_validate_json(outcomes[0].value)


def test_rfc3339_converts_to_utc_with_milliseconds() -> None:
    moment = dt.datetime(2024, 1, 24, 14, 40, 0, 999999, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(moment) == "2024-01-24T12:40:00.999Z"


# --- the dead-letter event ------------------------------------------------------------------------


def test_record_dead_letter_envelope_exactly() -> None:
    bad = " ".join([fld("fn", "5"), fld("date", "2024-01-24"), fld("text", "B")])
    payload = record(fn="4") + "\n" + bad + "\n"
    outcomes = run(payload)
    assert [o.error for o in outcomes] == [None, "missing_field"]
    dead = outcomes[1]
    assert dead.key == b"key-1"
    assert dead.event_id == "news.raw:3:42:1"
    assert dead.fn is None
    assert decode(dead) == {
        "id": "news.raw:3:42:1",
        "type": DEAD_LETTER_EVENT_TYPE,
        "scope": "record",
        "time": NOW_RFC3339,
        "service_version": VERSION,
        "source": {
            "topic": "news.raw",
            "partition": 3,
            "offset": 42,
            "record_index": 1,
            "key_base64": base64.b64encode(b"key-1").decode(),
            "timestamp": TIMESTAMP_RFC3339,
        },
        "error": {
            "code": "missing_field",
            "message": "required field 'title' is missing",
            "field": "title",
            "position": None,
        },
        "raw": {"text": bad, "base64": None, "truncated": False, "size_bytes": len(bad.encode())},
    }
    assert DEAD_LETTER_EVENT_TYPE == "io.markeringest.record.deadlettered.v1"


def test_payload_dead_letter_envelope_exactly() -> None:
    payload = b"\x00\x01 not UTF-8 \xfe"
    source = Source("in", 0, 7, timestamp_ms=-1, key=b"\xff\x00")
    outcomes = run(payload, source=source)
    assert len(outcomes) == 1
    assert outcomes[0].key == b"\xff\x00"
    event = decode(outcomes[0])
    assert event["error"]["message"]  # wording may change; the rest is exact
    event["error"]["message"] = "..."
    assert event == {
        "id": "in:0:7:0",
        "type": DEAD_LETTER_EVENT_TYPE,
        "scope": "payload",
        "time": NOW_RFC3339,
        "service_version": VERSION,
        "source": {
            "topic": "in",
            "partition": 0,
            "offset": 7,
            "record_index": 0,
            "key_base64": "/wA=",
            "timestamp": None,
        },
        "error": {
            "code": "invalid_encoding",
            "message": "...",
            "field": None,
            "position": payload.index(b"\xfe"),
        },
        "raw": {
            "text": None,
            "base64": base64.b64encode(payload).decode(),
            "truncated": False,
            "size_bytes": len(payload),
        },
    }


def test_dead_letter_without_a_key() -> None:
    outcome = run("no markers", source=Source("t", 1, 2))[0]
    assert outcome.key is None
    event = decode(outcome)
    assert event["source"]["key_base64"] is None
    assert event["source"]["timestamp"] is None
    assert event["time"] == NOW_RFC3339


# --- ids ------------------------------------------------------------------------------------------


def test_ids_are_topic_partition_offset_record_index() -> None:
    payload = " ".join([record(fn="1"), record(fn="x"), record(fn="3")])
    outcomes = run(payload, source=Source("feed.a", 11, 123456789))
    assert [o.event_id for o in outcomes] == [
        "feed.a:11:123456789:0",
        "feed.a:11:123456789:1",
        "feed.a:11:123456789:2",
    ]
    assert [decode(o)["id"] for o in outcomes] == [o.event_id for o in outcomes]
    assert [o.record_index for o in outcomes] == [0, 1, 2]
    assert decode(outcomes[1])["source"]["record_index"] == 1
    assert decode(outcomes[2])["recordindex"] == 2


def test_a_payload_failure_has_record_index_zero() -> None:
    outcomes = run(b"", source=Source("feed.a", 2, 9))
    assert [(o.record_index, o.event_id) for o in outcomes] == [(0, "feed.a:2:9:0")]


def test_source_event_id() -> None:
    assert Source("a.b-c", 0, 0).event_id(17) == "a.b-c:0:0:17"


def test_processing_is_deterministic() -> None:
    payload = " ".join([record(fn="1"), "junk", record(fn="2")])
    first, second = run(payload), run(payload)
    assert first == second


def test_a_redelivered_message_yields_identical_article_events() -> None:
    # Same coordinates and timestamp, processed at another moment: article bytes do not change.
    payload = record(fn="1") + " " + record(fn="2")
    later = NOW + dt.timedelta(days=3)
    assert [o.value for o in run(payload)] == [o.value for o in run(payload, now=later)]


def test_dead_letter_ids_do_not_depend_on_the_clock() -> None:
    later = NOW + dt.timedelta(hours=1)
    a, b = run("junk " + record()), run("junk " + record(), now=later)
    assert a[0].event_id == b[0].event_id
    assert decode(a[0])["time"] != decode(b[0])["time"]


# --- raw copies -----------------------------------------------------------------------------------


def test_record_raw_copy_is_the_trimmed_record_text() -> None:
    middle = " ".join([fld("fn", "2"), "oops", fld("date", "2024-01-24")])
    payload = f"{record(fn='1')}\n\n  {middle}  \n\t{record(fn='3')}"
    raw = decode(run(payload)[1])["raw"]
    assert raw == {"text": middle, "base64": None, "truncated": False, "size_bytes": len(middle.encode())}


def test_payload_raw_copy_is_the_whole_message() -> None:
    payload = "  \ufeffno markers here, only wörds \n"
    raw = decode(run(b"\xef\xbb\xbf" + payload.encode())[0])["raw"]
    assert raw["text"] == "\ufeff" + payload
    assert raw["base64"] is None
    assert raw["truncated"] is False
    assert raw["size_bytes"] == 3 + len(payload.encode())


def test_a_null_value_has_neither_text_nor_base64_so_it_is_not_taken_for_an_empty_one() -> None:
    raw = decode(run(None)[0])["raw"]
    assert raw == {"text": None, "base64": None, "truncated": False, "size_bytes": 0}
    empty = decode(run(b"")[0])["raw"]
    assert empty == {"text": "", "base64": None, "truncated": False, "size_bytes": 0}


def test_raw_copy_is_cut_at_the_limit() -> None:
    payload = "no markers " + "x" * 100
    raw = only(payload, Limits(max_dead_letter_raw_bytes=20))["raw"]
    assert raw == {"text": payload[:20], "base64": None, "truncated": True, "size_bytes": 111}


def test_raw_copy_exactly_at_the_limit_is_not_truncated() -> None:
    payload = "w" * 20
    raw = only(payload, Limits(max_dead_letter_raw_bytes=20))["raw"]
    assert raw == {"text": payload, "base64": None, "truncated": False, "size_bytes": 20}


@pytest.mark.parametrize(
    ("char", "limit", "kept"), [("é", 21, 10), ("€", 20, 6), ("🙂", 23, 5), ("🙂", 24, 6)]
)
def test_raw_text_cut_inside_a_character_keeps_whole_characters(char: str, limit: int, kept: int) -> None:
    payload = char * 30
    raw = only(payload, Limits(max_dead_letter_raw_bytes=limit))["raw"]
    assert raw == {
        "text": char * kept,
        "base64": None,
        "truncated": True,
        "size_bytes": len(payload.encode()),
    }


def test_record_raw_copy_is_cut_at_the_limit() -> None:
    bad = record(fn="x", text="ü" * 100)
    raw = decode(run(bad, Limits(max_dead_letter_raw_bytes=50))[0])["raw"]
    assert raw == {"text": bad[:50], "base64": None, "truncated": True, "size_bytes": len(bad.encode())}


def test_invalid_encoding_raw_copy_is_base64_and_cut_at_the_limit() -> None:
    payload = b"\xff" + bytes(range(256)) * 2
    raw = only(payload, Limits(max_dead_letter_raw_bytes=100))["raw"]
    assert raw == {
        "text": None,
        "base64": base64.b64encode(payload[:100]).decode(),
        "truncated": True,
        "size_bytes": len(payload),
    }


def test_invalid_encoding_raw_copy_is_base64_even_when_the_kept_part_is_valid_text() -> None:
    payload = b"a" * 50 + b"\xff"
    raw = only(payload, Limits(max_dead_letter_raw_bytes=10))["raw"]
    assert raw == {
        "text": None,
        "base64": base64.b64encode(b"a" * 10).decode(),
        "truncated": True,
        "size_bytes": 51,
    }


def test_a_too_large_payload_that_is_not_utf8_is_copied_as_base64() -> None:
    payload = b"ab\xffcd" + b"x" * 50
    raw = only(payload, Limits(max_payload_bytes=20, max_dead_letter_raw_bytes=30))["raw"]
    assert raw == {
        "text": None,
        "base64": base64.b64encode(payload[:30]).decode(),
        "truncated": True,
        "size_bytes": len(payload),
    }


def test_a_too_large_utf8_payload_is_copied_as_text() -> None:
    payload = ("F-N-S-T-A-R-T. " + "ö" * 40).encode()
    raw = only(payload, Limits(max_payload_bytes=20, max_dead_letter_raw_bytes=30))["raw"]
    assert raw == {"text": "F-N-S-T-A-R-T. " + "ö" * 7, "base64": None, "truncated": True, "size_bytes": 95}


def test_a_too_large_payload_with_an_invalid_byte_just_before_the_cut_is_copied_as_base64() -> None:
    payload = b"abcdefg\xff" + b"x" * 30  # 0xFF is never valid UTF-8; it is not a cut character
    raw = only(payload, Limits(max_payload_bytes=20, max_dead_letter_raw_bytes=8))["raw"]
    assert raw == {
        "text": None,
        "base64": base64.b64encode(payload[:8]).decode(),
        "truncated": True,
        "size_bytes": len(payload),
    }


# --- the published models -------------------------------------------------------------------------

PAYLOADS: dict[str, bytes | None] = {
    "seed-like": record(fn="2433", source="BBC", url="https://x").encode(),
    "multi": (" ".join([record(fn="1"), "stray", record(fn="2"), record(fn="bad")])).encode(),
    "every record error": (
        " ".join(
            [
                record(fn="1") + " " + end("date"),
                fld("fn", "2") + " " + start("date"),
                fld("fn", "3") + " " + fld("date", "2024-01-01") * 2,
                fld("fn", "4"),
                record(fn="5", date="2024-02-30"),
                record(fn="6", title=""),
            ]
        )
    ).encode(),
    "bom": b"\xef\xbb\xbf" + record().encode(),
    "null": None,
    "empty": b"",
    "not utf-8": b"\xc3\x28",
    "no markers": "plain wörds".encode(),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_event_validates_against_its_published_model(name: str) -> None:
    sources = [SOURCE, Source("t", 0, 0), Source("t", 0, 0, timestamp_ms=-1, key=b"")]
    for source in sources:
        for outcome in run(PAYLOADS[name], source=source):
            if outcome.is_article:
                article = ArticleIngested.model_validate_json(outcome.value)
                assert article.id == outcome.event_id
                assert article.recordindex == outcome.record_index
                assert article.data.fn == outcome.fn
                assert article.subject == str(outcome.fn)
            else:
                dead = RecordDeadLettered.model_validate_json(outcome.value)
                assert dead.id == outcome.event_id
                assert dead.error.code == outcome.error
                assert dead.source.record_index == outcome.record_index
                assert dead.scope == ("payload" if dead.error.code.payload_level else "record")
                assert dead.time == NOW


def test_the_multi_record_payload_mixes_articles_and_dead_letters() -> None:
    kinds = [o.is_article for o in run(PAYLOADS["multi"])]
    assert kinds == [False, True, False]
    codes = [o.error for o in run(PAYLOADS["every record error"])]
    assert codes == [
        "unmatched_end",
        "unterminated_field",
        "duplicate_field",
        "missing_field",
        "invalid_field",
        "invalid_field",
    ]


def test_the_seed_article_validates_and_round_trips_through_the_model() -> None:
    from markertext import FIXTURES

    outcome = run((FIXTURES / "seed_2433.txt").read_bytes())[0]
    article = ArticleIngested.model_validate_json(outcome.value)
    assert article.data.fn == 2433
    assert article.data.date == dt.date(2024, 1, 24)
    assert article.time == dt.datetime(2024, 1, 24, 12, 40, tzinfo=dt.UTC)
    dumped, written = article.model_dump(mode="json"), decode(outcome)
    assert dumped.pop("time") == "2024-01-24T12:40:00Z"
    assert written.pop("time") == "2024-01-24T12:40:00.000Z"
    assert dumped == written


# --- the examples of docs/format.md ---------------------------------------------------------------


def test_the_format_doc_event_examples_are_what_the_core_writes() -> None:
    blocks = fenced_blocks(doc_section("## Events"))
    assert [info for info, _ in blocks] == ["text", "json", "json"]
    payload = blocks[0][1] + "\n"
    source = Source("news.raw", 3, 1042, timestamp_ms=1_706_100_000_000, key=b"feed-7")
    now = dt.datetime(2024, 1, 24, 12, 40, 1, 250000, tzinfo=dt.UTC)
    outcomes = run(payload, source=source, now=now)
    assert len(outcomes) == 2
    article, dead = (decode(o) for o in outcomes)
    assert article == json.loads(blocks[1][1])
    assert outcomes[0].key == b"7"
    documented = json.loads(blocks[2][1])
    documented["error"].pop("message")
    dead["error"].pop("message")
    assert {**dead, "service_version": "0.1.0"} == documented
    assert outcomes[1].key == b"feed-7"


def test_the_format_doc_digest_example() -> None:
    section = doc_section("## The content digest")
    assert "e0c581973f349670cdfd1d96dfedd84c1ce517c65a92d737470e23b4a338d028" in section
    example = re.search(r"digests `([^`]+)`", section)
    assert example is not None
    parts = example.group(1).split("␟")
    assert _digest(*parts) == "2fd3e382d87d3176031836ee0df2a38d9d932ec5ff0d4b4c9c9cb9d031bc9edb"
    assert "2fd3e382d87d3176031836ee0df2a38d9d932ec5ff0d4b4c9c9cb9d031bc9edb" in doc_section("## Events")


# --- redriven messages keep their records' ids ----------------------------------------------------


REDRIVE_KEY = SecretStr("a-redrive-key-of-at-least-32-chars")


def _tagged(*origins: bytes, value: bytes | None = b"payload") -> list[tuple[str, bytes]]:
    """Each origin header with the tag redrive makes for it and ``value``, in that order."""
    headers = []
    for origin in origins:
        tag = origin_tag(REDRIVE_KEY, origin.decode(errors="replace"), value)
        headers += [(ORIGIN_HEADER, origin), (ORIGIN_TAG_HEADER, tag.encode())]
    return headers


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        (_tagged(b"t3.raw:0:15071:2"), Origin("t3.raw:0:15071", 2)),
        (_tagged(b"a:1:2:3", b"news.raw:07:8:0"), Origin("news.raw:7:8", 0)),
        ([("trace", b"t3.raw:0:1:0")], None),
        (_tagged(b"t3.raw:0:15071"), None),
        (_tagged(b"t3 raw:0:1:0"), None),
        (_tagged(b"t:0:-1:0"), None),
        (_tagged("t:0:1:٣".encode()), None),
        (_tagged(b""), None),
    ],
)
def test_the_origin_is_read_from_its_header(headers: list[tuple[str, bytes]], origin: Origin | None) -> None:
    assert origin_of(headers, b"payload", REDRIVE_KEY) == origin


def test_a_redriven_message_gives_its_records_the_ids_that_follow_its_origin() -> None:
    payload = " ".join([record(fn="1"), record(fn="2", date="2024-02-30")])
    redriven = Source("t3.raw", 0, 15073, TIMESTAMP_MS, b"k", origin=Origin("t3.raw:0:15071", 4))
    article, dead = run(payload, source=redriven)
    assert (article.event_id, dead.event_id) == ("t3.raw:0:15071:4", "t3.raw:0:15071:5")
    assert decode(article)["id"] == "t3.raw:0:15071:4"
    assert decode(dead)["id"] == "t3.raw:0:15071:5"
    assert decode(article)["kafkaoffset"] == 15073, "the extensions say where it was read"
    assert decode(dead)["source"]["offset"] == 15073


# --- fitting a dead letter into a smaller record --------------------------------------------------


def test_a_dead_letter_that_fits_is_left_as_it_is() -> None:
    [outcome] = run("no markers at all")
    assert fit_dead_letter(outcome.value, len(outcome.value)) is outcome.value


@pytest.mark.parametrize("payload", ["wörds, no markers " * 2000, "\x00" * 30_000], ids=["text", "escaped"])
def test_a_dead_letter_is_cut_to_the_size_asked_and_says_it_is_truncated(payload: str) -> None:
    [outcome] = run(payload)
    target = len(outcome.value) // 3
    fitted = fit_dead_letter(outcome.value, target)
    assert fitted is not None
    assert target - 200 < len(fitted) <= target
    event, before = orjson.loads(fitted), orjson.loads(outcome.value)
    assert event["raw"]["truncated"] is True
    assert event["raw"]["size_bytes"] == len(payload.encode())
    assert payload.startswith(event["raw"]["text"])
    assert {k: v for k, v in event.items() if k != "raw"} == {k: v for k, v in before.items() if k != "raw"}
    RecordDeadLettered.model_validate_json(fitted)


def test_a_dead_letter_too_large_even_without_its_raw_copy_does_not_fit() -> None:
    [outcome] = run("no markers at all")
    smallest = fit_dead_letter(outcome.value, len(outcome.value) - len("no markers at all"))
    assert smallest is not None
    assert orjson.loads(smallest)["raw"]["text"] == ""
    assert fit_dead_letter(outcome.value, len(smallest) - 1) is None
    [null] = run(None)
    assert fit_dead_letter(null.value, len(null.value) - 1) is None
