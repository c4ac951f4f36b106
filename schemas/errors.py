"""The dead-letter error codes: a stable, public contract.

Codes are only ever added, never renamed or removed. Each has a one-line meaning that docs/contracts.md,
the JSON Schema and the AsyncAPI document repeat.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a payload or a record became a dead letter."""

    INVALID_ENCODING = "invalid_encoding"
    EMPTY_PAYLOAD = "empty_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NO_MARKERS = "no_markers"
    UNTERMINATED_FIELD = "unterminated_field"
    UNMATCHED_END = "unmatched_end"
    DUPLICATE_FIELD = "duplicate_field"
    MISSING_FIELD = "missing_field"
    STRAY_TEXT = "stray_text"
    INVALID_FIELD = "invalid_field"
    TOO_MANY_RECORDS = "too_many_records"

    @property
    def description(self) -> str:
        """A one-line meaning of the code, as documented."""
        return DESCRIPTIONS[self]

    @property
    def payload_level(self) -> bool:
        """True when the code condemns the whole payload rather than one record."""
        return self in PAYLOAD_LEVEL


DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ENCODING: "the payload is not UTF-8",
    ErrorCode.EMPTY_PAYLOAD: "the payload is null, empty or white space only",
    ErrorCode.PAYLOAD_TOO_LARGE: "the payload is over the payload size limit",
    ErrorCode.NO_MARKERS: "the payload is text with no field markers at all",
    ErrorCode.UNTERMINATED_FIELD: "a START marker has no matching END before the next marker or the end",
    ErrorCode.UNMATCHED_END: "an END marker has no open field of that name",
    ErrorCode.DUPLICATE_FIELD: "a field appears twice in one record",
    ErrorCode.MISSING_FIELD: "a required field is absent (error.field names it)",
    ErrorCode.STRAY_TEXT: "non-white-space text stands outside any field",
    ErrorCode.INVALID_FIELD: "a field value fails validation (bad FN, impossible date, empty or too long)",
    ErrorCode.TOO_MANY_RECORDS: "the payload holds more records than the per-payload limit",
}

PAYLOAD_LEVEL: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.INVALID_ENCODING,
        ErrorCode.EMPTY_PAYLOAD,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.NO_MARKERS,
        ErrorCode.TOO_MANY_RECORDS,
    }
)
