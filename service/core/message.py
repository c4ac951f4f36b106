"""One input message as the core sees it, and what it makes of it: ``Source``, the message's
coordinates (and its proven origin, when it was redriven), which give its events their ids;
``Outcome``, one record's serialized event; and the values the events of either record path take
from the message: the time (``event_time``), the source URI, the size an article event may have.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import NamedTuple

from schemas.errors import ErrorCode
from service.core.limits import Limits
from service.core.origin import Origin

_BOM = b"\xef\xbb\xbf"


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


new_outcome = tuple.__new__
"""``Outcome(...)`` without the Python-level ``__new__`` of a NamedTuple."""


def strip_bom(data: bytes) -> bytes:
    """The payload without its UTF-8 byte-order mark, if it has one."""
    return data[3:] if data.startswith(_BOM) else data


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime as RFC 3339 with millisecond precision and a ``Z`` for UTC."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_MAX_SECONDS = 253_402_300_799
"""The last second of 9999-12-31 (UTC): the latest time an RFC 3339 timestamp here can show."""


def from_ms(ms: int) -> str | None:
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


ARTICLE_RECORD_RESERVE = 256
"""Bytes an article's Kafka record adds to its event: the key (an FN, at most 18 digits), the
``content-type`` header and the record batch framing (at most 180 bytes; ``service.delivery.routing``)."""


def article_limit(limits: Limits) -> int:
    """The largest article event whose Kafka record stays within ``max_event_bytes``."""
    return limits.max_event_bytes - ARTICLE_RECORD_RESERVE


def event_time(src: Source, now: dt.datetime) -> str:
    """An article event's ``time``: the message's Kafka timestamp, else the processing time."""
    ts = src.timestamp_ms
    return (from_ms(ts) if ts is not None else None) or rfc3339(now)


@functools.lru_cache(maxsize=256)
def source_uri_of(topic: str) -> str:
    return f"urn:marker-ingest:topic:{topic}"
