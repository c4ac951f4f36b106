"""Where an outcome goes: its destination topic, key and headers, decided without I/O.

An article event goes to the output topic, keyed by its FN, with the ``content-type`` header of
CloudEvents' Kafka protocol binding in structured mode. A dead letter goes to the dead-letter topic
with the input's key and headers (the service's own headers replaced), and the whole Kafka record,
key, headers and framing included, is kept within ``INGEST_MAX_EVENT_BYTES``: the raw copy is cut
first; only if the event does not fit even with an empty copy are the input's headers, then its
key, left out (``marker-ingest-dropped`` names what was).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from schemas.events import CLOUDEVENTS_CONTENT_TYPE, DROPPED_HEADER, ERROR_CODE_HEADER
from service.core.dead_letters import fit_dead_letter
from service.core.events import Outcome

CONTENT_TYPE_HEADER = "content-type"

Headers = Sequence[tuple[str, bytes]]

ARTICLE_HEADERS: Headers = [(CONTENT_TYPE_HEADER, CLOUDEVENTS_CONTENT_TYPE.encode())]
"""The headers of every article event: one shared list (aiokafka's record builder takes only a
list, and never changes it)."""

_SERVICE_HEADERS = frozenset({ERROR_CODE_HEADER, DROPPED_HEADER})
"""Headers only the service sets on dead letters: an input's copy of them is never carried over."""

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
        size += HEADER_OVERHEAD + len(name.encode()) + len(header)
    return size


def route(outcome: Outcome, input_headers: Headers, routes: Routes) -> Destination:
    """The destination, key, value and headers of one outcome of a message with ``input_headers``."""
    if outcome.error is None:
        return Destination(routes.output_topic, outcome.key, outcome.value, ARTICLE_HEADERS)
    own = [(ERROR_CODE_HEADER, outcome.error.value.encode())]
    copied = [(k, v) for k, v in input_headers if k not in _SERVICE_HEADERS]
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


def _loses_something(dropped: str, key: bytes | None, copied: list[tuple[str, bytes]]) -> bool:
    """False when a candidate drops only what is not there (no key, no headers): nothing to try."""
    return ("key" not in dropped or key is not None) and ("headers" not in dropped or bool(copied))
