"""The Python record path: one message's bytes to one outcome per record, in Python alone.

It is the reference the compiled record path (``articles`` in ``_speedups.c``) is held to byte for
byte, and the path of every payload that is not for the compiled one (a payload failure, an invalid
or oversized record, a build without the C speedups). ``reference_outcomes`` first takes its own hot
path for a clean payload of valid records (``_articles``), and else finds each record's precise
problem (``_Builder``); both give the same outcomes for a clean, valid payload
(tests/unit/test_properties.py). The entry points are ``service.core.events``'s.
"""

from __future__ import annotations

import base64
import datetime as dt

import orjson

from schemas.errors import ErrorCode
from schemas.events import ARTICLE_DATASCHEMA, ARTICLE_EVENT_TYPE, DEAD_LETTER_EVENT_TYPE, ArticleData
from service.core.dead_letters import MAX_FIELD_CHARS, MAX_KEY_COPY, MAX_MESSAGE_CHARS, raw_copy, shorten
from service.core.limits import Limits
from service.core.message import (
    Outcome,
    Source,
    article_limit,
    event_time,
    from_ms,
    new_outcome,
    rfc3339,
    source_uri_of,
    strip_bom,
)
from service.core.parser import CleanRecord, Problem, ScannedRecord, scan_clean, scan_markers, scanned
from service.core.validation import article_from_values, validate_record


def reference_outcomes(
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
    time = event_time(src, now)
    source_uri = source_uri_of(src.topic)
    outcomes = []
    for index, record in enumerate(records):
        values = record[1]
        article = article_from_values(values, limits)
        if article is None:
            return None
        # The DATE value passed validation, so it already is article.date.isoformat().
        outcome = _article(
            src, source_uri, time, index, article, values["date"], article_limit(limits), traceparent
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
    return new_outcome(Outcome, (index, event_id, subject.encode(), value, None, fn))


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
        self._source_uri = source_uri_of(source.topic)

    def record(self, index: int, rec: ScannedRecord, text: str) -> Outcome:
        checked = validate_record(rec.fields, self._limits, rec.problem)
        if isinstance(checked, ArticleData):
            time = event_time(self._source, self._now)
            date = checked.date.isoformat()
            outcome = _article(
                self._source,
                self._source_uri,
                time,
                index,
                checked,
                date,
                article_limit(self._limits),
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
                "timestamp": None if src.timestamp_ms is None else from_ms(src.timestamp_ms),
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
                return new_outcome(Outcome, (index, event_id, src.key, value, problem.code, None))
            limit = min(limit // 2, max(0, limit - (len(value) - self._limits.max_event_bytes)))
