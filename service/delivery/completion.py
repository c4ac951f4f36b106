"""Completion, at least once: a batch is delivered when the broker has acknowledged every event
derived from it; only then are its offsets committed.

The loop hands each processed batch over (``handed_over``) and goes on processing the next while
the broker acknowledges; handing over batch N+1 completes batch N. When an event failed, everything
from the first failed outcome of its input partition onward is sent again in input order, later
batches' sends included (``plans.resend_plan``), until the broker has it; nothing is committed past
it. ``settle`` completes whatever was handed over (before a pause, a stop, a rebalance, or while
the topic is idle).

``Delivery`` is the seam of the delivery mode: the loop knows only these five calls, so a mode that
commits a Kafka transaction instead of acknowledgements and offsets can take this one's place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from schemas.errors import ErrorCode
from service.delivery.failures import Access, Failure, Stage, classify
from service.delivery.grace import Backoff, Grace
from service.delivery.outbox import Outbox, Send
from service.delivery.plans import resend_plan
from service.ops.logs import flush_records
from service.ops.metrics import Metrics

log = structlog.get_logger("marker_ingest")


class Sink(Protocol):
    """Where a batch's outcomes go: an ``Outbox``, or one per input partition (transactions)."""

    async def add(self, send: Send) -> None: ...
    async def flush(self) -> None: ...


@dataclass(slots=True)
class Batch:
    """A fetched batch: its outcomes handed to the outbox, its offsets to commit once delivered."""

    outbox: Sink
    started: float
    sends: list[Send] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """Per input partition, the offset to commit: the last message's plus one."""
    first: dict[TopicPartition, int] = field(default_factory=dict)
    """Per input partition, the batch's first offset (where an aborted transaction goes back to)."""
    counts: dict[TopicPartition, int] = field(default_factory=dict)
    """Messages per input partition."""
    timestamps: list[int | None] = field(default_factory=list)
    dead_letters: dict[ErrorCode, int] = field(default_factory=dict)
    in_flight: int = 0
    """Bytes read and produced by this batch that the broker has not acknowledged yet."""
    messages: int = 0
    payload_bytes: int = 0
    records: int = 0
    acked_at: float | None = None
    """When the broker had acknowledged every event handed over at the end of processing."""


class Delivery(Protocol):
    """How processed batches become delivered (the seam of ``INGEST_DELIVERY``'s modes)."""

    send_error: str | None
    """Why events are not being delivered, for ``/readyz`` (None while they are)."""

    @property
    def in_flight(self) -> int:
        """Bytes of the batches in hand that the broker has not acknowledged yet."""

    def begin(self) -> Batch:
        """A new batch to process into."""

    async def handed_over(self, batch: Batch) -> None:
        """``batch`` is processed: every outcome is in its outbox."""

    async def relieve(self, batch: Batch) -> None:
        """Over the bytes-in-flight ceiling in the middle of ``batch``: wait for the broker."""

    async def settle(self) -> None:
        """Deliver everything handed over (acknowledged and committed) before returning."""

    def close(self) -> None:
        """The service is stopping its clients: complete nothing more."""

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group assigned ``partitions`` to this instance."""

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """``partitions`` move away, once everything handed over is settled."""

    async def stop(self, budget: float) -> None:
        """Release the delivery's own clients, within ``budget`` seconds."""

    def check(self) -> Failure | None:
        """A refusal that no retry can cure, which stops the service (None while there is none)."""


def count_delivered(metrics: Metrics, batch: Batch) -> None:
    """The metrics of a batch whose offsets are committed (in either delivery mode)."""
    metrics.count_batch(
        messages=batch.messages,
        payload_bytes=batch.payload_bytes,
        records=batch.records,
        dead_letters=batch.dead_letters,
    )
    metrics.batch_seconds.observe(time.perf_counter() - batch.started)


Commit = Callable[[dict[TopicPartition, int]], Awaitable[Any]]
Completed = Callable[[Batch], Awaitable[None]]


class AtLeastOnce:
    """``Delivery`` by acknowledgements, ordered resend and offset commits.

    ``commit`` is the consumer's ``commit``; ``outbox`` makes an outbox over the producer;
    ``completed`` is told of each batch once its offsets are committed. ``send_error`` says why
    events are not being acknowledged, for ``/readyz`` (None while they are).
    """

    def __init__(
        self,
        *,
        commit: Commit,
        outbox: Callable[[], Outbox],
        grace: Grace,
        metrics: Metrics,
        access: Access,
        retry: tuple[float, float],
        stall_after: float,
        completed: Completed,
    ) -> None:
        self._commit_offsets, self._new_outbox, self._grace = commit, outbox, grace
        self._metrics, self._access, self._retry = metrics, access, retry
        self._stall_after, self._completed = stall_after, completed
        self._open: Batch | None = None
        self._pending: Batch | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.send_error: str | None = None

    @property
    def in_flight(self) -> int:
        """Bytes of the batches in hand that the broker has not acknowledged yet."""
        return sum(b.in_flight for b in (self._pending, self._open) if b is not None)

    def begin(self) -> Batch:
        self._open = Batch(outbox=self._new_outbox(), started=time.perf_counter())
        return self._open

    async def handed_over(self, batch: Batch) -> None:
        await batch.outbox.flush()
        flush_records()
        # When the last acknowledgement arrives, for the end-to-end latency (completed later).
        futures = {id(send.future): send.future for send in batch.sends if send.future is not None}
        if futures:
            acks = asyncio.gather(*futures.values(), return_exceptions=True)
            acks.add_done_callback(lambda _: setattr(batch, "acked_at", time.time()))
        async with self._lock:
            previous, self._pending, self._open = self._pending, batch, None
            if previous is not None:
                await self._complete(previous, later=batch)

    async def relieve(self, batch: Batch) -> None:
        """Complete the batch before, then await what ``batch`` has handed over so far (it is
        committed when it is completed)."""
        await self.settle()
        await batch.outbox.flush()
        flush_records()
        await self._await_acks(batch.sends)
        self._metrics.observe_end_to_end(batch.timestamps)
        batch.sends, batch.timestamps, batch.in_flight = [], [], 0

    async def settle(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None and not self._closed:
                await self._complete(pending, later=self._open)

    def close(self) -> None:
        self._closed = True

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to do: one producer serves every partition."""

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to do: ``settle`` has committed what was handed over."""

    async def stop(self, budget: float) -> None:
        """Nothing to do: the producer is the service's."""

    def check(self) -> Failure | None:
        """None: every refusal of this mode blocks its partition and is retried (see docs)."""
        return None

    async def _complete(self, done: Batch, later: Batch | None) -> None:
        """Await every acknowledgement of ``done`` (resending with ``later``'s sends after a
        failure), commit its offsets, count it."""
        acked_at = None
        if await self._all_acked(done.sends):
            acked_at = done.acked_at
        else:
            sends = done.sends
            if later is not None:
                await later.outbox.flush()
                sends = sends + later.sends
            await self._await_acks(sends)
        self._metrics.observe_end_to_end(done.timestamps, acked_at)
        await self._commit(done.offsets)
        count_delivered(self._metrics, done)
        await self._completed(done)

    async def _all_acked(self, sends: list[Send]) -> bool:
        """Await every send; True when the broker acknowledged all of them.

        aiokafka retries some refusals inside the producer for as long as they last (a partition with
        fewer in-sync replicas than ``min.insync.replicas``, or without a leader): an event waiting
        longer than the request timeout makes the service not ready (``send_failing``) until it is
        acknowledged, and is logged once as ``send.stalled``.
        """
        ok = True
        for send in sends:
            future = send.future
            if future is not None:
                try:
                    if not future.done():
                        await self._await_ack(send, future)
                    else:
                        future.result()
                except KafkaError as exc:
                    send.error = exc
            if send.error is not None:
                ok = False
        return ok

    async def _await_ack(self, send: Send, future: asyncio.Future[Any]) -> None:
        waited, stall_after = 0.0, self._stall_after
        while True:
            try:
                await self._grace.within(asyncio.wait_for(asyncio.shield(future), stall_after))
            except TimeoutError:
                waited += stall_after
                if self.send_error is None:
                    log.warning(
                        "send.stalled",
                        destination=send.topic,
                        topic=send.tp.topic,
                        partition=send.tp.partition,
                        offset=send.offset,
                        waited_seconds=round(waited, 1),
                        detail="the broker has not acknowledged the event; its partition may have too "
                        "few in-sync replicas or no leader; nothing is committed past it",
                    )
                self.send_error = f"events to {send.topic} not acknowledged for {waited:.0f}s"
                self._metrics.retries["send"].inc()
                continue
            if self.send_error is not None and self.send_error.startswith("events to "):
                self.send_error = None
                log.info("send.resumed", destination=send.topic, waited_seconds=round(waited, 1))
            return

    async def _await_acks(self, sends: list[Send]) -> None:
        """Wait until the broker acknowledged every send; resend failures until it has."""
        backoff = Backoff(*self._retry)
        pending = sends
        while pending:
            await self._all_acked(pending)
            retry, first = resend_plan(pending)
            if first is None:
                self.send_error = None
                return
            assert first.error is not None
            failure = classify(first.error, Stage.SEND, self._access, topic=first.topic)
            self.send_error = (
                f"sending to {first.topic} failed: {first.error!r}" if failure is None else failure.line
            )
            delay = backoff.next_delay()
            self._metrics.retries["send"].inc()
            refused = isinstance(first.error, KafkaError) and not first.error.retriable
            (log.error if refused else log.warning)(
                "send.refused" if refused else "send.retrying",
                error=repr(first.error),
                destination=first.topic,
                topic=first.tp.topic,
                partition=first.tp.partition,
                offset=first.offset,
                outcomes=len(retry),
                retry_in=round(delay, 2),
                attempt=backoff.attempt,
                **(
                    {
                        "detail": "the broker refuses this event; its input partition is blocked until it is "
                        "accepted (check the topic's max.message.bytes and ACLs)"
                    }
                    if refused and failure is None
                    else {}
                ),
                **({} if failure is None else failure.fields()),
            )
            await self._grace.sleep(delay, before_stop=True)
            outbox = self._new_outbox()
            for send in retry:
                await outbox.add(send)
            await outbox.flush()
            pending = retry

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit; a commit refused because of a rebalance is logged, not fatal (nothing is lost)."""
        if not offsets:
            return
        backoff = Backoff(*self._retry)
        while True:
            try:
                await self._grace.within(self._commit_offsets(offsets))
            except (CommitFailedError, IllegalStateError) as exc:
                self._metrics.commit_failures.inc()
                log.warning(
                    "commit.refused",
                    error=repr(exc),
                    detail="partitions were reassigned; their new owner reprocesses from the last commit",
                )
                return
            except KafkaError as exc:
                delay = backoff.next_delay()
                self._metrics.commit_failures.inc()
                self._metrics.retries["commit"].inc()
                log.warning("commit.retrying", error=repr(exc), retry_in=round(delay, 2))
                await self._grace.sleep(delay, before_stop=True)
                continue
            self._metrics.commits.inc()
            log.debug("commit.done", offsets={f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()})
            return
