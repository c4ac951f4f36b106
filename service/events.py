"""Event building: the raw bytes of one Kafka message in, one outcome per record out.

``process_payload`` is the whole functional core: decode, scan, validate, build and serialize.
It never raises on any input; data errors become dead-letter outcomes here and nowhere else.
Pure: the clock and the service version are passed in.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from dataclasses import dataclass

import orjson

from schemas.errors import ErrorCode
from schemas.events import (
    ARTICLE_DATASCHEMA,
    ARTICLE_EVENT_TYPE,
    DEAD_LETTER_EVENT_TYPE,
    ArticleData,
)
from service.limits import Limits
from service.parser import CleanRecord, Problem, ScannedRecord, scan_clean, scan_markers, scanned
from service.validation import article_from_values, validate_record

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Source:
    """The coordinates of one input message."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None

    def event_id(self, record_index: int) -> str:
        """The deterministic event id of the record at ``record_index`` in this message."""
        return f"{self.topic}:{self.partition}:{self.offset}:{record_index}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One record's fate: a serialized article event or dead-letter event, ready to publish."""

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


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime as RFC 3339 with millisecond precision and a ``Z`` for UTC."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Below this (the year 2096), ``ms / 1000`` is within half a microsecond of the exact value, so
# fromtimestamp's rounding to microseconds is exact and the milliseconds are simply ``ms % 1000``.
_EXACT_MS = 4_000_000_000_000


def _from_ms(ms: int) -> str:
    if 0 <= ms < _EXACT_MS:
        seconds, millis = divmod(ms, 1000)
        return _utc_second(seconds) + _MILLIS[millis]
    return rfc3339(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


@functools.lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC), computed once for all the messages of that second."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").removesuffix("+00:00")


def process_payload(
    value: bytes | None, source: Source, limits: Limits, *, now: dt.datetime, version: str
) -> list[Outcome]:
    """Turn one message's bytes into exactly one outcome per record (one for a payload failure)."""
    builder = _Builder(source, limits, now, version)
    if value is None:
        return [builder.payload_failure(Problem(ErrorCode.EMPTY_PAYLOAD, "the message value is null"), b"")]
    if len(value) > limits.max_payload_bytes:
        problem = Problem(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{len(value)} bytes, over the limit of {limits.max_payload_bytes}",
        )
        return [builder.payload_failure(problem, value)]
    body = value[3:] if value.startswith(_BOM) else value
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = Problem(
            ErrorCode.INVALID_ENCODING,
            f"not UTF-8: {exc.reason} at byte {exc.start}",
            None,
            exc.start + (len(value) - len(body)),
        )
        return [builder.payload_failure(problem, value)]
    if not text or text.isspace():
        return [builder.payload_failure(Problem(ErrorCode.EMPTY_PAYLOAD, "the payload is empty"), value)]
    # The hot path: a clean payload of valid records. Anything else takes the full path below,
    # which finds the precise problem; both give the same outcomes for a clean, valid payload.
    clean = scan_clean(text, limits.max_records_per_payload)
    if clean is not None:
        outcomes = builder.articles(clean)
        if outcomes is not None:
            return outcomes
        records = scanned(text, clean)  # what scan_markers would find, without scanning again
    else:
        found = scan_markers(text, limits.max_records_per_payload)
        if isinstance(found, Problem):
            return [builder.payload_failure(found, value)]
        records = found
    return [builder.record(i, rec, text) for i, rec in enumerate(records)]


class _Builder:
    """Serializes outcomes for one message; holds what its records share."""

    __slots__ = ("_limits", "_now", "_source", "_source_uri", "_time", "_version")

    def __init__(self, source: Source, limits: Limits, now: dt.datetime, version: str) -> None:
        self._source = source
        self._limits = limits
        self._now = now
        self._version = version
        self._time: str | None = None
        self._source_uri = f"urn:marker-ingest:topic:{source.topic}"

    def _event_time(self) -> str:
        if self._time is None:
            ts = self._source.timestamp_ms
            self._time = _from_ms(ts) if ts is not None and ts >= 0 else rfc3339(self._now)
        return self._time

    def record(self, index: int, rec: ScannedRecord, text: str) -> Outcome:
        problem = rec.problem
        if problem is None:
            article = validate_record(rec.fields, self._limits)
            if isinstance(article, ArticleData):
                return self.article(index, article, article.date.isoformat())
            problem = article
        return self._dead_letter(index, problem, "record", text=text[rec.start : rec.end].strip())

    def articles(self, records: list[CleanRecord]) -> list[Outcome] | None:
        """The article events of a clean payload's records, or None if any record is invalid."""
        outcomes = []
        for index, record in enumerate(records):
            values = record.values
            article = article_from_values(values, self._limits)
            if article is None:
                return None
            # The DATE value passed validation, so it already is article.date.isoformat().
            outcomes.append(self.article(index, article, values["date"]))
        return outcomes

    def article(self, index: int, article: ArticleData, date: str) -> Outcome:
        src = self._source
        event_id = src.event_id(index)
        fn = article.fn
        subject = str(fn)
        event = {
            "specversion": "1.0",
            "id": event_id,
            "source": self._source_uri,
            "type": ARTICLE_EVENT_TYPE,
            "subject": subject,
            "time": self._event_time(),
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
        return Outcome(index, event_id, subject.encode(), orjson.dumps(event), None, fn)

    def payload_failure(self, problem: Problem, value: bytes) -> Outcome:
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
                "key_base64": None if src.key is None else base64.b64encode(src.key).decode(),
                "timestamp": None
                if src.timestamp_ms is None or src.timestamp_ms < 0
                else _from_ms(src.timestamp_ms),
            },
            "error": {
                "code": problem.code.value,
                "message": problem.message,
                "field": problem.field,
                "position": problem.position,
            },
            "raw": _raw_copy(
                text,
                payload,
                self._limits.max_dead_letter_raw_bytes,
                binary=problem.code is ErrorCode.INVALID_ENCODING,
            ),
        }
        return Outcome(index, event_id, src.key, orjson.dumps(event), problem.code, None)


def _raw_copy(text: str | None, payload: bytes | None, limit: int, *, binary: bool) -> dict[str, object]:
    """The failing input for the dead letter: text when it is UTF-8, else base64; cut at ``limit``."""
    data = text.encode() if text is not None else (payload or b"")
    cut = data[:limit]
    if binary:
        return {
            "text": None,
            "base64": base64.b64encode(cut).decode(),
            "truncated": len(data) > limit,
            "size_bytes": len(data),
        }
    try:
        as_text: str | None = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut through a multi-byte character is not an encoding error of the input.
        as_text = (
            cut[: exc.start].decode("utf-8") if len(data) > limit and exc.start >= len(cut) - 3 else None
        )
    return {
        "text": as_text,
        "base64": None if as_text is not None else base64.b64encode(cut).decode(),
        "truncated": len(data) > limit,
        "size_bytes": len(data),
    }
