"""Redriving a dead letter whose raw copy is incomplete: its input is read back from the input topic
(``recover``, ``recovered_bytes``), so that a ``payload_too_large`` dead letter, whose copy is always
cut with the default limits, can be redriven at all."""

from __future__ import annotations

import datetime as dt

import pytest
from markertext import NOW, VERSION, record
from pydantic import SecretStr

from schemas.errors import ErrorCode
from schemas.events import DROPPED_HEADER, ERROR_CODE_HEADER, ORIGIN_TAG_HEADER, REDRIVE_COUNT_HEADER
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.core.origin import Origin, origin_of, origin_tag
from service.tools.redrive_messages import DeadLetterRecord, InputRecord, parse_dead_letter, recovered_bytes
from service.tools.redrive_plan import (
    Filters,
    SkipReason,
    plan_redrive,
    recover,
)

TOPIC = "news.raw"
KEY = SecretStr("the-redrive-key-of-recovery-tests")
TIMESTAMP_MS = 1_706_100_000_123
BIG = b" ".join(record(fn=str(i), text="w" * 400_000).encode() for i in range(3))
"""Three valid records, 1.2 MB: over the default INGEST_MAX_PAYLOAD_BYTES, and over 256 KiB."""


def _input(
    value: bytes | None,
    *,
    offset: int = 40,
    headers: tuple[tuple[str, bytes], ...] = (),
    key: bytes = b"feed",
) -> InputRecord:
    return InputRecord(2, offset, TIMESTAMP_MS, key, value, headers)


def _dead_letters(msg: InputRecord, limits: Limits | None = None) -> list[DeadLetterRecord]:
    """The dead letters the service writes for ``msg`` (headers as the dead letter keeps them)."""
    source = Source(TOPIC, msg.partition, msg.offset, msg.timestamp, msg.key)
    out = []
    for outcome in process_payload(msg.value, source, limits or Limits(), now=NOW, version=VERSION):
        if outcome.error is not None:
            headers = (*msg.headers, (ERROR_CODE_HEADER, outcome.error.value.encode()))
            out.append(DeadLetterRecord(0, len(out), outcome.key, outcome.value, headers))
    return out


def test_a_payload_too_large_dead_letter_is_redriven_from_its_input() -> None:
    original = _input(BIG, headers=(("trace", b"t-1"), (REDRIVE_COUNT_HEADER, b"1")))
    [dead] = _dead_letters(original)
    event = parse_dead_letter(dead.value)
    assert event is not None
    assert (event.error.code, event.raw.truncated) == (ErrorCode.PAYLOAD_TOO_LARGE, True)

    plan = plan_redrive([dead], Filters(), key=KEY)
    assert plan.messages == [], "the copy alone cannot be redriven"
    assert plan.inputs_wanted == {(TOPIC, 2, 40)}
    recover(plan, {(TOPIC, 2, 40): original}, key=KEY)
    [(decision, msg)] = plan.messages
    assert (decision.skip, decision.redrive_count) == (None, 1)
    assert (msg.key, msg.value) == (b"feed", BIG)
    headers = dict(msg.headers)
    assert headers["trace"] == b"t-1"
    assert headers[REDRIVE_COUNT_HEADER] == b"2"
    assert headers[ORIGIN_TAG_HEADER] == origin_tag(KEY, f"{TOPIC}:2:40:0", BIG).encode()
    assert origin_of(msg.headers, msg.value, KEY) == Origin(f"{TOPIC}:2:40", 0)
    articles = process_payload(
        msg.value, Source(TOPIC, 2, 41), Limits(max_payload_bytes=4_000_000), now=NOW, version=VERSION
    )
    assert [a.is_article for a in articles] == [True, True, True], "with a larger limit it goes through"


def test_a_record_too_long_for_its_copy_is_redriven_from_its_payload() -> None:
    long_bad = record(fn="8", date="2024-02-30", text="\ufeffx" * 200_000)
    payload = "\ufeff" + " ".join([record(fn="7"), long_bad, record(fn="9")])
    original = _input(payload.encode())
    [dead] = _dead_letters(original)
    event = parse_dead_letter(dead.value)
    assert event is not None
    assert (event.scope, event.source.record_index, event.raw.truncated) == ("record", 1, True)
    plan = plan_redrive([dead], Filters(), key=KEY)
    recover(plan, {(TOPIC, 2, 40): original}, key=KEY)
    [(_, msg)] = plan.messages
    assert msg.value == long_bad.encode()


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(_input(BIG[:1000] + b"!" + BIG[1001:]), id="other-bytes-in-the-copy"),
        pytest.param(_input(BIG + b" "), id="other-size"),
        pytest.param(_input(b"x" + BIG[1:]), id="other-start"),
        pytest.param(_input(BIG, key=b"other"), id="other-key"),
        pytest.param(InputRecord(2, 40, TIMESTAMP_MS + 1, b"feed", BIG), id="other-timestamp"),
        pytest.param(InputRecord(2, 41, TIMESTAMP_MS, b"feed", BIG), id="other-offset"),
        pytest.param(_input(None), id="null"),
    ],
)
def test_a_message_that_is_not_the_dead_letters_input_is_not_redriven(other: InputRecord) -> None:
    """A topic deleted and made again reuses offsets: only the very message the dead letter names
    (its coordinates, timestamp, key, size and the start of its copy) is taken for it."""
    [dead] = _dead_letters(_input(BIG))
    event = parse_dead_letter(dead.value)
    assert event is not None
    assert recovered_bytes(event, _input(BIG)) == BIG
    assert recovered_bytes(event, other) is None
    plan = plan_redrive([dead], Filters(), key=KEY)
    recover(plan, {(TOPIC, 2, 40): other}, key=KEY)
    [decision] = plan.decisions
    assert (decision.skip, decision.message) == (SkipReason.TRUNCATED, None)


def test_an_input_that_cannot_be_read_back_is_skipped_as_truncated() -> None:
    [dead] = _dead_letters(_input(BIG))
    plan = plan_redrive([dead], Filters(), key=KEY)
    recover(plan, {}, key=KEY)
    [decision] = plan.decisions
    assert decision.skip is SkipReason.TRUNCATED


def test_dropped_headers_come_back_from_the_input_with_its_redrive_count() -> None:
    """A dead letter whose input headers were too large to copy has neither them nor the count:
    both come from the input, and ``--max-redrives`` still holds."""
    headers = ((REDRIVE_COUNT_HEADER, b"3"), ("h", b"x" * 100), ("content-type", b"text/plain"))
    original = _input(b"no markers here", headers=headers)
    [dead] = _dead_letters(original)
    stripped = DeadLetterRecord(
        0, 0, dead.key, dead.value, ((ERROR_CODE_HEADER, b"no_markers"), (DROPPED_HEADER, b"headers"))
    )
    plan = plan_redrive([stripped], Filters(), key=KEY)
    recover(plan, {(TOPIC, 2, 40): original}, key=KEY)
    [decision] = plan.decisions
    assert (decision.skip, decision.redrive_count) == (SkipReason.MAX_REDRIVES, 3)

    plan = plan_redrive([stripped], Filters(), key=KEY, max_redrives=5)
    recover(plan, {(TOPIC, 2, 40): original}, key=KEY, max_redrives=5)
    [(_, msg)] = plan.messages
    assert [(k, v) for k, v in msg.headers if k in ("h", "content-type", REDRIVE_COUNT_HEADER)] == [
        ("h", b"x" * 100),
        (REDRIVE_COUNT_HEADER, b"4"),
    ]


def test_a_complete_copy_needs_no_input() -> None:
    [dead] = _dead_letters(_input(b"no markers here"))
    plan = plan_redrive([dead], Filters(), key=KEY)
    assert plan.inputs_wanted == set()
    [(_, msg)] = plan.messages
    assert msg.value == b"no markers here"


def test_the_timestamp_is_compared_to_the_millisecond() -> None:
    [dead] = _dead_letters(_input(BIG))
    event = parse_dead_letter(dead.value)
    assert event is not None
    assert event.source.timestamp == dt.datetime(2024, 1, 24, 12, 40, 0, 123000, tzinfo=dt.UTC)
    assert recovered_bytes(event, InputRecord(2, 40, TIMESTAMP_MS, b"feed", BIG)) == BIG
