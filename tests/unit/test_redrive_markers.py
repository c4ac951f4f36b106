"""Redrive markers on the dead-letter topic: a dead letter whose input was published is marked, and a
later redrive to the same topic does not publish it again (``plan_redrive``, ``redrive_marker``)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator
from markertext import NOW, VERSION

from schemas import generate
from schemas.events import (
    ERROR_CODE_HEADER,
    REDRIVE_COUNT_HEADER,
    REDRIVE_MARKER_SCHEMA_FILE,
    REDRIVEN_HEADER,
    RecordRedriven,
)
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.tools.redrive_messages import DeadLetterRecord, parse_marker
from service.tools.redrive_plan import (
    Decision,
    Filters,
    plan_redrive,
    redrive_marker,
)
from service.tools.redrive_report import build_report, render_json, render_text

INPUT = "news.raw"
SCHEMA = Path(generate.__file__).parent / REDRIVE_MARKER_SCHEMA_FILE


class Topic:
    """A dead-letter topic in memory: dead letters made by the core, markers made by redrive."""

    def __init__(self) -> None:
        self.records: list[DeadLetterRecord] = []

    def dead_letter(self, payload: bytes, *, offset: int, count: int | None = None) -> DeadLetterRecord:
        [outcome] = process_payload(payload, Source(INPUT, 0, offset), Limits(), now=NOW, version=VERSION)
        assert outcome.error is not None
        headers = [] if count is None else [(REDRIVE_COUNT_HEADER, str(count).encode())]
        headers.append((ERROR_CODE_HEADER, outcome.error.value.encode()))
        rec = DeadLetterRecord(0, len(self.records), outcome.key, outcome.value, tuple(headers))
        self.records.append(rec)
        return rec

    def redrive(self, *, target: str = INPUT) -> list[Decision]:
        """Plan a redrive to ``target``, and write the markers of what it publishes."""
        plan = plan_redrive(self.records, Filters(), target_topic=target)
        for decision, _ in plan.messages:
            marker = redrive_marker(decision, target_topic=target, now=NOW)
            self.records.append(
                DeadLetterRecord(
                    marker.partition, len(self.records), marker.key, marker.value, marker.headers
                )
            )
        return [d for d, _ in plan.messages]


def test_a_marked_dead_letter_is_not_redriven_again() -> None:
    topic = Topic()
    dead = topic.dead_letter(b"no markers", offset=5)
    [first] = topic.redrive()
    assert (first.dlq_partition, first.dlq_offset) == (dead.partition, dead.offset)
    assert topic.redrive() == [], "the second run finds the marker"
    plan = plan_redrive(topic.records, Filters(), target_topic=INPUT)
    assert (plan.read, plan.markers, plan.already_redriven, len(plan.decisions)) == (2, 1, 1, 0)
    report = build_report(plan, dlq_topic="dlq", target_topic=INPUT, dry_run=False)
    assert (report.exit_status, report.redriven, report.already_redriven) == (0, 0, 1)
    assert (
        "read 2 record(s) (1 redrive marker(s)), selected 0 dead letter(s) (1 redriven already)"
        in render_text(report)
    )
    assert orjson.loads(render_json(report))["already_redriven"] == 1


def test_without_markers_every_run_would_redrive_it_again() -> None:
    """What the marker prevents: a plan that ignores the topic's markers selects the dead letter."""
    topic = Topic()
    topic.dead_letter(b"no markers", offset=5)
    topic.redrive()
    without = [r for r in topic.records if parse_marker(r) is None]
    assert len(plan_redrive(without, Filters(), target_topic=INPUT).messages) == 1


def test_a_marker_counts_for_its_target_topic_only() -> None:
    topic = Topic()
    topic.dead_letter(b"no markers", offset=5)
    assert len(topic.redrive(target="news.side")) == 1
    assert len(topic.redrive(target=INPUT)) == 1, "a look on a side topic does not redrive it"
    assert topic.redrive(target=INPUT) == []


def test_a_redelivered_copy_of_a_marked_dead_letter_is_covered_too() -> None:
    """At-least-once may write a dead letter twice, the second after the redrive ran."""
    topic = Topic()
    topic.dead_letter(b"no markers", offset=5)
    topic.redrive()
    topic.dead_letter(b"no markers", offset=5)
    assert topic.redrive() == []


def test_the_dead_letter_of_a_redriven_copy_is_redriven_and_then_marked_in_turn() -> None:
    topic = Topic()
    original = topic.dead_letter(b"no markers", offset=5)
    topic.redrive()
    # The service read the copy, failed it again: same id (its origin), count 1.
    again = topic.dead_letter(b"no markers", offset=5, count=1)
    [second] = topic.redrive()
    assert (second.dlq_offset, second.redrive_count) == (again.offset, 1)
    assert second.dead_letter_id == orjson.loads(original.value or b"")["id"]
    assert topic.redrive() == []
    markers = [m for r in topic.records if (m := parse_marker(r)) is not None]
    assert [m.redrive_count for m in markers] == [1, 2]


def test_markers_after_the_limit_are_still_read() -> None:
    topic = Topic()
    topic.dead_letter(b"no markers", offset=5)
    topic.dead_letter(b"none here", offset=6)
    topic.redrive()
    assert len(topic.records) == 4, "two dead letters, then their markers"
    plan = plan_redrive(topic.records, Filters(limit=1), target_topic=INPUT)
    assert (plan.already_redriven, plan.decisions) == (2, [])


def test_a_record_that_only_claims_to_be_a_marker_is_read_as_what_it_is() -> None:
    """A dead letter written before the service stopped copying marker-ingest-* input headers may
    carry a forged marker header: it is still a dead letter. A marker-headed record that is neither
    is unreadable."""
    topic = Topic()
    dead = topic.dead_letter(b"no markers", offset=5)
    topic.records[0] = DeadLetterRecord(
        0, 0, dead.key, dead.value, ((REDRIVEN_HEADER, b"0:0"), *dead.headers)
    )
    topic.records.append(
        DeadLetterRecord(
            0, 1, b"0:0", b'{"type": "io.markeringest.record.redriven.v1"}', ((REDRIVEN_HEADER, b"0:0"),)
        )
    )
    plan = plan_redrive(topic.records, Filters(), target_topic=INPUT)
    assert (len(plan.messages), plan.markers, plan.unreadable) == (1, 0, [(0, 1)])


def test_a_marker_names_its_dead_letter_and_validates_against_its_schema() -> None:
    topic = Topic()
    topic.dead_letter(b"first", offset=4)
    topic.dead_letter(b"no markers", offset=5, count=2)
    [_, decision] = plan_redrive(topic.records, Filters(), target_topic=INPUT).decisions
    marker = redrive_marker(decision, target_topic=INPUT, now=NOW)
    assert (marker.partition, marker.key, marker.headers) == (0, b"0:1", ((REDRIVEN_HEADER, b"0:1"),))
    body = orjson.loads(marker.value)
    assert body == {
        "type": "io.markeringest.record.redriven.v1",
        "time": "2024-03-01T12:30:45.123Z",
        "service_version": body["service_version"],
        "dead_letter": {"id": f"{INPUT}:0:5:0", "scope": "payload", "partition": 0, "offset": 1},
        "redrive_count": 3,
        "target_topic": INPUT,
    }
    RecordRedriven.model_validate_json(marker.value)
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert list(Draft202012Validator(schema).iter_errors(body)) == []


def test_a_redrive_whose_markers_could_not_be_written_exits_1() -> None:
    topic = Topic()
    topic.dead_letter(b"no markers", offset=5)
    plan = plan_redrive(topic.records, Filters(), target_topic=INPUT)
    report = build_report(plan, dlq_topic="dlq", target_topic=INPUT, dry_run=False, unmarked=1)
    assert (report.redriven, report.unmarked, report.exit_status) == (1, 1, 1)
    assert "1 redriven without a marker (writing it failed): a next run redrives them again" in render_text(
        report
    )


@pytest.mark.parametrize("target", [None, INPUT])
def test_no_target_no_coverage(target: str | None) -> None:
    """``plan_redrive`` without a target topic (a caller that does not publish) ignores markers."""
    topic = Topic()
    topic.dead_letter(b"no markers", offset=5)
    topic.redrive()
    plan = plan_redrive(topic.records, Filters(), target_topic=target)
    assert len(plan.decisions) == (1 if target is None else 0)
