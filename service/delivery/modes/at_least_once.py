"""At-least-once delivery (the default): a batch is delivered when the broker has acknowledged every
event derived from it; only then are its offsets committed.

The pipeline hands each processed batch over and goes on processing the next while the broker
acknowledges; handing over batch N+1 completes batch N: once its events are acknowledged its
offsets are committed in the background (a commit takes a round trip and the group coordinator's
append linger, ~10 ms on Kafka 4), while batch N+2 is processed; commits stay in order, one at a
time (``settle`` waits for the last). When an event failed, everything from the first failed
outcome of its input partition onward is sent again in input order, later batches' sends included
(``resend.resend_plan``), until the broker has it; nothing is committed past it. ``settle``
completes whatever was handed over (before a pause, a stop, a rebalance, or while the topic is
idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    IllegalStateError,
    KafkaError,
    NotCoordinatorError,
)

from service.delivery.batch import Batch
from service.delivery.modes.base import Consumer, Delivery, Offsets
from service.delivery.outbox import Outbox, Send
from service.delivery.resend import resend_plan
from service.delivery.retry import Retries
from service.kafka.failures import Access, Stage, classify
from service.ops.metrics import Metrics

log = structlog.get_logger("marker_ingest")

Commit = Callable[[dict[TopicPartition, int]], Awaitable[Any]]

COORDINATOR_ERRORS = (CoordinatorNotAvailableError, NotCoordinatorError, CoordinatorLoadInProgressError)
"""Commit errors that mean the group has no coordinator answering: ``/readyz`` says so."""


class AtLeastOnce(Delivery):
    """Delivery by acknowledgements, ordered resend and offset commits.

    ``commit`` is the consumer's ``commit``; ``outbox`` makes an outbox over the producer.
    """

    def __init__(
        self,
        *,
        commit: Commit,
        outbox: Callable[[], Outbox],
        consumer: Consumer,
        offsets: Offsets,
        metrics: Metrics,
        retries: Retries,
        access: Access,
        stall_after: float,
    ) -> None:
        super().__init__(consumer=consumer, offsets=offsets, metrics=metrics, retries=retries)
        self._commit_offsets, self._new_outbox, self._access = commit, outbox, access
        self._stall_after = stall_after
        self._open: Batch | None = None
        self._pending: Batch | None = None
        self._lock = asyncio.Lock()
        self._stopped = False
        self._committing: asyncio.Task[None] | None = None
        """The commit under way of the last batch completed."""

    @property
    def in_flight(self) -> int:
        """Bytes of the batches in hand that the broker has not acknowledged yet."""
        return sum(b.in_flight for b in (self._pending, self._open) if b is not None)

    def begin(self) -> Batch:
        self._open = Batch(self._new_outbox())
        return self._open

    async def handed_over(self, batch: Batch) -> None:
        await batch.sink.flush()
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
        await batch.sink.flush()
        taken = batch.take()
        await self._await_acks(taken.sends)
        self._metrics.observe_end_to_end(taken.timestamps)

    async def settle(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, None
            if self._stopped:
                return
            if pending is not None:
                await self._complete(pending, later=self._open)
            await self._committed()

    async def stop(self, budget: float) -> None:
        """Complete nothing more: the producer is the service's, and it stops it. A commit still
        under way (the grace period is over) is abandoned."""
        self._stopped = True
        task, self._committing = self._committing, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task

    async def _committed(self) -> None:
        """Wait for the commit under way, if one is."""
        task, self._committing = self._committing, None
        if task is not None:
            await task

    async def _commit_and_count(self, done: Batch) -> None:
        await self._commit(done.offsets())
        self._delivered(done)

    async def _complete(self, done: Batch, later: Batch | None) -> None:
        """Await every acknowledgement of ``done`` (resending with ``later``'s sends after a
        failure), then start committing its offsets once the commit before has finished."""
        acked_at = None
        taken = done.take()
        if await self._all_acked(taken.sends):
            acked_at = done.acked_at
        else:
            sends = taken.sends
            if later is not None:
                await later.sink.flush()
                sends = [*sends, *later.sends]
            await self._await_acks(sends)
        self._metrics.observe_end_to_end(taken.timestamps, acked_at)
        await self._committed()
        self._committing = asyncio.get_running_loop().create_task(self._commit_and_count(done))

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
        retry = self._retries.new("send", before_stop=True)
        pending = sends
        while pending:
            await self._all_acked(pending)
            again, first = resend_plan(pending)
            if first is None:
                self.send_error = None
                return
            assert first.error is not None
            failure = classify(first.error, Stage.SEND, self._access, topic=first.topic)
            self.send_error = (
                f"sending to {first.topic} failed: {first.error!r}" if failure is None else failure.line
            )
            refused = isinstance(first.error, KafkaError) and not first.error.retriable
            detail = (
                {
                    "detail": "the broker refuses this event; its input partition is blocked until it is "
                    "accepted (check the topic's max.message.bytes and ACLs)"
                }
                if refused and failure is None
                else {}
            )
            await retry.after(
                "send.refused" if refused else "send.retrying",
                level="error" if refused else "warning",
                error=repr(first.error),
                destination=first.topic,
                topic=first.tp.topic,
                partition=first.tp.partition,
                offset=first.offset,
                outcomes=len(again),
                **detail,
                **({} if failure is None else failure.fields()),
            )
            outbox = self._new_outbox()
            for send in again:
                await outbox.add(send)
            await outbox.flush()
            pending = again

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit; a commit refused because of a rebalance is logged, not fatal (nothing is lost)."""
        if not offsets:
            return
        retry = self._retries.new("commit", before_stop=True)
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
                self._metrics.commit_failures.inc()
                if isinstance(exc, COORDINATOR_ERRORS):
                    self.coordinator_error = f"committing offsets failed: {exc!r}"
                await retry.after("commit.retrying", error=repr(exc))
                continue
            self.coordinator_error = None
            self._metrics.commits.inc()
            log.debug("commit.done", offsets={f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()})
            return
