"""What ``marker-ingest redrive`` decides, without I/O: which dead letters to re-publish, as what.

A dead letter is turned back into the input it came from (the record's text for a record-level
dead letter, the whole payload, byte for byte, for a payload-level one) with the original key and
headers, plus ``marker-ingest-redrive-count``, ``marker-ingest-origin-id`` and the
``marker-ingest-origin-tag`` that proves the origin to the service; ``plan_redrive`` selects, ranks
and skips (with the reason, or because a redrive marker says it was redriven already), ``recover``
decides the dead letters whose copy is incomplete once their input was read back,
``redrive_marker`` makes the marker of a published one, ``would_succeed`` re-parses for a dry run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import orjson
from pydantic import SecretStr

from schemas.errors import ErrorCode
from schemas.events import (
    DROPPED_HEADER,
    REDRIVE_MARKER_TYPE,
    REDRIVEN_HEADER,
    RecordDeadLettered,
)
from service import __version__
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.core.message import rfc3339
from service.core.origin import origin_tag
from service.core.trace_context import trace_context
from service.delivery.routing import carried_headers, record_size, redrive_count
from service.ops.tracing import Upstream
from service.tools.redrive_messages import (
    DeadLetterRecord,
    InputRecord,
    InputRef,
    MarkerMessage,
    RedriveMessage,
    origin_traceparent,
    original_bytes,
    original_key,
    parse_dead_letter,
    parse_marker,
    recovered_bytes,
    redriven_headers,
    was_null,
    with_traceparent,
)

DEFAULT_MAX_REDRIVES = 3


class SkipReason(StrEnum):
    """Why a selected dead letter was not (or would not be) redriven."""

    TRUNCATED = "truncated"
    """The raw copy is truncated, or the input's key or headers were dropped, and the input could not
    be read back from its topic (gone with retention, or not the same message): the original is gone."""
    MAX_REDRIVES = "max_redrives"
    """Its redrive count is already at ``--max-redrives``."""
    TOO_LARGE = "too_large"
    """The redriven message would be over the target topic's ``max.message.bytes``."""
    PUBLISH_FAILED = "publish_failed"
    """The broker did not acknowledge the redriven message (or, exactly-once, did not commit it)."""


# --------------------------------------------------------------------------------------- the core


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters to select. Every bound is inclusive except ``until``."""

    codes: frozenset[ErrorCode] = frozenset()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    limit: int | None = None

    def matches(self, event: RecordDeadLettered) -> bool:
        """True when ``event`` passes every filter but the limit.

        ``codes`` match the error code; ``since <= time < until`` the dead letter's ``time``;
        ``partition`` and ``from_offset <= offset <= to_offset`` its source coordinates.
        """
        src = event.source
        return (
            (not self.codes or event.error.code in self.codes)
            and (self.since is None or event.time >= self.since)
            and (self.until is None or event.time < self.until)
            and (self.partition is None or src.partition == self.partition)
            and (self.from_offset is None or src.offset >= self.from_offset)
            and (self.to_offset is None or src.offset <= self.to_offset)
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """One selected dead letter: its message, or why it is skipped."""

    dead_letter_id: str
    dlq_partition: int
    dlq_offset: int
    code: ErrorCode
    scope: str
    redrive_count: int
    message: RedriveMessage | None
    skip: SkipReason | None = None
    recovery: Recovery | None = None
    """Set while the message must still be read back from the input topic (``recover``)."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """A dead letter whose copy of its input is incomplete, waiting for the input to be read back."""

    event: RecordDeadLettered
    origin_traceparent: bytes | None = None
    """The trace the dead letter's record started (``marker-ingest-origin-traceparent``)."""

    @property
    def ref(self) -> InputRef:
        """Where its input was read."""
        src = self.event.source
        return (src.topic, src.partition, src.offset)


@dataclass(slots=True)
class Plan:
    """What a redrive will do: every selected dead letter, in dead-letter-topic order."""

    read: int = 0
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0
    markers: int = 0
    """Redrive markers read."""
    already_redriven: int = 0
    """Dead letters that passed the filters but a marker says were redriven to the target already."""
    decisions: list[Decision] = field(default_factory=list)

    @property
    def messages(self) -> list[tuple[Decision, RedriveMessage]]:
        """The decisions that publish something, with their message."""
        return [(d, d.message) for d in self.decisions if d.message is not None]

    @property
    def inputs_wanted(self) -> set[InputRef]:
        """The input messages to read back before ``recover`` can decide the rest."""
        return {d.recovery.ref for d in self.decisions if d.recovery is not None}


def _identity(event: RecordDeadLettered) -> tuple[bool, str]:
    """What makes two dead letters the same input: the id (which a redriven input keeps) and scope.

    The dead letters of a redelivered message, and those of the same input redriven again, share it.
    """
    return (event.scope == "payload", event.id)


def plan_redrive(
    records: Iterable[DeadLetterRecord],
    filters: Filters,
    *,
    max_redrives: int = DEFAULT_MAX_REDRIVES,
    key: SecretStr | None = None,
    target_topic: str | None = None,
) -> Plan:
    """Select the dead letters to redrive and decide, for each, its message or why it is skipped.

    A dead letter that a redrive marker says was redriven to ``target_topic`` already (the same id
    and scope, at its redrive count or later) is not selected: it counts as ``already_redriven``.
    Copies of one input (the same payload, or the same record, redelivered or redriven again) are
    selected once, as the copy with the highest redrive count, so that ``--max-redrives`` holds;
    the rest count as duplicates. ``filters.limit`` bounds the number selected (reading stops
    there; every marker is read first). Records that are neither dead letters nor markers are
    counted as unreadable and never selected. Each message's origin is tagged with ``key``
    (``INGEST_REDRIVE_KEY``); without one (a dry run) the origin is untagged, which the service ignores.
    """
    plan = Plan()
    redriven: dict[tuple[bool, str, str], int] = {}
    dead_letters = []
    for rec in records:
        marker = parse_marker(rec)
        if marker is None:
            dead_letters.append(rec)
            continue
        plan.read += 1
        plan.markers += 1
        marked = (marker.dead_letter.scope == "payload", marker.dead_letter.id, marker.target_topic)
        redriven[marked] = max(redriven.get(marked, 0), marker.redrive_count)
    seen: dict[tuple[bool, str], int] = {}
    for rec in dead_letters:
        if filters.limit is not None and len(plan.decisions) >= filters.limit:
            break
        plan.read += 1
        event = parse_dead_letter(rec.value)
        if event is None:
            plan.unreadable.append((rec.partition, rec.offset))
            continue
        if not filters.matches(event):
            continue
        identity = _identity(event)
        done = 0 if target_topic is None else redriven.get((*identity, target_topic), 0)
        if done > redrive_count(rec.headers):
            plan.already_redriven += 1
            continue
        decision = _decide(rec, event, max_redrives, key)
        position = seen.get(identity)
        if position is None:
            seen[identity] = len(plan.decisions)
            plan.decisions.append(decision)
            continue
        plan.duplicates += 1
        if decision.redrive_count > plan.decisions[position].redrive_count:
            plan.decisions[position] = decision
    return plan


def _decide(
    rec: DeadLetterRecord, event: RecordDeadLettered, max_redrives: int, key: SecretStr | None
) -> Decision:
    count = redrive_count(rec.headers)
    null = was_null(event)
    data = None if null else original_bytes(event)
    dropped = any(name == DROPPED_HEADER for name, _ in rec.headers)
    skip: SkipReason | None = None
    recovery = None
    trace = origin_traceparent(rec.headers)
    if count >= max_redrives:
        skip = SkipReason.MAX_REDRIVES
    elif (data is None and not null) or dropped:
        recovery = Recovery(event, trace)
    message = None
    if skip is None and recovery is None:
        # A key over 4 KiB is not copied into key_base64; the dead letter's own key is the input's.
        input_key = original_key(event) if event.source.key_base64 is not None else rec.key
        tag = None if key is None else origin_tag(key, event.id, data, trace)
        headers = redriven_headers(rec.headers, count + 1, event.id, tag, trace)
        message = RedriveMessage(input_key, data, headers)
    return Decision(
        dead_letter_id=event.id,
        dlq_partition=rec.partition,
        dlq_offset=rec.offset,
        code=event.error.code,
        scope=event.scope,
        redrive_count=count,
        message=message,
        skip=skip,
        recovery=recovery,
    )


def recover(
    plan: Plan,
    inputs: Mapping[InputRef, InputRecord],
    *,
    max_redrives: int = DEFAULT_MAX_REDRIVES,
    key: SecretStr | None = None,
) -> None:
    """Decide the dead letters whose copy was incomplete, given the ``inputs`` read back.

    A dead letter whose input is the message read back (``recovered_bytes``) is redriven from it:
    its value (or, record-level, its record's text), key, and the headers a dead letter keeps, with
    the count that message carried. One whose input is missing from ``inputs``, or another message
    than the one it names, is skipped as ``truncated``.
    """
    for i, decision in enumerate(plan.decisions):
        if decision.recovery is None:
            continue
        event = decision.recovery.event
        got = inputs.get(decision.recovery.ref)
        data = None if got is None else recovered_bytes(event, got)
        if got is None or data is None:
            plan.decisions[i] = dataclasses.replace(decision, recovery=None, skip=SkipReason.TRUNCATED)
            continue
        count = redrive_count(got.headers)
        if count >= max_redrives:
            plan.decisions[i] = dataclasses.replace(
                decision, recovery=None, redrive_count=count, skip=SkipReason.MAX_REDRIVES
            )
            continue
        trace = decision.recovery.origin_traceparent
        tag = None if key is None else origin_tag(key, event.id, data, trace)
        headers = redriven_headers(carried_headers(got.headers), count + 1, event.id, tag, trace)
        message = RedriveMessage(got.key, data, headers)
        plan.decisions[i] = dataclasses.replace(decision, recovery=None, redrive_count=count, message=message)


def traced(plan: Plan, traceparent: bytes) -> list[Upstream]:
    """Put ``traceparent`` (the redrive's span) on every message to publish, in place of the one
    it carried; returns those carried contexts, for the span's links."""
    links = []
    for i, decision in enumerate(plan.decisions):
        msg = decision.message
        if msg is None:
            continue
        carried = trace_context(msg.headers)
        if carried is not None:
            links.append(Upstream(carried.trace_id, carried.span_id, carried.sampled, carried.tracestate))
        message = dataclasses.replace(msg, headers=with_traceparent(msg.headers, traceparent))
        plan.decisions[i] = dataclasses.replace(decision, message=message)
    return links


def skip_too_large(plan: Plan, limit: int) -> None:
    """Skip, as ``too_large``, each message whose record would be over ``limit`` bytes (the target
    topic's ``max.message.bytes``): the broker would refuse it, and the batch it was sent in."""
    for i, decision in enumerate(plan.decisions):
        msg = decision.message
        if msg is not None and record_size(msg.key, msg.value, msg.headers) > limit:
            plan.decisions[i] = dataclasses.replace(decision, message=None, skip=SkipReason.TOO_LARGE)


def redrive_marker(decision: Decision, *, target_topic: str, now: dt.datetime) -> MarkerMessage:
    """The marker that says ``decision``'s dead letter was redriven to ``target_topic`` at ``now``."""
    position = f"{decision.dlq_partition}:{decision.dlq_offset}".encode()
    value = orjson.dumps(
        {
            "type": REDRIVE_MARKER_TYPE,
            "time": rfc3339(now),
            "service_version": __version__,
            "dead_letter": {
                "id": decision.dead_letter_id,
                "scope": decision.scope,
                "partition": decision.dlq_partition,
                "offset": decision.dlq_offset,
            },
            "redrive_count": decision.redrive_count + 1,
            "target_topic": target_topic,
        }
    )
    return MarkerMessage(decision.dlq_partition, position, value, ((REDRIVEN_HEADER, position),))


def would_succeed(message: RedriveMessage, limits: Limits, *, topic: str, now: dt.datetime) -> bool:
    """True when the current core turns the message into article events only."""
    source = Source(topic=topic, partition=0, offset=0, key=message.key)
    outcomes = process_payload(message.value, source, limits, now=now, version=__version__)
    return all(o.error is None for o in outcomes)
