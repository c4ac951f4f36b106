"""Where an outcome goes: its destination topic, key and headers, decided without I/O.

An article event goes to the output topic, keyed by its FN, with the ``content-type`` header of
CloudEvents' Kafka protocol binding in structured mode. A dead letter goes to the dead-letter topic
with the input's key and the input headers it keeps (``carried_headers``), and the whole Kafka
record, key, headers and framing included, is kept within ``INGEST_MAX_EVENT_BYTES``: the raw copy
is cut first; only if the event does not fit even with an empty copy are the input's headers, then
its key, left out (``marker-ingest-dropped`` names what was).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from schemas.events import (
    CLOUDEVENTS_CONTENT_TYPE,
    DROPPED_HEADER,
    ERROR_CODE_HEADER,
    ORIGIN_TRACEPARENT_HEADER,
    REDRIVE_COUNT_HEADER,
)
from service.core.dead_letters import fit_dead_letter
from service.core.events import Outcome
from service.core.trace_context import TRACEPARENT, TRACESTATE, TraceContext

CONTENT_TYPE_HEADER = "content-type"

Headers = Sequence[tuple[str, bytes]]

ARTICLE_HEADERS: Headers = [(CONTENT_TYPE_HEADER, CLOUDEVENTS_CONTENT_TYPE.encode())]
"""The headers of every article event: one shared list (aiokafka's record builder takes only a
list, and never changes it)."""

SERVICE_HEADER_PREFIX = "marker-ingest-"
"""The service's own header names; of an input's, a dead letter keeps only a redrive count."""
_COUNT = re.compile(rb"[0-9]{1,9}")
"""A well-formed ``marker-ingest-redrive-count``: what ``redrive`` writes, and no more digits."""

BATCH_OVERHEAD = 61
"""The fixed part of a Kafka record batch (magic v2)."""
RECORD_OVERHEAD = 36
"""A record's framing at most: its length, attributes, timestamp and offset deltas, key and value
lengths and header count, each a varint of at most its widest size."""
HEADER_OVERHEAD = 10
"""A header's two length varints at most."""


@dataclass(frozen=True, slots=True)
class Routes:
    """The settings routing depends on."""

    output_topic: str
    dlq_topic: str
    max_record_bytes: int
    """``INGEST_MAX_EVENT_BYTES``: the largest Kafka record (batch of one) the service writes."""


class Destination(NamedTuple):
    """What goes to the broker for one outcome."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the size of a record batch holding only this record, as a broker counts it
    against ``max.message.bytes``."""
    size = BATCH_OVERHEAD + RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header in headers:
        size += HEADER_OVERHEAD + len(name.encode()) + len(header or b"")  # a null value is None
    return size


def carried_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The input headers a dead letter keeps, in their order.

    Left out: ``content-type`` and ``ce_*`` (in any case), which describe the input, or would make
    the dead letter look like a CloudEvent to CloudEvents readers (a dead letter is plain JSON); and
    the service's own ``marker-ingest-*`` headers, except the last ``marker-ingest-redrive-count``
    when it is well-formed (else the dead letter has none, and ``redrive`` counts 0); and
    ``traceparent`` and ``tracestate``, for which ``route`` puts the input's valid trace context,
    if it has one (an invalid one is never passed on). Every other header is kept as it came, for
    ``redrive``.
    """
    kept = []
    count = None
    for name, value in headers:
        folded = name.lower()
        if folded.startswith(SERVICE_HEADER_PREFIX):
            if name == REDRIVE_COUNT_HEADER:
                count = value
        elif folded not in _REPLACED and not folded.startswith("ce_"):
            kept.append((name, value))
    if count is not None and _COUNT.fullmatch(count):
        kept.append((REDRIVE_COUNT_HEADER, count))
    return kept


_REPLACED = frozenset({"content-type", TRACEPARENT, TRACESTATE})


def redrive_count(headers: Iterable[tuple[str, bytes]]) -> int:
    """The ``marker-ingest-redrive-count`` of a message or dead letter: the last such header's; 0
    without one, or when it is malformed (a forged count must not make a dead letter unredrivable)."""
    value = None
    for name, raw in headers:
        if name == REDRIVE_COUNT_HEADER:
            value = raw
    return int(value) if value is not None and _COUNT.fullmatch(value) else 0


def route(
    outcome: Outcome,
    input_headers: Headers,
    routes: Routes,
    context: TraceContext | None = None,
    starting: str | None = None,
) -> Destination:
    """The destination, key, value and headers of one outcome of a message with ``input_headers``.

    ``context`` is the trace context each event passes on: the one read from the input
    (``trace_context``), or with tracing on the ``send`` span's. ``starting`` is the trace the
    record started (its article's CloudEvents ``traceparent``), which a dead letter keeps in
    ``marker-ingest-origin-traceparent`` for ``redrive``."""
    if outcome.error is None:
        if context is None:
            return Destination(routes.output_topic, outcome.key, outcome.value, ARTICLE_HEADERS)
        return _article(outcome, routes, context)
    own = [(ERROR_CODE_HEADER, outcome.error.value.encode())]
    if starting is not None:
        own.append((ORIGIN_TRACEPARENT_HEADER, starting.encode()))
    copied = carried_headers(input_headers)
    if context is not None:
        copied.extend(context.headers())
    key, value = outcome.key, outcome.value
    headers = [*copied, *own]
    if record_size(key, value, headers) <= routes.max_record_bytes:
        return Destination(routes.dlq_topic, key, value, headers)
    candidates: list[tuple[bytes | None, list[tuple[str, bytes]], str]] = [
        (key, copied, ""),
        (key, [], "headers"),
        (None, copied, "key"),
        (None, [], "key,headers"),
    ]
    for cand_key, cand_copied, dropped in candidates:
        if dropped and not _loses_something(dropped, key, copied):
            continue
        cand_headers = [*cand_copied, *own]
        if dropped:
            cand_headers.append((DROPPED_HEADER, dropped.encode()))
        room = routes.max_record_bytes - record_size(cand_key, b"", cand_headers)
        fitted = fit_dead_letter(value, room)
        if fitted is not None:
            return Destination(routes.dlq_topic, cand_key, fitted, cand_headers)
    # Not even the service's own event fits: it still goes, as small as the core could make it.
    return Destination(routes.dlq_topic, None, value, [*own, (DROPPED_HEADER, b"key,headers")])


def _article(outcome: Outcome, routes: Routes, context: TraceContext) -> Destination:
    """An article event with the input's trace context after ``content-type``. The core keeps the
    event within ``INGEST_MAX_EVENT_BYTES`` with room for its key and ``content-type`` only: a
    ``tracestate`` that would not fit is left out, then the ``traceparent`` (the event's own
    ``traceparent`` attribute still names the trace)."""
    key, value = outcome.key, outcome.value
    for headers in (
        [*ARTICLE_HEADERS, *context.headers()],
        [*ARTICLE_HEADERS, (TRACEPARENT, context.traceparent)],
    ):
        if record_size(key, value, headers) <= routes.max_record_bytes:
            return Destination(routes.output_topic, key, value, headers)
    return Destination(routes.output_topic, key, value, ARTICLE_HEADERS)


def _loses_something(dropped: str, key: bytes | None, copied: list[tuple[str, bytes]]) -> bool:
    """False when a candidate drops only what is not there (no key, no headers): nothing to try."""
    return ("key" not in dropped or key is not None) and ("headers" not in dropped or bool(copied))
