"""The published event contracts, as pydantic models.

The JSON Schema files beside this module are generated from these models
(``python -m schemas.generate``); a test fails when they drift. The service serializes events on
its hot path without going through these models, and the contract tests check that what it writes
validates against them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.json_schema import SkipJsonSchema

from schemas.errors import ErrorCode

ARTICLE_EVENT_TYPE = "io.markeringest.article.ingested.v1"
DEAD_LETTER_EVENT_TYPE = "io.markeringest.record.deadlettered.v1"
REDRIVE_MARKER_TYPE = "io.markeringest.record.redriven.v1"
ARTICLE_DATASCHEMA = "urn:marker-ingest:schema:article-ingested:v1"
DEAD_LETTER_SCHEMA = "urn:marker-ingest:schema:record-dead-lettered:v1"
REDRIVE_MARKER_SCHEMA = "urn:marker-ingest:schema:record-redriven:v1"
# The JSON Schema file of each model, beside this module (written by ``python -m schemas.generate``).
ARTICLE_SCHEMA_FILE = "article-ingested.v1.schema.json"
DEAD_LETTER_SCHEMA_FILE = "record-dead-lettered.v1.schema.json"
REDRIVE_MARKER_SCHEMA_FILE = "record-redriven.v1.schema.json"

ERROR_CODE_HEADER = "marker-ingest-error-code"
"""The header every dead letter carries: its error code (the input's own headers are kept too)."""
REDRIVE_COUNT_HEADER = "marker-ingest-redrive-count"
"""How many times a message was redriven; dead letters keep it, ``redrive`` increments it."""
ORIGIN_HEADER = "marker-ingest-origin-id"
"""Set by ``redrive``: the id of the record a redriven message was made from. The service gives the
message's records the ids that follow it, so a record redriven twice keeps one id; only when
``marker-ingest-origin-tag`` proves that ``redrive`` set it (no other message chooses its ids)."""
ORIGIN_TAG_HEADER = "marker-ingest-origin-tag"
"""Set by ``redrive`` beside the origin: HMAC-SHA256 keyed with ``INGEST_REDRIVE_KEY`` over the
origin and the message value, as 64 lower-case hex digits. Without it, or wrong, the origin is ignored."""
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
"""A ``traceparent`` as the events carry it (version ``00``'s fields)."""
ORIGIN_TRACEPARENT_HEADER = "marker-ingest-origin-traceparent"
"""On a dead letter: the trace its record started (the CloudEvents ``traceparent`` its article would
have had: the input's ``traceparent``, the service's ``process`` span when tracing is on, or a
redriven record's original one). ``redrive`` copies it onto the message it publishes, bound into
``marker-ingest-origin-tag``, and the article made from it keeps that trace."""
REDRIVEN_HEADER = "marker-ingest-redriven"
"""On a redrive marker, and never on a dead letter: ``<partition>:<offset>`` of the dead letter it
marks. Readers of the dead-letter topic tell markers from dead letters by it (or by the absence of
``marker-ingest-error-code``, which every dead letter has)."""
DROPPED_HEADER = "marker-ingest-dropped"
"""On a dead letter whose input key or headers were too large to copy: ``key``, ``headers`` or both."""
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
"""The ``content-type`` header of article events: CloudEvents' Kafka binding, structured mode."""

MAX_FN = 10**18 - 1
"""FN is at most 18 decimal digits, so it fits a signed 64-bit integer in every consumer."""

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _no_default(schema: dict[str, Any]) -> None:
    """An optional attribute that is absent, never null: no ``"default": null`` in its schema."""
    schema.pop("default", None)


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArticleData(_Contract):
    """One valid record: the ``data`` of an article event."""

    fn: Annotated[int, Field(ge=0, le=MAX_FN, description="The article's number (FN).")]
    date: Annotated[dt.date, Field(description="The article's date (DATE), ISO YYYY-MM-DD.")]
    title: Annotated[str, Field(min_length=1, description="The title (TITLE), trimmed.")]
    text: Annotated[str, Field(min_length=1, description="The body (TEXT), trimmed.")]
    extra: Annotated[
        dict[str, str],
        Field(description="Other well-formed fields, by lower-cased name (S-O-U-R-C-E -> source)."),
    ]
    sha256: Annotated[
        Sha256Hex,
        Field(
            description="SHA-256 of the normalized record: fn, date, title, text, then each extra "
            "field as name=value in name order, joined by U+001F, encoded as UTF-8."
        ),
    ]


class ArticleIngested(_Contract):
    """An article event: a CloudEvents 1.0 event in structured JSON mode."""

    specversion: Literal["1.0"]
    id: Annotated[
        str,
        Field(
            description="Deterministic from the source coordinates: "
            "'<topic>:<partition>:<offset>:<record index>'. A redelivered message yields the same id; "
            "a redriven one the ids of the records it was made from (marker-ingest-origin-id, "
            "honoured only with a valid marker-ingest-origin-tag)."
        ),
    ]
    source: Annotated[str, Field(description="'urn:marker-ingest:topic:<input topic>'.")]
    type: Literal["io.markeringest.article.ingested.v1"]
    subject: Annotated[str, Field(description="The article's FN, as text.")]
    time: Annotated[dt.datetime, Field(description="The input message's Kafka timestamp (RFC 3339).")]
    datacontenttype: Literal["application/json"]
    dataschema: Literal["urn:marker-ingest:schema:article-ingested:v1"]
    kafkatopic: Annotated[str, Field(description="Extension: input topic.")]
    kafkapartition: Annotated[int, Field(ge=0, description="Extension: input partition.")]
    kafkaoffset: Annotated[int, Field(ge=0, description="Extension: input offset.")]
    recordindex: Annotated[int, Field(ge=0, description="Extension: index of the record in its payload.")]
    # Absent rather than null when the message had none: the schema shows the string alone.
    traceparent: Annotated[
        str | SkipJsonSchema[None],
        Field(
            pattern=TRACEPARENT_PATTERN,
            description="Extension (CloudEvents distributed tracing): the trace the record started, set "
            "once at ingest: the input message's W3C traceparent when it carried a valid one (a "
            "redriven record's original one, marker-ingest-origin-traceparent); else, with tracing on, "
            "the service's process span; absent otherwise.",
            json_schema_extra=_no_default,
        ),
    ] = None
    data: ArticleData

    @model_serializer(mode="wrap")
    def _absent_traceparent(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation on purpose: pydantic then keeps the model's own serialization schema.
        dumped = handler(self)
        if dumped.get("traceparent", 0) is None:
            del dumped["traceparent"]
        return dumped


class SourceCoordinates(_Contract):
    """Where the dead-lettered input came from."""

    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    record_index: Annotated[
        int, Field(ge=0, description="Index of the record in its payload; 0 for a payload-level error.")
    ]
    key_base64: Annotated[
        str | None,
        Field(
            description="The input message key, base64; null if none or over 4 KiB (the Kafka key has it)."
        ),
    ]
    timestamp: Annotated[dt.datetime | None, Field(description="The input message's Kafka timestamp.")]


class ErrorDetail(_Contract):
    """What was wrong, precisely."""

    code: ErrorCode
    message: Annotated[str, Field(description="A human explanation; wording may change, codes do not.")]
    field: Annotated[
        str | None, Field(description="The field concerned, lower-cased (fn, date...), where one applies.")
    ]
    position: Annotated[
        int | None,
        Field(
            ge=0,
            description="Character offset in the decoded payload (after any BOM) where the problem "
            "starts; a byte offset for invalid_encoding; null where no position applies.",
        ),
    ]


class RawInput(_Contract):
    """The failing input, so that it can be fixed and redriven."""

    text: Annotated[
        str | None,
        Field(description="The record (or payload) as text; null if not UTF-8, or if the value was null."),
    ]
    base64: Annotated[
        str | None,
        Field(
            description="The payload as base64 when it is not valid UTF-8. Both text and base64 are "
            "null only when the message value was null."
        ),
    ]
    truncated: Annotated[bool, Field(description="True when text/base64 is a truncated copy.")]
    size_bytes: Annotated[int, Field(ge=0, description="Size of the original record or payload in bytes.")]


class RecordDeadLettered(_Contract):
    """A dead-letter event: one record (or one whole payload) that could not become an article."""

    id: Annotated[
        str,
        Field(
            description="Deterministic, same scheme as article event ids; source gives where the "
            "dead-lettered message was read."
        ),
    ]
    type: Literal["io.markeringest.record.deadlettered.v1"]
    scope: Annotated[
        Literal["record", "payload"],
        Field(description="'payload' when the whole message failed (see the payload-level codes)."),
    ]
    time: Annotated[dt.datetime, Field(description="When the service dead-lettered it (RFC 3339).")]
    service_version: str
    source: SourceCoordinates
    error: ErrorDetail
    raw: RawInput


class RedrivenDeadLetter(_Contract):
    """The dead letter a redrive marker marks."""

    id: Annotated[str, Field(description="The dead letter's id.")]
    scope: Literal["record", "payload"]
    partition: Annotated[int, Field(ge=0, description="Its partition on the dead-letter topic.")]
    offset: Annotated[int, Field(ge=0, description="Its offset on the dead-letter topic.")]


class RecordRedriven(_Contract):
    """A redrive marker: ``redrive`` published the input of one dead letter (written on the
    dead-letter topic, in the same transaction as that input with INGEST_DELIVERY=exactly-once)."""

    type: Literal["io.markeringest.record.redriven.v1"]
    time: Annotated[dt.datetime, Field(description="When it was redriven (RFC 3339).")]
    service_version: str
    dead_letter: RedrivenDeadLetter
    redrive_count: Annotated[
        int, Field(ge=1, description="The marker-ingest-redrive-count of the message published.")
    ]
    target_topic: Annotated[str, Field(description="Where the input was published.")]
