"""W3C Trace Context in Kafka headers (``service.core.trace_context``): what counts as a context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.trace_context import (
    MAX_TRACESTATE_BYTES,
    format_traceparent,
    parse_traceparent,
    trace_context,
)

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_parsed_and_kept_as_it_came() -> None:
    ctx = trace_context([("k", b"v"), ("traceparent", VALID), ("tracestate", b"rojo=00f067aa0ba902b7")])
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        True,
    )
    assert ctx.headers() == [("traceparent", VALID), ("tracestate", b"rojo=00f067aa0ba902b7")]


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        VALID + b"-extra",  # version 00 is exactly 55 characters
        b" " + VALID,
        VALID + b"\n",
        b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # trace id too short
        b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_an_invalid_traceparent_is_no_context(value: bytes) -> None:
    assert parse_traceparent(value) is None
    assert trace_context([("traceparent", value), ("tracestate", b"a=1")]) is None


def test_a_later_version_may_carry_more_fields() -> None:
    later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever-comes"
    assert parse_traceparent(later) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False)


def test_two_traceparents_are_no_context_and_tracestates_join() -> None:
    assert trace_context([("traceparent", VALID), ("traceparent", VALID)]) is None
    ctx = trace_context([("tracestate", b"a=1"), ("traceparent", VALID), ("tracestate", b"b=2")])
    assert ctx is not None
    assert ctx.tracestate == b"a=1,b=2"


def test_no_headers_or_a_huge_tracestate() -> None:
    assert trace_context(None) is None
    assert trace_context([]) is None
    ctx = trace_context([("traceparent", VALID), ("tracestate", b"a=" + b"x" * MAX_TRACESTATE_BYTES)])
    assert ctx is not None
    assert ctx.tracestate is None, "cut: the context goes on without it"


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_what_is_formatted_parses_back(trace_id: int, span_id: int, sampled: bool) -> None:
    value = format_traceparent(trace_id, span_id, sampled)
    assert len(value) == 55
    assert parse_traceparent(value.encode()) == (trace_id, span_id, sampled)


@given(st.binary(max_size=80))
def test_any_bytes_never_raise(value: bytes) -> None:
    trace_context([("traceparent", value), ("tracestate", value)])
