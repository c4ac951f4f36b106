"""Event building: the raw bytes of one Kafka message in, one outcome per record out.

``process_payload`` is the whole functional core: decode, scan, validate, build and serialize.
It never raises on any input; data errors become dead-letter outcomes here and nowhere else.
Pure: the clock and the service version are passed in.

A clean payload of valid records takes the compiled record path (``articles`` in
``service/core/_speedups.c``: scan, checks, SHA-256 and the event's JSON in C) where it was built;
everything else takes the Python path, ``process_payload_reference``, which gives the same outcomes
byte for byte (tests/unit/test_compiled_path.py, scripts/fuzz_compiled.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
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


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a W3C traceparent (version 00's form: version, trace id, parent id and
    flags in lower-case hex; not version ff, nor an all-zero id), else None: W3C Trace Context has a
    receiver ignore a traceparent it cannot parse."""
    if (
        value is None
        or len(value) != 55
        or _TRACEPARENT.fullmatch(value) is None
        or value.startswith("ff")
        or value[3:35] == "0" * 32
        or value[36:52] == "0" * 16
    ):
        return None
    return value


try:
    from service.core import _speedups
except ImportError:  # built without a C compiler
    _speedups = None  # type: ignore[assignment]

_compiled: Callable[..., list[Outcome] | None] | None = getattr(_speedups, "articles", None)
"""The compiled record path, None where it was not built (or an older build lacks it)."""
COMPILED = _compiled is not None
"""True when clean payloads of valid records take the compiled record path."""


def process_payload(
    value: bytes | None,
    source: Source,
    limits: Limits,
    *,
    now: dt.datetime,
    version: str,
    traceparent: str | None = None,
) -> list[Outcome]:
    """Turn one message's bytes into exactly one outcome per record (one for a payload failure).

    ``traceparent``, the message's W3C traceparent, goes into each article event as the CloudEvents
    distributed-tracing extension; an invalid one is ignored (``valid_traceparent``).
    """
    if traceparent is not None:
        traceparent = valid_traceparent(traceparent)
    if _compiled is not None and value is not None:
        outcomes = _compiled_outcomes(_compiled, value, source, limits, now, traceparent)
        if outcomes is not None:
            return outcomes
    return _process(value, source, limits, now, version, traceparent)


def compiled_articles(
    value: bytes, source: Source, limits: Limits, *, now: dt.datetime, traceparent: str | None = None
) -> list[Outcome] | None:
    """The compiled record path alone: the article outcomes of a clean payload of valid records
    (within ``max_payload_bytes``), else None, also where the C speedups were not built.

    ``traceparent`` must be valid or None (``valid_traceparent``).
    """
    if _compiled is None:
        return None
    return _compiled_outcomes(_compiled, value, source, limits, now, traceparent)


def _compiled_outcomes(
    compiled: Callable[..., list[Outcome] | None],
    value: bytes,
    src: Source,
    limits: Limits,
    now: dt.datetime,
    traceparent: str | None,
) -> list[Outcome] | None:
    if len(value) > limits.max_payload_bytes:
        return None
    # The per-message values, computed once: the event id of record i is the prefix followed by
    # first + i (as Source.event_id makes it; the differential tests hold the two together), the
    # time, the source URI, the size limit of an article event.
    origin = src.origin
    if origin is None:
        prefix, first = f"{src.topic}:{src.partition}:{src.offset}:", 0
    else:
        prefix, first = f"{origin.message}:", origin.record_index
    return compiled(
        Outcome,
        value,
        prefix,
        first,
        _source_uri(src.topic),
        _event_time(src, now),
        src.topic,
        src.partition,
        src.offset,
        traceparent,
        limits.max_records_per_payload,
        limits.max_title_chars,
        limits.max_text_chars,
        limits.max_event_bytes - ARTICLE_RECORD_RESERVE,
    )


def process_payload_reference(
    value: bytes | None,
    source: Source,
    limits: Limits,
    *,
    now: dt.datetime,
    version: str,
    traceparent: str | None = None,
) -> list[Outcome]:
    """``process_payload`` in Python alone: the reference the compiled record path is held to, and
    the path of every payload that is not for it."""
    if traceparent is not None:
        traceparent = valid_traceparent(traceparent)
    return _process(value, source, limits, now, version, traceparent)


def _process(
    value: bytes | None,
    source: Source,
    limits: Limits,
    now: dt.datetime,
    version: str,
    traceparent: str | None,
) -> list[Outcome]:
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
    # The hot path of the Python path: a clean payload of valid records. Anything else takes the
    # full path below, which finds the precise problem; both give the same outcomes for a clean,
    # valid payload.
    clean = scan_clean(text, limits.max_records_per_payload)
    if clean is not None:
        outcomes = _articles(clean, source, limits, now, traceparent)
        if outcomes is not None:
            return outcomes
        records = scanned(text, clean)  # what scan_markers would find, without scanning again
    else:
        found = scan_markers(text, limits.max_records_per_payload)
        if isinstance(found, Problem):
            return _payload_failure(found, value, source, limits, now, version)
        records = found
    builder = _Builder(source, limits, now, version, traceparent)
    return [builder.record(i, rec, text) for i, rec in enumerate(records)]


def _payload_failure(
    problem: Problem, payload: bytes | None, source: Source, limits: Limits, now: dt.datetime, version: str
) -> list[Outcome]:
    """The one dead letter of a payload that fails as a whole."""
    return [_Builder(source, limits, now, version).payload_failure(problem, payload)]


def _articles(
    records: list[CleanRecord],
    src: Source,
    limits: Limits,
    now: dt.datetime,
    traceparent: str | None = None,
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
        outcome = _article(
            src, source_uri, time, index, article, values["date"], _article_limit(limits), traceparent
        )
        if outcome is None:
            return None
        outcomes.append(outcome)
    return outcomes


def _article(
    src: Source,
    source_uri: str,
    time: str,
    index: int,
    article: ArticleData,
    date: str,
    max_bytes: int,
    traceparent: str | None = None,
) -> Outcome | None:
    """The article event of a valid record, or None when it would be over ``max_bytes``."""
    event_id = src.event_id(index)
    fn = article.fn
    subject = str(fn)
    event: dict[str, object] = {
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
    }
    if traceparent is not None:
        event["traceparent"] = traceparent
    event["data"] = {
        "fn": fn,
        "date": date,
        "title": article.title,
        "text": article.text,
        "extra": article.extra,
        "sha256": article.sha256,
    }
    value = orjson.dumps(event)
    if len(value) > max_bytes:
        return None
    return _new_outcome(Outcome, (index, event_id, subject.encode(), value, None, fn))


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

    __slots__ = ("_limits", "_now", "_source", "_source_uri", "_traceparent", "_version")

    def __init__(
        self, source: Source, limits: Limits, now: dt.datetime, version: str, traceparent: str | None = None
    ) -> None:
        self._source = source
        self._limits = limits
        self._now = now
        self._version = version
        self._traceparent = traceparent
        self._source_uri = _source_uri(source.topic)

    def record(self, index: int, rec: ScannedRecord, text: str) -> Outcome:
        checked = validate_record(rec.fields, self._limits, rec.problem)
        if isinstance(checked, ArticleData):
            time = _event_time(self._source, self._now)
            date = checked.date.isoformat()
            outcome = _article(
                self._source,
                self._source_uri,
                time,
                index,
                checked,
                date,
                _article_limit(self._limits),
                self._traceparent,
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
