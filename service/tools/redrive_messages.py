"""The records ``marker-ingest redrive`` reads and writes, without I/O: a record of the dead-letter
topic (``DeadLetterRecord``) parsed as a dead letter or a redrive marker; the input it was made from,
rebuilt from the dead letter's raw copy (``original_bytes``, ``original_key``, ``was_null``) or from
the input message read back (``InputRecord``, ``recovered_bytes``); and the messages a redrive
publishes: the input again (``RedriveMessage``, ``redriven_headers``) and its marker (``MarkerMessage``).
``redrive_plan`` decides which of them to publish.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.events import (
    ORIGIN_HEADER,
    ORIGIN_TAG_HEADER,
    ORIGIN_TRACEPARENT_HEADER,
    REDRIVE_COUNT_HEADER,
    REDRIVEN_HEADER,
    RecordDeadLettered,
    RecordRedriven,
)
from service.core.message import strip_bom
from service.core.parser import Problem, scan_markers
from service.core.trace_context import TRACEPARENT, TRACEPARENT_CHARS, parse_traceparent
from service.delivery.routing import SERVICE_HEADER_PREFIX


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic, as read: where it sits, and its key, value and headers."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class RedriveMessage:
    """What goes back to the input topic for one dead letter."""

    key: bytes | None
    value: bytes | None
    """None when the input's value was null."""
    headers: tuple[tuple[str, bytes], ...]


InputRef = tuple[str, int, int]
"""Where an input message was read: topic, partition, offset."""


@dataclass(frozen=True, slots=True)
class InputRecord:
    """An input message as read back from its topic."""

    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


_BOM = "\ufeff".encode()


def original_bytes(event: RecordDeadLettered) -> bytes | None:
    """The input the dead letter was made from, or None when its raw copy is incomplete (or there
    is none: a null value, see ``was_null``).

    A record-level dead letter holds the record's text; a payload-level one the payload as text or,
    when it was not UTF-8, as base64. Either way the bytes come back meaning what they meant: a
    record whose text starts with U+FEFF is given a byte-order mark before it, since the service
    takes a message's leading U+FEFF for one.
    """
    raw = event.raw
    if raw.truncated:
        return None
    if raw.text is not None:
        data = raw.text.encode("utf-8")
    elif raw.base64 is not None:
        try:
            data = base64.b64decode(raw.base64, validate=True)
        except binascii.Error:
            return None
    else:
        return None
    if len(data) != raw.size_bytes:
        return None
    if event.scope == "record" and data.startswith(_BOM):
        return _BOM + data
    return data


def was_null(event: RecordDeadLettered) -> bool:
    """True when the dead letter was made from a null message value (no text and no base64)."""
    raw = event.raw
    return raw.text is None and raw.base64 is None and raw.size_bytes == 0 and not raw.truncated


def original_key(event: RecordDeadLettered) -> bytes | None:
    """The key of the input message (``source.key_base64``)."""
    key = event.source.key_base64
    return None if key is None else base64.b64decode(key)


def redriven_headers(
    headers: Iterable[tuple[str, bytes]],
    count: int,
    origin_id: str | None = None,
    tag: str | None = None,
    origin_traceparent: bytes | None = None,
) -> tuple[tuple[str, bytes], ...]:
    """The input's headers as the dead letter carried them, without the service's own
    (``marker-ingest-*``), with the redrive count set to ``count`` and, when given,
    ``marker-ingest-origin-id`` set to ``origin_id`` with the trace it started
    (``marker-ingest-origin-traceparent``) and its ``tag``."""
    kept = [(k, v) for k, v in headers if not k.lower().startswith(SERVICE_HEADER_PREFIX)]
    if origin_id is not None:
        kept.append((ORIGIN_HEADER, origin_id.encode()))
        if origin_traceparent is not None:
            kept.append((ORIGIN_TRACEPARENT_HEADER, origin_traceparent))
        if tag is not None:
            kept.append((ORIGIN_TAG_HEADER, tag.encode()))
    kept.append((REDRIVE_COUNT_HEADER, str(count).encode()))
    return tuple(kept)


def origin_traceparent(headers: Iterable[tuple[str, bytes]]) -> bytes | None:
    """The trace a dead letter's record started (its last ``marker-ingest-origin-traceparent``),
    when it is a valid version ``00`` ``traceparent``; else None."""
    value = None
    for name, raw in headers:
        if name == ORIGIN_TRACEPARENT_HEADER:
            value = raw
    if not isinstance(value, bytes) or len(value) != TRACEPARENT_CHARS or parse_traceparent(value) is None:
        return None
    return value


def with_traceparent(
    headers: Iterable[tuple[str, bytes]], traceparent: bytes
) -> tuple[tuple[str, bytes], ...]:
    """``headers`` with their ``traceparent`` replaced by ``traceparent`` (put first when there
    was none); a ``tracestate`` stays."""
    kept = [(k, v) for k, v in headers if k != TRACEPARENT]
    return ((TRACEPARENT, traceparent), *kept)


def parse_dead_letter(value: bytes | None) -> RecordDeadLettered | None:
    """The dead-letter event in a record's value; None when it is not one."""
    if value is None:
        return None
    try:
        return RecordDeadLettered.model_validate_json(value)
    except ValidationError:
        return None


def parse_marker(rec: DeadLetterRecord) -> RecordRedriven | None:
    """The redrive marker a record of the dead-letter topic is; None when it is not one."""
    if rec.value is None or not any(name == REDRIVEN_HEADER for name, _ in rec.headers):
        return None
    try:
        return RecordRedriven.model_validate_json(rec.value)
    except ValidationError:
        return None


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


_MILLISECOND = dt.timedelta(milliseconds=1)


def recovered_bytes(event: RecordDeadLettered, got: InputRecord) -> bytes | None:
    """What the dead letter was made from, taken from ``got``, the input message read back from
    where the dead letter says it was read; None unless ``got`` is that very message.

    It must have the dead letter's partition, offset, timestamp and key (where the dead letter has
    them), and the bytes it gives (the payload, or the record's text) must have the size the dead
    letter records and begin with its raw copy.
    """
    src, raw = event.source, event.raw
    if (got.partition, got.offset) != (src.partition, src.offset):
        return None
    if src.timestamp is not None and got.timestamp != (src.timestamp - _EPOCH) // _MILLISECOND:
        return None
    if src.key_base64 is not None and base64.b64decode(src.key_base64) != got.key:
        return None
    data = got.value if event.scope == "payload" else _record_text(got.value, src.record_index)
    if data is None or len(data) != raw.size_bytes:
        return None
    try:
        copied = base64.b64decode(raw.base64, validate=True) if raw.base64 is not None else b""
    except binascii.Error:
        return None
    if not data.startswith(raw.text.encode("utf-8") if raw.text is not None else copied):
        return None
    if event.scope == "record" and data.startswith(_BOM):
        return _BOM + data
    return data


def _record_text(value: bytes | None, index: int) -> bytes | None:
    """The text of record ``index`` of a payload, as the core cuts it for a record's dead letter."""
    try:
        text = strip_bom(value or b"").decode("utf-8")
    except UnicodeDecodeError:
        return None
    records = scan_markers(text, len(text) + 1)
    if isinstance(records, Problem) or index >= len(records):
        return None
    rec = records[index]
    return text[rec.start : rec.end].strip().encode("utf-8")


@dataclass(frozen=True, slots=True)
class MarkerMessage:
    """The redrive marker of one dead letter, for the dead-letter topic: in the dead letter's own
    partition, keyed and headed by its position there."""

    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
