"""The spans of one input batch's partition, when tracing is on (``service.ops.tracing``).

A ``PartitionTrace`` is made per input partition of a batch: its ``process`` span links every
record's upstream context and marks each dead letter; its ``send`` spans (one per destination
topic, children of the ``process`` span) are what the events' ``traceparent`` headers name, and
they end when the delivery mode reports the partition's events committed, or failed. With tracing
off none of this exists: the pipeline passes the input's own context on (``routing.route``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

from service.core.events import Outcome
from service.core.trace_context import TraceContext
from service.delivery.routing import Destination, Headers, Routes, route
from service.ops.tracing import ProcessSpan, SendSpan, Tracer, Upstream


class PartitionTrace:
    """The spans of one input partition's share of a batch."""

    __slots__ = (
        "_articles",
        "_dead",
        "_linked",
        "_process",
        "_routes",
        "_sends",
        "log_fields",
        "traceparent",
    )

    def __init__(self, tracer: Tracer, topic: str, partition: int, group: str, routes: Routes) -> None:
        self._process: ProcessSpan = tracer.process(topic, partition, group)
        self._routes = routes
        self.traceparent = self._process.traceparent
        """The ``process`` span's context: the starting trace of a record that brings none."""
        self.log_fields: Mapping[str, str] = self._process.log_fields
        self._articles: tuple[SendSpan, TraceContext] | None = None
        self._dead: tuple[SendSpan, TraceContext] | None = None
        self._sends: list[SendSpan] = []
        self._linked: set[bytes] = set()
        """The upstream contexts linked already: records of one upstream span share one link."""

    def route(
        self,
        offset: int,
        outcomes: Sequence[Outcome],
        headers: Headers,
        upstream: TraceContext | None,
        starting: str | None,
    ) -> list[Destination]:
        """Where a message's ``outcomes`` go, each carrying its ``send`` span's context (with the
        input's ``tracestate``); the input's context becomes a link (one per distinct context: a
        producer that sent many messages under one span gets one), each dead letter an event."""
        process = self._process
        if upstream is not None and process.recording and upstream.traceparent not in self._linked:
            self._linked.add(upstream.traceparent)
            process.link(Upstream(upstream.trace_id, upstream.span_id, upstream.sampled, upstream.tracestate))
        routed = []
        for outcome in outcomes:
            dead = outcome.error is not None
            if dead and process.recording:
                assert outcome.error is not None
                process.dead_letter(outcome.error.value, offset, outcome.record_index)
            span, context = self._send(dead)
            span.sent(1)
            if upstream is not None and upstream.tracestate is not None:
                context = context._replace(tracestate=upstream.tracestate)
            routed.append(route(outcome, headers, self._routes, context, starting))
        return routed

    def _send(self, dead: bool) -> tuple[SendSpan, TraceContext]:
        known = self._dead if dead else self._articles
        if known is None:
            topic = self._routes.dlq_topic if dead else self._routes.output_topic
            span = self._process.send(topic)
            known = (span, _context(span.traceparent))
            self._sends.append(span)
            if dead:
                self._dead = known
            else:
                self._articles = known
        return known

    def processed(self, first_offset: int, last_offset: int, messages: int) -> None:
        """The partition's messages of the batch are processed: the ``process`` span ends."""
        self._process.end(first_offset, last_offset, messages)

    def transaction(self, action: str, offset: int) -> AbstractContextManager[None]:
        """A span around the partition's transaction ``commit`` or ``abort``."""
        return self._process.transaction(action, offset)

    def delivered(self, error: str | None = None) -> None:
        """The partition's events are committed (or failed with ``error``): the ``send`` spans end."""
        sends, self._sends = self._sends, []
        for span in sends:
            span.end(error)


def transaction_span(trace: PartitionTrace | None, action: str, offset: int) -> AbstractContextManager[None]:
    """``trace.transaction(...)``, or nothing with tracing off."""
    return nullcontext() if trace is None else trace.transaction(action, offset)


def _context(traceparent: bytes) -> TraceContext:
    # The span's own traceparent: its fields are known to be valid, and only the header is used.
    return TraceContext(traceparent, None, 0, 0, True)
