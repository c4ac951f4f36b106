"""Event building: the raw bytes of one Kafka message in, one outcome per record out.

``process_payload`` is the whole functional core: decode, scan, validate, build and serialize.
It never raises on any input; data errors become dead-letter outcomes here and nowhere else.
Pure: the clock and the service version are passed in.

A clean payload of valid records takes the compiled record path (``articles`` in
``service/core/_speedups.c``: scan, checks, SHA-256 and the event's JSON in C) where it was built;
everything else takes the Python path, ``process_payload_reference`` (``service.core.reference``),
which gives the same outcomes byte for byte (tests/unit/test_compiled_path.py,
scripts/fuzz_compiled.py). What goes in and out, ``Source`` and ``Outcome``, is
``service.core.message``'s; the origin a redriven message proves, ``service.core.origin``'s.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import orjson

from service.core.limits import Limits
from service.core.message import ARTICLE_RECORD_RESERVE, Outcome, Source, event_time, source_uri_of
from service.core.reference import reference_outcomes

__all__ = [
    "COMPILED",
    "Outcome",
    "Source",
    "compiled_articles",
    "describe_dead_letter",
    "process_payload",
    "process_payload_reference",
    "valid_traceparent",
]


def describe_dead_letter(dead_letter: bytes) -> str:
    """One line for people: ``code at position: message`` of a serialized dead letter."""
    error = orjson.loads(dead_letter)["error"]
    where = f" at {error['position']}" if error["position"] is not None else ""
    return f"{error['code']}{where}: {error['message']}"


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
    return reference_outcomes(value, source, limits, now, version, traceparent)


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
        source_uri_of(src.topic),
        event_time(src, now),
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
    return reference_outcomes(value, source, limits, now, version, traceparent)
