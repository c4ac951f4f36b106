"""The pipeline: fetch a batch, turn every message into outcomes with the core, hand them over.

One consumer feeds it; a delivery mode (``modes``) completes what it hands over and reports what got
committed, which the pipeline counts. Partitions being revoked are delivered first (the group's
``RebalanceListener``); a stop ends fetching, delivers what is in hand and commits it. The
pipeline's own decisions are small: when to settle (before a stop, a pause, a count that must be
exact, and while idle), when burst mode is done, and how far a fetch may read (``--max-messages``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from service import __version__
from service.core.events import Source, process_payload
from service.core.origin import origin_of
from service.core.trace_context import trace_context
from service.delivery.batch import Batch
from service.delivery.burst import DrainCheck
from service.delivery.grace import Grace
from service.delivery.lag import update_lag
from service.delivery.modes import Delivery
from service.delivery.outbox import Send
from service.delivery.retry import Retry
from service.delivery.routing import Routes, route
from service.delivery.safety_gate import SafetyGate
from service.delivery.tracing import PartitionTrace
from service.kafka.clients import Kafka
from service.kafka.failures import Stage, classify
from service.kafka.topics import partition_names
from service.ops.logs import RecordLines, flush_records
from service.ops.metrics import Metrics
from service.ops.tracing import Tracer

LAG_REFRESH_SECONDS = 1.0
YIELD_EVERY = 32
"""Messages processed between two yields to the event loop within a batch."""

log = structlog.get_logger("marker_ingest")


class Pipeline:
    """Fetch, process, hand over; the previous batch is delivered while the next is processed."""

    def __init__(
        self,
        kafka: Kafka,
        consumer: AIOKafkaConsumer,
        delivery: Delivery,
        *,
        grace: Grace,
        metrics: Metrics,
        safety: SafetyGate,
        fetch_retry: Retry,
        drain_check: DrainCheck,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = s = kafka.settings
        self._kafka, self.consumer, self.delivery = kafka, consumer, delivery
        self._grace, self._metrics, self._safety = grace, metrics, safety
        self._fetch_retry, self._drain_check = fetch_retry, drain_check
        self._tracer = tracer
        self._routes = Routes(s.output_topic, s.dlq_topic, s.max_event_bytes)
        self._idle = asyncio.Event()
        self._idle.set()
        self.messages_done = self.records_done = 0
        """Input messages and their records whose events are committed."""
        self.fetch_error: str | None = None
        self.finished = False
        """Set once the service stops its clients: the group's calls change nothing any more."""
        self._committed: dict[TopicPartition, int] = {}
        """Offsets committed since the lag was last updated."""
        self._fetchable: frozenset[TopicPartition] = frozenset()
        self._fetchable_since = 0.0

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Until a stop; or, in burst mode, until the group has drained the input; or until
        ``--max-messages``. Raises ``Misconfigured`` when the delivery meets a refusal no retry
        can cure, ``GraceExpired`` when the grace period ends with work unacknowledged; what was
        committed is counted however it ends."""
        try:
            await self._run()
        finally:
            self._count()

    async def _run(self) -> None:
        s, consumer, delivery = self.settings, self.consumer, self.delivery
        idle_since, lag_due = time.monotonic(), 0.0
        while not self._grace.requested:
            if delivery.refusal is not None:
                raise delivery.refusal.error()
            self._safety.resume_if_due(consumer)
            try:
                batch = await consumer.getmany(timeout_ms=s.batch_timeout_ms, max_records=self._fetch_size())
            except KafkaError as exc:
                self._fetch_failed(exc)
                await self._settle()
                await self._fetch_retry.after(None)
                continue
            self.fetch_error = None
            self._fetch_retry.succeeded()
            if not batch:
                await self._settle()
                now = time.monotonic()
                if now >= lag_due:
                    lag_due = now + LAG_REFRESH_SECONDS
                    await self._update_lag()
                if self._safety.paused:
                    idle_since = now  # paused is not drained: burst mode waits for the resume
                if s.burst and await self._drain_check.drained(consumer, time.monotonic() - idle_since):
                    log.info("burst.drained", messages=self.messages_done)
                    return
                continue
            idle_since = time.monotonic()
            await self._handle(batch)
            if self._committed:
                await self._update_lag()
            lag_due = time.monotonic() + LAG_REFRESH_SECONDS
            if self._grace.requested or self._safety.tripped or s.max_messages is not None:
                # Nothing is left waiting before a stop, a pause, or a count that must be exact.
                await self._settle()
            self._safety.pause_if_tripped(consumer)
            if s.max_messages is not None and self.messages_done >= s.max_messages:
                log.info("max_messages.reached", messages=self.messages_done)
                return
        await self._settle()

    def fetch_silence(self) -> float:
        """Seconds since the broker last answered a fetch of an assigned, unpaused partition, or
        since those partitions last changed (a partition just assigned or resumed has not been
        answered yet). A partition paused until the broker answers for it (``Delivery.starting``:
        its committed offsets) counts as fetched. Read on the event loop's thread: the consumer's
        state is not thread-safe."""
        consumer, now, starting = self.consumer, time.time(), self.delivery.starting
        paused = consumer.paused()
        fetchable = frozenset(tp for tp in consumer.assignment() if tp not in paused or tp in starting)
        if fetchable != self._fetchable:
            self._fetchable, self._fetchable_since = fetchable, now
        newest = self._fetchable_since
        for tp in fetchable:
            at = consumer.last_poll_timestamp(tp)
            if at is not None:
                newest = max(newest, at / 1000)
        return 0.0 if not fetchable else max(0.0, now - newest)

    async def _update_lag(self) -> None:
        """The lag per partition: the high watermark less the last committed offset (or, where
        none is newer, the position)."""
        committed, self._committed = self._committed, {}
        await update_lag(self.consumer, self._metrics, committed)

    def _fetch_size(self) -> int:
        """How many messages the next fetch may return: a batch, or what ``--max-messages`` leaves."""
        s = self.settings
        if s.max_messages is None:
            return s.batch_max_messages
        return min(s.batch_max_messages, s.max_messages - self.messages_done)

    def _fetch_failed(self, exc: KafkaError) -> None:
        failure = classify(exc, Stage.FETCH, self._kafka.access, topic=self.settings.input_topic)
        line = repr(exc) if failure is None else failure.line
        if failure is None:
            log.warning("fetch.failed", error=repr(exc))
        elif line != self.fetch_error:
            log.error("fetch.refused", error=repr(exc), **failure.fields())
        self.fetch_error = line

    async def _handle(self, batch: dict[TopicPartition, Sequence[Any]]) -> None:
        """Process a fetched batch and hand it over (the loop is not idle meanwhile: a rebalance
        waits for it)."""
        self._idle.clear()
        try:
            processed = await self._process(batch)
            flush_records()
            await self.delivery.handed_over(processed)
            self._count()
        finally:
            self._idle.set()

    async def _process(self, batch: dict[TopicPartition, Sequence[Any]]) -> Batch:
        """Every message: process → route → add → observe → log; relieved when over the ceiling."""
        limits, routes, delivery = self.settings.limits, self._routes, self.delivery
        ceiling, switch = self.settings.max_bytes_in_flight, self._safety.switch
        redrive_key = self.settings.redrive_key
        now = dt.datetime.now(dt.UTC)
        current = delivery.begin()
        # The bytes this batch may hold before the broker must catch up (the batch before it is
        # in flight too); computed again after each relief.
        room = ceiling - delivery.in_flight
        for tp, messages in batch.items():
            trace = self._trace(current, tp)
            record_lines = RecordLines(tp.topic, tp.partition, **({} if trace is None else trace.log_fields))
            for i, msg in enumerate(messages):
                if i and i % YIELD_EVERY == 0:
                    # Let the producer's sender ship what is ready and acks come back while
                    # this batch is still being processed, instead of all of it at the end.
                    await asyncio.sleep(0)
                headers = msg.headers
                origin = origin_of(headers, msg.value, redrive_key) if headers and redrive_key else None
                context = trace_context(headers) if headers else None
                # The trace the record starts: a redriven one's original, the input's, or ours.
                starting = context.attribute if context is not None else None
                if origin is not None and origin.traceparent is not None:
                    starting = origin.traceparent
                elif starting is None and trace is not None:
                    starting = trace.traceparent
                source = Source(tp.topic, tp.partition, msg.offset, msg.timestamp, msg.key, origin)
                outcomes = process_payload(
                    msg.value, source, limits, now=now, version=__version__, traceparent=starting
                )
                if trace is None:
                    sends = [
                        _send(tp, msg.offset, route(o, headers, routes, context, starting)) for o in outcomes
                    ]
                else:
                    events = trace.route(msg.offset, outcomes, headers, context, starting)
                    sends = [_send(tp, msg.offset, event) for event in events]
                dead = await current.add(tp, msg, outcomes, sends)
                if switch is not None:
                    switch.observe(len(outcomes), dead)
                for outcome in outcomes:
                    error = outcome.error
                    record_lines.add(
                        msg.offset, outcome.record_index, error and error.value, outcome.event_id
                    )
                if current.in_flight >= room:
                    flush_records()
                    await delivery.relieve(current)
                    self._count()
                    room = ceiling - delivery.in_flight
            if trace is not None and messages:
                trace.processed(messages[0].offset, messages[-1].offset, len(messages))
        return current

    def _trace(self, batch: Batch, tp: TopicPartition) -> PartitionTrace | None:
        """The spans of ``tp``'s share of ``batch`` (None with tracing off)."""
        if self._tracer is None:
            return None
        trace = batch.traces[tp] = PartitionTrace(
            self._tracer, tp.topic, tp.partition, self.settings.group_id, self._routes
        )
        return trace

    async def _settle(self) -> None:
        """Deliver everything handed over, and count it."""
        await self.delivery.settle()
        self._count()

    def _count(self) -> None:
        """Count what the delivery committed; the lag follows its offsets at the next refresh."""
        for done in self.delivery.take_delivered():
            self.messages_done += done.messages
            self.records_done += done.records
            self._committed.update(done.offsets)

    # ----------------------------------------------------------------- the group

    async def drain(self, revoked: set[TopicPartition]) -> None:
        """Before partitions are revoked: wait until the batch in hand is processed, then deliver
        everything handed over. The loop is held in ``getmany`` meanwhile (aiokafka returns no
        records while the group rebalances)."""
        if revoked:
            log.info("partitions.revoking", partitions=partition_names(revoked))
        await self._idle.wait()
        await self._settle()
        await self.delivery.revoked(revoked)

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: drop the lag of lost partitions; keep new ones paused if tripped."""
        self._metrics.keep_partitions((tp.topic, tp.partition) for tp in assigned)
        if not self.finished:
            await self.delivery.assigned(assigned)
        self._safety.keep_paused(self.consumer, assigned)


def _send(tp: TopicPartition, offset: int, event: Any) -> Send:
    return Send(tp, offset, event.topic, event, event.headers)


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The group's calls into the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline.drain(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions.assigned", partitions=partition_names(assigned))
        await self._pipeline.assigned(assigned)
