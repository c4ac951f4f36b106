"""Where a redriven message first came from, proven: ``redrive`` stamps each message it publishes
with the id of the record it was made from (``marker-ingest-origin-id``) and an HMAC of that origin
and the message value under ``INGEST_REDRIVE_KEY`` (``marker-ingest-origin-tag``, ``origin_tag``);
the service gives the message's events the ids that follow the origin only when the tag proves it
(``origin_of``). Pure.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import NamedTuple

from pydantic import SecretStr

from schemas.events import ORIGIN_HEADER, ORIGIN_TAG_HEADER, ORIGIN_TRACEPARENT_HEADER
from service.core.trace_context import TRACEPARENT_CHARS, parse_traceparent


class Origin(NamedTuple):
    """Where a redriven message first came from: its first record's event id, split in two."""

    message: str
    """``<topic>:<partition>:<offset>`` of the original input message."""
    record_index: int
    """The original index of the message's first record (0 for a whole payload)."""
    traceparent: str | None = None
    """The trace the original record started (``marker-ingest-origin-traceparent``), when the tag
    binds one: a redriven record's article keeps it as its CloudEvents ``traceparent``."""


_ORIGIN = re.compile(rb"([A-Za-z0-9._-]{1,249}):([0-9]{1,10}):([0-9]{1,19}):([0-9]{1,10})")


def origin_of(
    headers: Iterable[tuple[str, bytes]], value: bytes | None, key: SecretStr | None
) -> Origin | None:
    """The origin ``redrive`` stamped on a message (``marker-ingest-origin-id``), when its
    ``marker-ingest-origin-tag`` proves it: the tag ``origin_tag`` makes of the origin and ``value``
    under ``key`` (``INGEST_REDRIVE_KEY``), compared in constant time.

    None without a key, without either header, with a malformed origin or a tag that does not match:
    the message then keeps its own coordinates, as any input does. The last header of each counts.
    A ``marker-ingest-origin-traceparent`` is part of what the tag proves (one added, changed or
    removed makes the tag fail); a proven one that is not a valid ``traceparent`` is left out.
    """
    if key is None:
        return None
    origin = tag = trace = None
    for name, raw in headers:
        if name == ORIGIN_HEADER:
            origin = raw
        elif name == ORIGIN_TAG_HEADER:
            tag = raw
        elif name == ORIGIN_TRACEPARENT_HEADER:
            trace = raw
    if origin is None or tag is None:
        return None
    match = _ORIGIN.fullmatch(origin)
    if match is None or (trace is not None and not isinstance(trace, bytes)):
        return None
    expected = origin_tag(key, origin.decode(), value, trace)
    if not hmac.compare_digest(expected.encode(), tag):
        return None
    topic, partition, offset, index = match.groups()
    traceparent = None
    if trace is not None and len(trace) == TRACEPARENT_CHARS and parse_traceparent(trace) is not None:
        traceparent = trace.decode()
    return Origin(f"{topic.decode()}:{int(partition)}:{int(offset)}", int(index), traceparent)


_TAG_CONTEXT = b"marker-ingest origin tag v1\x00"
"""Says what the MAC is for, and which version of its input: a MAC made for anything else never matches."""


def origin_tag(key: SecretStr, origin_id: str, value: bytes | None, traceparent: bytes | None = None) -> str:
    """The ``marker-ingest-origin-tag`` of a message with ``value`` redriven from ``origin_id``:
    HMAC-SHA256 under ``key`` over the origin (length-prefixed), the origin's ``traceparent`` when
    there is one (marked, length-prefixed) and the value (a null value is not an empty one), as
    lower-case hex. Without a ``traceparent`` the tag is the one earlier versions made: after the
    origin comes the value's mark, 0 or 1, where a ``traceparent``'s is 2, so no message without
    one can reuse the tag of a message with one, nor the other way round.

    It binds what decides the message's events, their ids and their data, and nothing else: a valid
    tag can only give these ids to the records of this very payload again (the same article, which
    deduplication rightly drops), never to another article.
    """
    origin = origin_id.encode()
    mac = hmac.new(key.get_secret_value().encode(), _TAG_CONTEXT, hashlib.sha256)
    mac.update(len(origin).to_bytes(4, "big") + origin)
    if traceparent is not None:
        mac.update(b"\x02" + len(traceparent).to_bytes(4, "big") + traceparent)
    if value is None:
        mac.update(b"\x00")
    else:
        mac.update(b"\x01")
        mac.update(value)
    return mac.hexdigest()
