"""Tracing's switch and seam: whether the OpenTelemetry SDK is wanted, and what the service calls.

Tracing is off unless ``OTEL_TRACES_EXPORTER`` is set (``otlp``, ``console``, ``zipkin_json``,
``none``, or a list of them): the SDK's own variables configure everything else. Off, this module
is all the service imports of it: no SDK, no span, nothing per record (the input's trace context is
still passed on, ``service.core.trace_context``). On, ``start_tracing`` imports the SDK glue
(``service.ops.otel``), which needs the ``tracing`` extra; without it the command refuses to start
with one line naming the extra.

The seam is plain values, so ops knows nothing of Kafka: a ``process`` span per input batch and
partition, ``send`` spans under it, ``transaction`` spans (exactly-once), and a ``redrive`` span.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

from service.errors import TracingUnavailable

EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"
EXTRA = "marker-ingest[tracing]"


class Upstream(NamedTuple):
    """A span context read from a message's ``traceparent`` (and ``tracestate``): a link's target."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: bytes | None = None


class SendSpan(Protocol):
    """The span of the events of one input batch and partition sent to one topic."""

    traceparent: bytes
    """The span's context as a ``traceparent`` header value, for the events it sends."""

    def sent(self, events: int) -> None:
        """``events`` more events went out under this span."""

    def end(self, error: str | None = None) -> None:
        """The events are delivered (committed), or failed with ``error``."""


class RedriveSpan(SendSpan, Protocol):
    """The span of one ``redrive``: what it publishes carries its context."""

    def link(self, upstream: Upstream) -> None:
        """A dead letter's context (the trace its record was in)."""


class ProcessSpan(Protocol):
    """The span of one input batch's messages of one partition."""

    traceparent: str
    """The span's context as a ``traceparent``: the starting trace of a record that brings none."""
    recording: bool
    """False when the sampler dropped the span: links and events are not worth making."""
    log_fields: Mapping[str, str]
    """``trace_id`` and ``span_id`` for the batch's log lines."""

    def link(self, upstream: Upstream) -> None:
        """One record's upstream context (the batch form of the messaging conventions)."""

    def dead_letter(self, code: str, offset: int, record_index: int) -> None:
        """A record of the batch became a dead letter."""

    def send(self, topic: str) -> SendSpan:
        """The ``send`` span of this batch's events to ``topic`` (a child, made once per topic)."""

    def transaction(self, action: str, offset: int) -> AbstractContextManager[None]:
        """A span around the exactly-once transaction's ``commit`` or ``abort`` (``offset``: the
        input offset committed with it); an exception leaving it marks the span failed."""

    def end(self, first_offset: int, last_offset: int, messages: int) -> None:
        """The batch's messages of the partition are processed."""


class Tracer(Protocol):
    """The service's tracer: the SDK's, behind plain values."""

    def process(self, topic: str, partition: int, group: str) -> ProcessSpan:
        """A new ``process`` span (a root: the records' contexts are links) for a batch of ``topic``'s
        ``partition`` read by consumer ``group``."""

    def redrive(self, topic: str, messages: int) -> RedriveSpan:
        """The span of one ``redrive`` publishing ``messages`` to ``topic`` (a root, linked to the
        dead letters' contexts)."""

    def count_dropped(self, counter: Callable[[str, int], None]) -> None:
        """Call ``counter(reason, spans)`` whenever spans are lost before the backend has them."""

    def shutdown(self, timeout_seconds: float) -> None:
        """Export what is queued, within ``timeout_seconds`` (an unreachable backend loses it)."""


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """True when ``OTEL_TRACES_EXPORTER`` asks for tracing (set and not blank)."""
    return bool(environ.get(EXPORTER_VARIABLE, "").strip())


def start_tracing(environ: Mapping[str, str], *, max_links: int) -> Tracer | None:
    """The tracer ``environ`` asks for, or None when tracing is off. ``max_links``: the links and
    events a ``process`` span may hold (a batch's records), unless ``OTEL_SPAN_LINK_COUNT_LIMIT``
    says otherwise. Raises ``TracingUnavailable`` when the SDK or an exporter is missing or
    misconfigured."""
    if not tracing_requested(environ):
        return None
    try:
        from service.ops import otel
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise TracingUnavailable(
            f"{EXPORTER_VARIABLE} is set but the OpenTelemetry SDK is not installed: "
            f"pip install '{EXTRA}' (or unset {EXPORTER_VARIABLE})"
        ) from None
    return otel.tracer_from_environment(environ, max_links=max_links)
