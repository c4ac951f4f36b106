"""W3C Trace Context in Kafka headers: the ``traceparent`` and ``tracestate`` of an input message.

Pure, and always on: the service passes an input's context through to the events it makes whether
or not tracing is on, so a trace goes on past the service even when the service itself records
nothing. The rules are the W3C Trace Context recommendation's (level 1, section 3.2): a
``traceparent`` is ``version-traceid-parentid-flags`` in lower-case hex, version ``ff`` is
invalid, an all-zero trace id or parent id is invalid, a version ``00`` header is exactly 55
characters and a later version's may go on after a ``-``; more than one ``traceparent`` makes the
context invalid; several ``tracestate`` headers are one list, joined by commas. An invalid or
missing ``traceparent`` means no context at all (its ``tracestate`` is ignored too): never an
error, never a dead letter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACEPARENT_CHARS = 55
"""The length of a version ``00`` ``traceparent``, and of a later version's first four fields."""

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
MAX_TRACESTATE_BYTES = 512
"""A ``tracestate`` longer than this is dropped rather than carried (the W3C recommendation lets
a carrier cut it; vendors keep theirs short)."""


class TraceContext(NamedTuple):
    """A valid input context: the headers as they came (to pass on unchanged) and their fields."""

    traceparent: bytes
    tracestate: bytes | None
    trace_id: int
    span_id: int
    sampled: bool

    @property
    def attribute(self) -> str:
        """The ``traceparent`` as the CloudEvents distributed-tracing attribute: version ``00``'s
        55 characters (of a later version, its first four fields, which a receiver reads alone)."""
        return self.traceparent[:TRACEPARENT_CHARS].decode()

    def headers(self) -> list[tuple[str, bytes]]:
        """The context as Kafka headers, ``traceparent`` first."""
        if self.tracestate is None:
            return [(TRACEPARENT, self.traceparent)]
        return [(TRACEPARENT, self.traceparent), (TRACESTATE, self.tracestate)]


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """``(trace id, parent span id, sampled)`` of a valid ``traceparent`` value, else None."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == b"00" and rest is not None:
        return None
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


def trace_context(headers: Iterable[tuple[str, bytes]] | None) -> TraceContext | None:
    """The W3C trace context of an input message's headers, or None when it has no valid one."""
    if not headers:
        return None
    parent: bytes | None = None
    states: list[bytes] = []
    for name, value in headers:
        if name == TRACEPARENT:
            if parent is not None:
                return None  # two traceparents: which is meant cannot be told
            parent = value
        elif name == TRACESTATE and value:
            states.append(value)
    if parent is None or not isinstance(parent, bytes):
        return None
    fields = parse_traceparent(parent)
    if fields is None:
        return None
    state = b",".join(states) if states else None
    if state is not None and (len(state) > MAX_TRACESTATE_BYTES or not state.isascii()):
        state = None
    return TraceContext(parent, state, *fields)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """A version ``00`` ``traceparent`` value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
