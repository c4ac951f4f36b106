"""Routing an outcome (``service.delivery.routing``): topic, key and headers; CloudEvents' Kafka binding; the
whole dead-letter record within ``INGEST_MAX_EVENT_BYTES``."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka, from_structured
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given
from hypothesis import strategies as st
from markertext import NOW, VERSION, record
from pydantic import SecretStr

from schemas.events import (
    CLOUDEVENTS_CONTENT_TYPE,
    DROPPED_HEADER,
    ERROR_CODE_HEADER,
    ORIGIN_HEADER,
    ORIGIN_TAG_HEADER,
    ORIGIN_TRACEPARENT_HEADER,
    REDRIVE_COUNT_HEADER,
    RecordDeadLettered,
)
from service.core.events import Outcome, Source, process_payload
from service.core.limits import Limits
from service.core.message import ARTICLE_RECORD_RESERVE
from service.core.trace_context import trace_context
from service.delivery.routing import ARTICLE_HEADERS, Destination, Routes, carried_headers, record_size, route
from service.ops.tracing import Upstream
from service.tools.redrive_messages import (
    DeadLetterRecord,
    origin_traceparent,
    redriven_headers,
    with_traceparent,
)
from service.tools.redrive_plan import Filters, plan_redrive, traced

ROUTES = Routes("news.articles", "news.dead-letters", 1_000_000)
SOURCE = Source("news.raw", 2, 40, timestamp_ms=1_706_054_400_123, key=b"feed-7")


def _outcomes(value: bytes | None, source: Source = SOURCE, limits: Limits | None = None) -> list[Outcome]:
    return process_payload(value, source, limits or Limits(), now=NOW, version=VERSION)


def _java_sdk_mode(headers: dict[str, bytes]) -> str:
    """How the Java SDK's ``KafkaMessageFactory`` reads a record: structured when ``content-type``
    is a CloudEvents format, binary when ``ce_specversion`` is there, else it refuses it."""
    content_type = headers.get("content-type", b"").decode().lower()
    if content_type.startswith("application/cloudevents"):
        return "structured"
    if "ce_specversion" in headers:
        return "binary"
    raise ValueError("not a CloudEvent: no content-type and no ce_specversion header")


def _kafka_message(dest: Destination) -> KafkaMessage:
    return KafkaMessage(headers=dict(dest.headers), key=dest.key, value=dest.value)


def test_an_article_event_goes_to_the_output_topic_in_structured_mode() -> None:
    [outcome] = _outcomes(record(fn="2433").encode())
    dest = route(outcome, [("trace", b"t-1")], ROUTES)
    assert dest.topic == "news.articles"
    assert dest.key == b"2433"
    assert dest.value is outcome.value, "the event's bytes are unchanged"
    assert list(dest.headers) == [("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())]
    assert CLOUDEVENTS_CONTENT_TYPE == "application/cloudevents+json; charset=UTF-8"
    assert _java_sdk_mode(dict(dest.headers)) == "structured"


def test_the_cloudevents_sdk_reads_an_article_event_from_its_kafka_record() -> None:
    [outcome] = _outcomes(record(fn="2433", title="Ceasefire talks").encode())
    dest = route(outcome, [], ROUTES)
    for read in (from_kafka, from_structured):
        event = read(_kafka_message(dest), JSONFormat(), None)
        assert event.get_id() == "news.raw:2:40:0"
        assert event.get_type() == "io.markeringest.article.ingested.v1"
        assert event.get_source() == "urn:marker-ingest:topic:news.raw"
        assert event.get_subject() == "2433"
        assert event.get_extension("kafkaoffset") == 40
        assert event.get_extension("partitionkey") == "2433"
        data = event.get_data()
        assert isinstance(data, dict)
        assert (data["fn"], data["title"]) == (2433, "Ceasefire talks")
        assert data == orjson.loads(dest.value)["data"]


def test_a_dead_letter_carries_the_input_key_and_headers_and_its_code() -> None:
    [outcome] = _outcomes(b"no markers here")
    stale = [(ERROR_CODE_HEADER, b"stray_text"), (DROPPED_HEADER, b"key")]
    dest = route(outcome, [("trace", b"t-1"), *stale, ("b", b"")], ROUTES)
    assert dest.topic == "news.dead-letters"
    assert dest.key == b"feed-7"
    assert dest.value is outcome.value
    assert list(dest.headers) == [("trace", b"t-1"), ("b", b""), (ERROR_CODE_HEADER, b"no_markers")]


def test_a_dead_letter_does_not_pass_for_a_cloudevent() -> None:
    """An input's ``content-type: application/cloudevents+json`` (or binary-mode ``ce_*`` headers)
    copied onto its dead letter made CloudEvents readers take the dead letter for an event."""
    [outcome] = _outcomes(b"no markers here")
    dest = route(
        outcome,
        [
            ("content-type", CLOUDEVENTS_CONTENT_TYPE.encode()),
            ("Content-Type", b"text/plain"),
            ("ce_specversion", b"1.0"),
            ("ce_id", b"upstream-1"),
            ("ce_source", b"urn:upstream"),
            ("ce_type", b"com.example.feed"),
            ("CE_SUBJECT", b"x"),
            ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("tracestate", b"congo=t61rcWkgMzE"),
            ("feed", b"bbc"),
            ("concept", b"not a ce_ prefix"),
        ],
        ROUTES,
    )
    assert list(dest.headers) == [
        ("feed", b"bbc"),
        ("concept", b"not a ce_ prefix"),
        (ERROR_CODE_HEADER, b"no_markers"),
    ]
    with pytest.raises(ValueError, match="not a CloudEvent"):
        _java_sdk_mode(dict(dest.headers))
    with pytest.raises(CloudEventValidationError):
        from_kafka(_kafka_message(dest), JSONFormat(), None)


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([(REDRIVE_COUNT_HEADER, b"2")], [(REDRIVE_COUNT_HEADER, b"2")]),
        ([(REDRIVE_COUNT_HEADER, b"abc")], []),
        ([(REDRIVE_COUNT_HEADER, b"")], []),
        ([(REDRIVE_COUNT_HEADER, b"1234567890")], []),
        ([(REDRIVE_COUNT_HEADER, b"1"), (REDRIVE_COUNT_HEADER, b"x")], []),
        (
            [(REDRIVE_COUNT_HEADER, b"x"), ("a", b"1"), (REDRIVE_COUNT_HEADER, b"3")],
            [("a", b"1"), (REDRIVE_COUNT_HEADER, b"3")],
        ),
        ([("Marker-Ingest-Redrive-Count", b"2")], []),
        (
            [
                (ORIGIN_HEADER, b"news.raw:0:1:0"),
                (ORIGIN_TAG_HEADER, b"0" * 64),
                ("marker-ingest-redriven", b"0:1"),
                ("MARKER-INGEST-ERROR-CODE", b"stray_text"),
            ],
            [],
        ),
    ],
    ids=["count", "malformed", "empty", "too-long", "last-malformed", "last-counts", "other-case", "ours"],
)
def test_of_the_services_own_headers_a_dead_letter_keeps_only_a_well_formed_count(
    headers: list[tuple[str, bytes]], kept: list[tuple[str, bytes]]
) -> None:
    [outcome] = _outcomes(b"no markers here")
    dest = route(outcome, headers, ROUTES)
    assert list(dest.headers) == [*kept, (ERROR_CODE_HEADER, b"no_markers")]
    assert carried_headers(headers) == kept


def _estimate(dest: Destination) -> int:
    """aiokafka's own estimate of a batch holding only this record."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(dest.key, dest.value, list(dest.headers))
    return size


@given(
    key=st.one_of(st.none(), st.binary(max_size=300)),
    value=st.binary(max_size=300),
    headers=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=200)), max_size=8),
)
def test_record_size_is_never_below_what_kafka_counts(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    assert record_size(key, value, headers) >= _estimate(Destination("t", key, value, headers))


def test_record_size_is_not_far_above_what_kafka_counts() -> None:
    dest = Destination("t", b"k" * 1000, b"v" * 100_000, [("h", b"x" * 500)] * 3)
    assert 0 <= record_size(dest.key, dest.value, dest.headers) - _estimate(dest) < 64


BIG_PAYLOAD = b"words without markers " * 14_000  # ~300 KB: a payload-level dead letter


def _dead_letter(dest: Destination) -> RecordDeadLettered:
    return RecordDeadLettered.model_validate_json(dest.value)


def test_a_dead_letter_with_a_huge_key_is_cut_to_fit_the_record_limit() -> None:
    source = Source("news.raw", 0, 7, key=b"k" * 800_000)
    [outcome] = _outcomes(BIG_PAYLOAD, source)
    plain = route(outcome, [], Routes("o", "d", 10_000_000))
    assert record_size(plain.key, plain.value, plain.headers) > 1_048_588, "what Kafka refused"

    dest = route(outcome, [("trace", b"t-1")], ROUTES)
    assert record_size(dest.key, dest.value, dest.headers) <= ROUTES.max_record_bytes
    assert dest.key == source.key, "the key still fits: the raw copy is cut instead"
    assert list(dest.headers) == [("trace", b"t-1"), (ERROR_CODE_HEADER, b"no_markers")]
    event = _dead_letter(dest)
    assert event.raw.truncated
    assert event.raw.size_bytes == len(BIG_PAYLOAD)
    assert event.raw.text is not None
    assert BIG_PAYLOAD.startswith(event.raw.text.encode())
    assert len(event.raw.text) > 150_000, "cut no more than needed"
    assert event.model_dump(exclude={"raw"}) == _dead_letter(plain).model_dump(exclude={"raw"})


@pytest.mark.parametrize(
    ("key", "headers", "dropped", "kept_key", "kept_headers"),
    [
        (b"k" * 999_990, [("trace", b"t")], b"key", None, [("trace", b"t")]),
        (b"small", [("h", b"x" * 1000)] * 1000, b"headers", b"small", []),
        (b"k" * 999_990, [("h", b"x" * 1000)] * 999, b"key,headers", None, []),
    ],
    ids=["key", "headers", "both"],
)
def test_input_key_or_headers_that_leave_no_room_for_the_event_are_dropped_and_said_so(
    key: bytes,
    headers: list[tuple[str, bytes]],
    dropped: bytes,
    kept_key: bytes | None,
    kept_headers: list[tuple[str, bytes]],
) -> None:
    [outcome] = _outcomes(b"no markers", Source("news.raw", 0, 7, key=key))
    dest = route(outcome, headers, ROUTES)
    assert record_size(dest.key, dest.value, dest.headers) <= ROUTES.max_record_bytes
    assert dest.key == kept_key
    assert list(dest.headers) == [
        *kept_headers,
        (ERROR_CODE_HEADER, b"no_markers"),
        (DROPPED_HEADER, dropped),
    ]
    assert _dead_letter(dest).raw.text == "no markers", "the event itself is whole"


def test_a_binary_raw_copy_is_cut_on_a_byte_boundary_and_stays_base64() -> None:
    payload = b"\xff\xfe" * 200_000
    [outcome] = _outcomes(payload, Source("news.raw", 0, 7, key=b"k" * 900_000))
    dest = route(outcome, [], ROUTES)
    assert record_size(dest.key, dest.value, dest.headers) <= ROUTES.max_record_bytes
    raw = _dead_letter(dest).raw
    assert (raw.text, raw.truncated, raw.size_bytes) == (None, True, len(payload))
    assert raw.base64 is not None


def test_an_article_record_fits_the_limit_with_its_key_and_header() -> None:
    payload = record(fn="123456789012345678", text="x" * 5000).encode()
    [probe] = _outcomes(payload)
    dest = route(probe, [], ROUTES)
    assert record_size(dest.key, dest.value, dest.headers) - len(probe.value) <= ARTICLE_RECORD_RESERVE
    smallest = len(probe.value) + ARTICLE_RECORD_RESERVE
    for limit, is_article in ((smallest, True), (smallest - 1, False)):
        [outcome] = _outcomes(payload, limits=Limits(max_event_bytes=limit))
        assert outcome.is_article is is_article, limit
        dest = route(outcome, [], Routes("o", "d", limit))
        assert record_size(dest.key, dest.value, dest.headers) <= limit


PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STATE = b"congo=t61rcWkgMzE"


def test_an_article_carries_the_inputs_trace_context_after_its_content_type() -> None:
    [outcome] = _outcomes(record().encode())
    headers = [("tracestate", STATE), ("traceparent", PARENT), ("feed", b"bbc")]
    dest = route(outcome, headers, ROUTES, trace_context(headers))
    assert list(dest.headers) == [*ARTICLE_HEADERS, ("traceparent", PARENT), ("tracestate", STATE)]
    assert route(outcome, headers, ROUTES).headers is ARTICLE_HEADERS, "no context: the shared list"


def test_an_article_at_its_size_limit_leaves_the_tracestate_then_the_traceparent_out() -> None:
    [outcome] = _outcomes(record().encode())
    context = trace_context([("traceparent", PARENT), ("tracestate", b"x" * 400)])
    plain = record_size(outcome.key, outcome.value, ARTICLE_HEADERS)
    for room, names in [
        (10_000, ["content-type", "traceparent", "tracestate"]),
        (plain + 100, ["content-type", "traceparent"]),
        (plain, ["content-type"]),
    ]:
        dest = route(outcome, [], Routes("o", "d", room), context)
        assert [name for name, _ in dest.headers] == names
        assert record_size(dest.key, dest.value, dest.headers) <= room


@pytest.mark.parametrize(
    "given",
    [
        [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"), ("tracestate", STATE)],
        [("traceparent", PARENT), ("traceparent", PARENT)],
        [("TraceParent", b"garbage"), ("tracestate", STATE)],
    ],
)
def test_a_dead_letter_never_passes_on_an_invalid_trace_context(given: list[tuple[str, bytes]]) -> None:
    [outcome] = _outcomes(b"no markers here")
    dest = route(outcome, [*given, ("feed", b"bbc")], ROUTES, trace_context(given))
    assert list(dest.headers) == [("feed", b"bbc"), (ERROR_CODE_HEADER, b"no_markers")]


def test_a_dead_letter_keeps_a_valid_context_in_place_of_the_inputs_trace_headers() -> None:
    [outcome] = _outcomes(b"no markers here")
    given = [("traceparent", PARENT), ("feed", b"bbc"), ("tracestate", b"a=1"), ("tracestate", b"b=2")]
    dest = route(outcome, given, ROUTES, trace_context(given))
    assert list(dest.headers) == [
        ("feed", b"bbc"),
        ("traceparent", PARENT),
        ("tracestate", b"a=1,b=2"),
        (ERROR_CODE_HEADER, b"no_markers"),
    ]


def test_a_header_with_a_null_value_is_carried_onto_a_dead_letter_without_a_crash() -> None:
    """Kafka headers may have a null value (aiokafka reads it as None): routing such a message's
    dead letter raised TypeError in ``record_size``."""
    [outcome] = _outcomes(b"no markers here")
    dest = route(outcome, [("feed", None), ("traceparent", None)], ROUTES)  # type: ignore[list-item]
    assert list(dest.headers) == [("feed", None), (ERROR_CODE_HEADER, b"no_markers")]
    small = route(outcome, [("feed", None)], Routes("o", "d", 400))  # type: ignore[list-item]
    assert small.topic == "d"


# --- the trace a record started, for redrive ---------------------------------------------------------

STARTING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_dead_letter_keeps_the_trace_its_record_started_after_its_error_code() -> None:
    [outcome] = _outcomes(b"no markers here")
    given = [("traceparent", PARENT), ("feed", b"bbc"), (ORIGIN_TRACEPARENT_HEADER, b"00-forged")]
    dest = route(outcome, given, ROUTES, trace_context(given), STARTING)
    assert list(dest.headers) == [
        ("feed", b"bbc"),
        ("traceparent", PARENT),
        (ERROR_CODE_HEADER, b"no_markers"),
        (ORIGIN_TRACEPARENT_HEADER, STARTING.encode()),
    ]
    assert list(route(outcome, given, ROUTES, trace_context(given)).headers) == [
        ("feed", b"bbc"),
        ("traceparent", PARENT),
        (ERROR_CODE_HEADER, b"no_markers"),
    ], "no starting trace: none, and never the input's own header"


def test_a_dead_letter_cut_to_fit_keeps_the_trace_its_record_started() -> None:
    [outcome] = _outcomes(b"no markers", Source("news.raw", 0, 7, key=b"k" * 999_990))
    dest = route(outcome, [("feed", b"bbc")], ROUTES, None, STARTING)
    assert record_size(dest.key, dest.value, dest.headers) <= ROUTES.max_record_bytes
    assert list(dest.headers) == [
        ("feed", b"bbc"),
        (ERROR_CODE_HEADER, b"no_markers"),
        (ORIGIN_TRACEPARENT_HEADER, STARTING.encode()),
        (DROPPED_HEADER, b"key"),
    ]


def test_an_article_never_carries_an_origin_traceparent() -> None:
    [outcome] = _outcomes(record().encode())
    given = [("traceparent", PARENT), (ORIGIN_TRACEPARENT_HEADER, STARTING.encode())]
    for context in (None, trace_context(given)):
        dest = route(outcome, given, ROUTES, context, STARTING)
        assert ORIGIN_TRACEPARENT_HEADER not in dict(dest.headers)
        assert [name for name, _ in dest.headers] == [
            "content-type",
            *([] if context is None else ["traceparent"]),
        ]


def test_redriven_headers_put_the_origin_trace_between_the_origin_and_its_tag() -> None:
    headers = [("t", b"1"), (ORIGIN_TRACEPARENT_HEADER, b"stale"), (REDRIVE_COUNT_HEADER, b"1")]
    assert redriven_headers(headers, 2, "news.raw:0:5:1", "ab" * 32, STARTING.encode()) == (
        ("t", b"1"),
        (ORIGIN_HEADER, b"news.raw:0:5:1"),
        (ORIGIN_TRACEPARENT_HEADER, STARTING.encode()),
        (ORIGIN_TAG_HEADER, b"ab" * 32),
        (REDRIVE_COUNT_HEADER, b"2"),
    )
    assert redriven_headers(headers, 2, "news.raw:0:5:1", "ab" * 32) == (
        ("t", b"1"),
        (ORIGIN_HEADER, b"news.raw:0:5:1"),
        (ORIGIN_TAG_HEADER, b"ab" * 32),
        (REDRIVE_COUNT_HEADER, b"2"),
    ), "without one, the service's stale header is not carried"


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ([(ORIGIN_TRACEPARENT_HEADER, STARTING.encode())], STARTING.encode()),
        (
            [(ORIGIN_TRACEPARENT_HEADER, PARENT), (ORIGIN_TRACEPARENT_HEADER, STARTING.encode())],
            STARTING.encode(),
        ),
        ([(ORIGIN_TRACEPARENT_HEADER, STARTING.encode()), (ORIGIN_TRACEPARENT_HEADER, b"x")], None),
        ([], None),
        ([("traceparent", PARENT)], None),
        ([(ORIGIN_TRACEPARENT_HEADER, b"garbage")], None),
        ([(ORIGIN_TRACEPARENT_HEADER, STARTING.upper().encode())], None),
        ([(ORIGIN_TRACEPARENT_HEADER, STARTING.encode() + b"-more")], None),
        ([(ORIGIN_TRACEPARENT_HEADER, b"01" + STARTING.encode()[2:] + b"-more")], None),
        ([(ORIGIN_TRACEPARENT_HEADER, b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")], None),
        ([(ORIGIN_TRACEPARENT_HEADER, None)], None),
    ],
    ids=[
        "valid",
        "last-counts",
        "last-malformed",
        "none",
        "not-this-header",
        "garbage",
        "upper-case",
        "00-with-more",
        "later-version-longer",
        "zero-trace",
        "null",
    ],
)
def test_origin_traceparent_reads_only_a_valid_version_00_value(
    headers: list[tuple[str, bytes]], found: bytes | None
) -> None:
    assert origin_traceparent(headers) == found


def test_with_traceparent_replaces_the_traceparent_and_keeps_the_tracestate() -> None:
    new = STARTING.encode()
    headers = [("feed", b"bbc"), ("traceparent", PARENT), ("tracestate", STATE)]
    assert with_traceparent(headers, new) == (("traceparent", new), ("feed", b"bbc"), ("tracestate", STATE))
    assert with_traceparent([("feed", b"bbc")], new) == (("traceparent", new), ("feed", b"bbc"))
    twice = [("traceparent", PARENT), ("traceparent", b"garbage")]
    assert with_traceparent(twice, new) == (("traceparent", new),)


def _redrivable(offset: int, input_headers: list[tuple[str, bytes]]) -> DeadLetterRecord:
    """The dead letter the service makes of a message read at ``offset`` with ``input_headers``."""
    [outcome] = _outcomes(b"no markers here", Source("news.raw", 0, offset, key=b"k"))
    dest = route(outcome, input_headers, ROUTES, trace_context(input_headers), STARTING)
    return DeadLetterRecord(0, offset, dest.key, dest.value, tuple(dest.headers))


def test_traced_puts_the_redrive_span_on_every_message_and_links_the_contexts_they_carried() -> None:
    traced_input = _redrivable(0, [("traceparent", PARENT), ("tracestate", STATE), ("feed", b"bbc")])
    untraced_input = _redrivable(1, [("feed", b"cnn")])
    foreign = _redrivable(2, [])
    foreign = DeadLetterRecord(
        0, 2, foreign.key, foreign.value, (("traceparent", b"garbage"), *foreign.headers)
    )
    skipped = _redrivable(3, [(REDRIVE_COUNT_HEADER, b"9")])
    plan = plan_redrive([traced_input, untraced_input, foreign, skipped], Filters(), key=SecretStr("k" * 32))
    before = [msg for _, msg in plan.messages]
    assert len(before) == 3, "the last is at the redrive limit: no message"
    assert [h for h in before[2].headers if h[0] == "traceparent"] == [("traceparent", b"garbage")]

    redrive = b"00-11111111111111111111111111111111-2222222222222222-01"
    links = traced(plan, redrive)
    assert links == [Upstream(int(PARENT[3:35], 16), int(PARENT[36:52], 16), True, STATE)]
    after = [msg for _, msg in plan.messages]
    assert len(after) == 3
    for old, new in zip(before, after, strict=True):
        assert new.headers[0] == ("traceparent", redrive)
        assert [h for h in new.headers[1:] if h[0] == "traceparent"] == [], "one traceparent only"
        assert [h for h in new.headers if h[0] != "traceparent"] == [
            h for h in old.headers if h[0] != "traceparent"
        ]
        assert (new.key, new.value) == (old.key, old.value)
    assert dict(after[0].headers)["tracestate"] == STATE
    for msg in after:
        assert origin_traceparent(msg.headers) == STARTING.encode(), "the origin's trace stays"
    assert plan.decisions[3].message is None
    assert traced(plan_redrive([], Filters()), redrive) == []
