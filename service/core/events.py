"""Event building: the raw bytes of one Kafka message in, one outcome per record out.

``process_payload`` is the whole functional core: decode, scan, validate, build and serialize.
It never raises on any input; data errors become dead-letter outcomes here and nowhere else.
Pure: the clock and the service version are passed in.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from pydantic import SecretStr

from schemas.errors import ErrorCode
from schemas.events import (
    ARTICLE_DATASCHEMA,
    ARTICLE_EVENT_TYPE,
    DEAD_LETTER_EVENT_TYPE,
    ORIGIN_HEADER,
    ORIGIN_TAG_HEADER,
    ArticleData,
)
from service.core.dead_letters import MAX_FIELD_CHARS, MAX_KEY_COPY, MAX_MESSAGE_CHARS, raw_copy, shorten
from service.core.limits import Limits
from service.core.parser import CleanRecord, Problem, ScannedRecord, scan_clean, scan_markers, scanned
from service.core.validation import article_from_values, validate_record

_BOM = b"\xef\xbb\xbf"


class Origin(NamedTuple):
    """Where a redriven message first came from: its first record's event id, split in two."""

    message: str
    """``<topic>:<partition>:<offset>`` of the original input message."""
    record_index: int
    """The original index of the message's first record (0 for a whole payload)."""


_ORIGIN = re.compile(rb"([A-Za-z0-9._-]{1,249}):([0-9]{1,10}):([0-9]{1,19}):([0-9]{1,10})")


def origin_of(
    headers: Iterable[tuple[str, bytes]], value: bytes | None, key: SecretStr | None
) -> Origin | None:
    """The origin ``redrive`` stamped on a message (``marker-ingest-origin-id``), when its
    ``marker-ingest-origin-tag`` proves it: the tag ``origin_tag`` makes of the origin and ``value``
    under ``key`` (``INGEST_REDRIVE_KEY``), compared in constant time.

    None without a key, without either header, with a malformed origin or a tag that does not match:
    the message then keeps its own coordinates, as any input does. The last header of each counts.
    """
    if key is None:
        return None
    origin = tag = None
    for name, raw in headers:
        if name == ORIGIN_HEADER:
            origin = raw
        elif name == ORIGIN_TAG_HEADER:
            tag = raw
    if origin is None or tag is None:
        return None
    match = _ORIGIN.fullmatch(origin)
    if match is None or not hmac.compare_digest(origin_tag(key, origin.decode(), value).encode(), tag):
        return None
    topic, partition, offset, index = match.groups()
    return Origin(f"{topic.decode()}:{int(partition)}:{int(offset)}", int(index))


_TAG_CONTEXT = b"marker-ingest origin tag v1\x00"
"""Says what the MAC is for, and which version of its input: a MAC made for anything else never matches."""


def origin_tag(key: SecretStr, origin_id: str, value: bytes | None) -> str:
    """The ``marker-ingest-origin-tag`` of a message with ``value`` redriven from ``origin_id``:
    HMAC-SHA256 under ``key`` over the origin (length-prefixed) and the value (a null value is not
    an empty one), as lower-case hex.

    It binds what decides the message's events, their ids and their data, and nothing else: a valid
    tag can only give these ids to the records of this very payload again (the same article, which
    deduplication rightly drops), never to another article.
    """
    origin = origin_id.encode()
    mac = hmac.new(key.get_secret_value().encode(), _TAG_CONTEXT, hashlib.sha256)
    mac.update(len(origin).to_bytes(4, "big") + origin)
    if value is None:
        mac.update(b"\x00")
    else:
        mac.update(b"\x01")
        mac.update(value)
    return mac.hexdigest()


@dataclass(frozen=True, slots=True)
class Source:
    """The coordinates of one input message, and its origin when it was redriven."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None
    origin: Origin | None = None

    def event_id(self, record_index: int) -> str:
        """The deterministic event id of the record at ``record_index`` in this message.

        A redriven message's records take the ids of the records they were made from, so that
        redriving a dead letter twice gives events that deduplication on ``id`` catches.
        """
        origin = self.origin
        if origin is None:
            return f"{self.topic}:{self.partition}:{self.offset}:{record_index}"
        return f"{origin.message}:{origin.record_index + record_index}"


class Outcome(NamedTuple):
    """One record's fate: a serialized article event or dead-letter event, ready to publish.

    A NamedTuple rather than a frozen dataclass: the core builds one per record, and
    ``tuple.__new__`` builds it in a fifth of the time (measured, ``bench_core.py --components``).
    """

    record_index: int
    event_id: str
    key: bytes | None
    value: bytes
    error: ErrorCode | None = None
    fn: int | None = None

    @property
    def is_article(self) -> bool:
        """True for an article event, False for a dead letter."""
        return self.error is None


_new_outcome = tuple.__new__
"""``Outcome(...)`` without the Python-level ``__new__`` of a NamedTuple."""


def strip_bom(data: bytes) -> bytes:
    """The payload without its UTF-8 byte-order mark, if it has one."""
    return data[3:] if data.startswith(_BOM) else data


def describe_dead_letter(dead_letter: bytes) -> str:
    """One line for people: ``code at position: message`` of a serialized dead letter."""
    error = orjson.loads(dead_letter)["error"]
    where = f" at {error['position']}" if error["position"] is not None else ""
    return f"{error['code']}{where}: {error['message']}"


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime as RFC 3339 with millisecond precision and a ``Z`` for UTC."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_MAX_SECONDS = 253_402_300_799
"""The last second of 9999-12-31 (UTC): the latest time an RFC 3339 timestamp here can show."""


def _from_ms(ms: int) -> str | None:
    """A Kafka timestamp as RFC 3339 text, exact to the millisecond; None outside years 1970-9999.

    Kafka timestamps are whatever int64 a producer chose, so an impossible one must not raise.
    """
    seconds, millis = divmod(ms, 1000)
    if not 0 <= seconds <= _MAX_SECONDS:
        return None
    return _utc_second(seconds) + _MILLIS[millis]


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


@functools.lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC), computed once for all the messages of that second."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").removesuffix("+00:00")


def process_payload(
    value: bytes | None, source: Source, limits: Limits, *, now: dt.datetime, version: str
) -> list[Outcome]:
    """Turn one message's bytes into exactly one outcome per record (one for a payload failure)."""
    if value is None:
        problem = Problem(ErrorCode.EMPTY_PAYLOAD, "the message value is null")
        return _payload_failure(problem, None, source, limits, now, version)
    if len(value) > limits.max_payload_bytes:
        problem = Problem(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{len(value)} bytes, over the limit of {limits.max_payload_bytes}",
        )
        return _payload_failure(problem, value, source, limits, now, version)
    body = strip_bom(value)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = Problem(
            ErrorCode.INVALID_ENCODING,
            f"not UTF-8: {exc.reason} at byte {exc.start}",
            None,
            exc.start + (len(value) - len(body)),
        )
        return _payload_failure(problem, value, source, limits, now, version)
    if not text or text.isspace():
        problem = Problem(ErrorCode.EMPTY_PAYLOAD, "the payload is empty")
        return _payload_failure(problem, value, source, limits, now, version)
    # The hot path: a clean payload of valid records. Anything else takes the full path below,
    # which finds the precise problem; both give the same outcomes for a clean, valid payload.
    clean = scan_clean(text, limits.max_records_per_payload)
    if clean is not None:
        outcomes = _articles(clean, source, limits, now)
        if outcomes is not None:
            return outcomes
        records = scanned(text, clean)  # what scan_markers would find, without scanning again
    else:
        found = scan_markers(text, limits.max_records_per_payload)
        if isinstance(found, Problem):
            return _payload_failure(found, value, source, limits, now, version)
        records = found
    builder = _Builder(source, limits, now, version)
    return [builder.record(i, rec, text) for i, rec in enumerate(records)]


def _payload_failure(
    problem: Problem, payload: bytes | None, source: Source, limits: Limits, now: dt.datetime, version: str
) -> list[Outcome]:
    """The one dead letter of a payload that fails as a whole."""
    return [_Builder(source, limits, now, version).payload_failure(problem, payload)]


def _articles(
    records: list[CleanRecord], src: Source, limits: Limits, now: dt.datetime
) -> list[Outcome] | None:
    """The article events of a clean payload's records, or None if any record is invalid or too big.

    The hot path: per record, the same validation and event as ``_Builder.record`` makes of the same
    record, with cheaper checks (tests/unit/test_properties.py compares the two).
    """
    time = _event_time(src, now)
    source_uri = _source_uri(src.topic)
    outcomes = []
    for index, record in enumerate(records):
        values = record[1]
        article = article_from_values(values, limits)
        if article is None:
            return None
        # The DATE value passed validation, so it already is article.date.isoformat().
        outcome = _article(src, source_uri, time, index, article, values["date"], _article_limit(limits))
        if outcome is None:
            return None
        outcomes.append(outcome)
    return outcomes


def _article(
    src: Source, source_uri: str, time: str, index: int, article: ArticleData, date: str, max_bytes: int
) -> Outcome | None:
    """The article event of a valid record, or None when it would be over ``max_bytes``."""
    event_id = src.event_id(index)
    fn = article.fn
    subject = str(fn)
    event = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source_uri,
            "type": ARTICLE_EVENT_TYPE,
            "subject": subject,
            "time": time,
            "datacontenttype": "application/json",
            "dataschema": ARTICLE_DATASCHEMA,
            "kafkatopic": src.topic,
            "kafkapartition": src.partition,
            "kafkaoffset": src.offset,
            "recordindex": index,
            "data": {
                "fn": fn,
                "date": date,
                "title": article.title,
                "text": article.text,
                "extra": article.extra,
                "sha256": article.sha256,
            },
        }
    )
    if len(event) > max_bytes:
        return None
    return _new_outcome(Outcome, (index, event_id, subject.encode(), event, None, fn))


ARTICLE_RECORD_RESERVE = 256
"""Bytes an article's Kafka record adds to its event: the key (an FN, at most 18 digits), the
``content-type`` header and the record batch framing (at most 180 bytes; ``service.delivery.routing``)."""


def _article_limit(limits: Limits) -> int:
    """The largest article event whose Kafka record stays within ``max_event_bytes``."""
    return limits.max_event_bytes - ARTICLE_RECORD_RESERVE


def _event_time(src: Source, now: dt.datetime) -> str:
    """An article event's ``time``: the message's Kafka timestamp, else the processing time."""
    ts = src.timestamp_ms
    return (_from_ms(ts) if ts is not None else None) or rfc3339(now)


@functools.lru_cache(maxsize=256)
def _source_uri(topic: str) -> str:
    return f"urn:marker-ingest:topic:{topic}"


class _Builder:
    """Serializes outcomes for one message; holds what its records share."""

    __slots__ = ("_limits", "_now", "_source", "_source_uri", "_version")

    def __init__(self, source: Source, limits: Limits, now: dt.datetime, version: str) -> None:
        self._source = source
        self._limits = limits
        self._now = now
        self._version = version
        self._source_uri = _source_uri(source.topic)

    def record(self, index: int, rec: ScannedRecord, text: str) -> Outcome:
        checked = validate_record(rec.fields, self._limits, rec.problem)
        if isinstance(checked, ArticleData):
            time = _event_time(self._source, self._now)
            date = checked.date.isoformat()
            outcome = _article(
                self._source, self._source_uri, time, index, checked, date, _article_limit(self._limits)
            )
            if outcome is not None:
                return outcome
            checked = self._oversized(rec)
        return self._dead_letter(index, checked, "record", text=text[rec.start : rec.end].strip())

    def _oversized(self, rec: ScannedRecord) -> Problem:
        """The problem of a valid record whose article event is over ``max_event_bytes``."""
        name = max(rec.fields, key=lambda k: len(rec.fields[k].value))
        return Problem(
            ErrorCode.INVALID_FIELD,
            f"{name}: too long: the article event would be over the limit of "
            f"{self._limits.max_event_bytes} bytes (INGEST_MAX_EVENT_BYTES)",
            name,
            rec.fields[name].position,
        )

    def payload_failure(self, problem: Problem, value: bytes | None) -> Outcome:
        return self._dead_letter(0, problem, "payload", payload=value)

    def _dead_letter(
        self,
        index: int,
        problem: Problem,
        scope: str,
        *,
        text: str | None = None,
        payload: bytes | None = None,
    ) -> Outcome:
        src = self._source
        event_id = src.event_id(index)
        event = {
            "id": event_id,
            "type": DEAD_LETTER_EVENT_TYPE,
            "scope": scope,
            "time": rfc3339(self._now),
            "service_version": self._version,
            "source": {
                "topic": src.topic,
                "partition": src.partition,
                "offset": src.offset,
                "record_index": index,
                "key_base64": None
                if src.key is None or len(src.key) > MAX_KEY_COPY
                else base64.b64encode(src.key).decode(),
                "timestamp": None if src.timestamp_ms is None else _from_ms(src.timestamp_ms),
            },
            "error": {
                "code": problem.code.value,
                "message": shorten(problem.message, MAX_MESSAGE_CHARS),
                "field": None if problem.field is None else shorten(problem.field, MAX_FIELD_CHARS),
                "position": problem.position,
            },
        }
        binary = problem.code is ErrorCode.INVALID_ENCODING
        limit = self._limits.max_dead_letter_raw_bytes
        while True:
            event["raw"] = raw_copy(text, payload, limit, binary=binary)
            value = orjson.dumps(event)
            # JSON escapes can make a copy up to 6 times its input (a NUL is \u0000): cut until it fits.
            if len(value) <= self._limits.max_event_bytes or limit == 0:
                return _new_outcome(Outcome, (index, event_id, src.key, value, problem.code, None))
            limit = min(limit // 2, max(0, limit - (len(value) - self._limits.max_event_bytes)))
