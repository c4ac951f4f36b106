"""Completion, exactly once (``INGEST_DELIVERY=exactly-once``): a batch's events, dead letters and
input offsets are committed in Kafka transactions, one per input partition of the batch.

Each input partition has its own transactional producer, with a stable transactional id
(``Settings.transactional_id``): the instance a partition moves to starts that producer, and the
broker then aborts whatever the previous owner left open and fences it (``ProducerFenced`` on its
next send or commit). aiokafka commits offsets in a transaction without the group's generation
(TxnOffsetCommit v0, before KIP-447), so this per-partition id is what keeps a paused or cut-off
instance (a zombie) from committing after its partitions moved.

A failed transaction is aborted and its partition sought back to the batch's first offset, so the
batch is processed again from the last committed offsets; the failure is retried with backoff and
never turns a record into a dead letter. A fenced partition is paused until the group assigns it
again (its new owner has it meanwhile); nothing the fenced producer wrote becomes visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced, TransactionalIdAuthorizationFailed

from service.delivery.batch import Batch
from service.delivery.modes.base import Consumer, Delivery, Offsets
from service.delivery.outbox import Outbox, Send
from service.delivery.retry import Retries
from service.delivery.tracing import PartitionTrace, transaction_span
from service.errors import GraceExpired
from service.kafka.failures import Access, Stage, classify
from service.ops.metrics import Metrics

log = structlog.get_logger("marker_ingest")


class TxnProducer(Protocol):
    """What this module uses of aiokafka's transactional producer (a fake in the unit tests)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...
    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None: ...
    async def flush(self) -> None: ...


class TxnOutbox:
    """The outbox of one batch in exactly-once delivery: an ``Outbox`` per input partition, over that
    partition's producer, whose transaction begins with the partition's first event."""

    def __init__(self, open_producer: Callable[[TopicPartition], Awaitable[Any]], max_request_size: int):
        self._open_producer, self._max_request_size = open_producer, max_request_size
        self.by_partition: dict[TopicPartition, tuple[Any, Outbox]] = {}
        self.failed: dict[TopicPartition, BaseException] = {}
        """Partitions whose transaction could not begin: the batch is processed again for them."""
        self.begun_at: float | None = None

    async def add(self, send: Send) -> None:
        """``send`` into the transaction of its input partition."""
        slot = self.by_partition.get(send.tp)
        if slot is None:
            if send.tp in self.failed:
                return
            try:
                producer = await self._open_producer(send.tp)
                await producer.begin_transaction()
            except GraceExpired:
                raise
            except Exception as exc:
                self.failed[send.tp] = exc
                return
            if self.begun_at is None:
                self.begun_at = time.perf_counter()
            slot = self.by_partition[send.tp] = (producer, Outbox(producer, self._max_request_size))
        await slot[1].add(send)

    async def flush(self) -> None:
        """Hand every open record batch to its producer."""
        for _, outbox in self.by_partition.values():
            await outbox.flush()


class ExactlyOnce(Delivery):
    """Delivery by one Kafka transaction per input partition of each batch.

    ``make_producer(partition)`` builds the (unstarted) transactional producer of an input
    partition; ``consumer`` is sought back after an abort and pauses fenced partitions.
    """

    def __init__(
        self,
        *,
        make_producer: Callable[[int], TxnProducer],
        consumer: Consumer,
        offsets: Offsets,
        group_id: str,
        metrics: Metrics,
        retries: Retries,
        max_request_size: int,
        access: Access | None = None,
        transactional_id: Callable[[int], str] = str,
    ) -> None:
        super().__init__(consumer=consumer, offsets=offsets, metrics=metrics, retries=retries)
        self._make_producer, self._group_id = make_producer, group_id
        self._access, self._transactional_id = access or Access(), transactional_id
        self._max_request_size = max_request_size
        self._producers: dict[TopicPartition, TxnProducer] = {}
        self._starting: dict[TopicPartition, asyncio.Future[TxnProducer]] = {}
        self._fenced: set[TopicPartition] = set()
        self._open: Batch | None = None
        self._send_failures: dict[TopicPartition, BaseException] = {}
        """Sends of the open batch that failed while it was relieved: its commit aborts them."""
        self._retry = retries.new("send", before_stop=True)
        self._lock = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        """Bytes of the batch being processed that the broker has not acknowledged yet."""
        return 0 if self._open is None else self._open.in_flight

    async def _producer(self, tp: TopicPartition) -> TxnProducer:
        """The started producer of ``tp``; started once however many ask at the same time."""
        producer = self._producers.get(tp)
        if producer is not None:
            return producer
        starting = self._starting.get(tp)
        if starting is None:
            starting = self._starting[tp] = asyncio.ensure_future(self._start(tp))
        return await self._grace.within(asyncio.shield(starting))

    async def _start(self, tp: TopicPartition) -> TxnProducer:
        try:
            producer = self._make_producer(tp.partition)
            try:
                await producer.start()  # InitProducerId: the broker fences the partition's last owner
            except BaseException as exc:
                await _stop(producer)
                if isinstance(exc, TransactionalIdAuthorizationFailed) and self.refusal is None:
                    tid = self._transactional_id(tp.partition)
                    self.refusal = classify(exc, Stage.START_PRODUCER, self._access, topic=tid)
                raise
            self._producers[tp] = producer
            return producer
        finally:
            self._starting.pop(tp, None)

    def begin(self) -> Batch:
        self._open = Batch(TxnOutbox(self._producer, self._max_request_size))
        self._send_failures = {}
        return self._open

    async def handed_over(self, batch: Batch) -> None:
        """Commit the batch's transactions; abort and rewind the partitions whose commit failed."""
        outbox = batch.sink
        assert isinstance(outbox, TxnOutbox)
        async with self._lock:
            self._open = None
            taken = batch.take()
            partitions = list(outbox.by_partition)
            sends: dict[TopicPartition, list[Send]] = {tp: [] for tp in partitions}
            for send in taken.sends:
                sends.setdefault(send.tp, []).append(send)
            offsets = batch.offsets()
            results = await asyncio.gather(
                *(
                    self._commit(tp, producer, part, sends[tp], offsets[tp], batch.traces.get(tp))
                    for tp, (producer, part) in outbox.by_partition.items()
                ),
                return_exceptions=True,
            )
            committed = [tp for tp, error in zip(partitions, results, strict=True) if error is None]
            failed = {tp: error for tp, error in zip(partitions, results, strict=True) if error is not None}
            failed.update(outbox.failed)
            if outbox.begun_at is not None:
                self._metrics.transaction_seconds.observe(time.perf_counter() - outbox.begun_at)
            self._metrics.transactions["committed"].inc(len(committed))
            if committed:
                if not failed:
                    self._metrics.observe_end_to_end(taken.timestamps)
                self._metrics.commits.inc()
                self._delivered(batch, committed)
            grace_over = None
            for tp, error in failed.items():
                if isinstance(error, GraceExpired):
                    grace_over = error
                await self._failed(tp, error, batch)
            if grace_over is not None:
                raise grace_over
            if failed:
                await self._retry.after(None)
            else:
                self._retry.succeeded()
                self.send_error = None

    async def _commit(
        self,
        tp: TopicPartition,
        producer: TxnProducer,
        outbox: Outbox,
        sends: list[Send],
        offset: int,
        trace: PartitionTrace | None = None,
    ) -> None:
        await outbox.flush()
        failure = self._send_failures.get(tp)
        if failure is not None:
            raise failure
        for send in sends:
            if send.error is not None:
                raise send.error
            if send.future is not None:
                await self._grace.within(asyncio.shield(send.future))
        with transaction_span(trace, "commit", offset):
            await self._grace.within(producer.send_offsets_to_transaction({tp: offset}, self._group_id))
            await self._grace.within(producer.commit_transaction())

    async def _failed(self, tp: TopicPartition, error: BaseException, batch: Batch) -> None:
        """Abort ``tp``'s transaction and rewind it to the batch's first offset (or, fenced, drop its
        producer and pause it until the group assigns it again)."""
        producer = self._producers.pop(tp, None)
        first = batch.first_offset(tp)
        trace = batch.traces.get(tp)
        batch.end_traces([tp], repr(error))
        if isinstance(error, ProducerFenced):
            self._metrics.transactions["fenced"].inc()
            self._fenced.add(tp)
            with contextlib.suppress(Exception):
                self._consumer.pause(tp)
            log.error(
                "txn.fenced",
                topic=tp.topic,
                partition=tp.partition,
                offset=first,
                detail="another instance has taken this partition over; nothing of this transaction "
                "becomes visible; the partition waits for the group to assign it again",
            )
            if producer is not None:
                await _stop(producer)
            return
        self._metrics.transactions["aborted"].inc()
        self.send_error = f"transaction of {tp.topic}:{tp.partition} failed: {error!r}"
        aborted = False
        if producer is not None and not isinstance(error, GraceExpired):
            try:
                with transaction_span(trace, "abort", first if first is not None else -1):
                    await asyncio.wait_for(producer.abort_transaction(), 5.0)
                aborted = True
                self._producers[tp] = producer
            except Exception:
                await _stop(producer)
        if first is not None:
            with contextlib.suppress(Exception):
                self._consumer.seek(tp, first)
        log.warning(
            "txn.aborted",
            topic=tp.topic,
            partition=tp.partition,
            offset=first,
            error=repr(error),
            producer="kept" if aborted else "replaced",
            detail="the batch is processed again from the last committed offset; nothing of it is visible",
        )

    async def relieve(self, batch: Batch) -> None:
        """Over the bytes-in-flight ceiling: wait until the broker has what was sent so far (it
        commits with the batch); a failure is left to the commit, which aborts."""
        await batch.sink.flush()
        taken = batch.take()
        for send in taken.sends:
            error = send.error
            if send.future is not None and error is None:
                try:
                    await self._grace.within(asyncio.shield(send.future))
                except KafkaError as exc:
                    error = exc
            if error is not None:
                self._send_failures.setdefault(send.tp, error)
        self._metrics.observe_end_to_end(taken.timestamps)

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Take newly assigned partitions up: paused, start their producers, then start reading
        from the group's committed offsets as they are once those producers are started.

        Starting a partition's producer (InitProducerId) makes the broker finish what the previous
        owner's producer left: an open transaction is aborted, a commit under way is completed, its
        offsets written. Only then are the committed offsets current: aiokafka fetches them as soon
        as the assignment arrives, without KIP-447's ``require_stable``, and could read the offsets
        of before the previous owner's last commit (its events would then be written twice). So
        the partitions stay paused until their producers are started, and are sought to the
        committed offsets fetched afterwards. A producer that cannot start is retried with backoff.
        """
        partitions = list(partitions)
        if not partitions:
            return
        self._consumer.pause(*partitions)  # before any await: nothing is fetched from a stale offset
        self.starting.update(partitions)
        self._fenced.difference_update(partitions)
        retry, waiting = self._retries.new("connect"), partitions
        while waiting and not self._grace.requested and self.refusal is None:
            started = await asyncio.gather(*(self._producer(tp) for tp in waiting), return_exceptions=True)
            failed = []
            for tp, result in zip(waiting, started, strict=True):
                if isinstance(result, GraceExpired):
                    raise result
                if isinstance(result, BaseException):
                    failed.append(tp)
                    log.warning(
                        "txn.producer_unavailable", topic=tp.topic, partition=tp.partition, error=repr(result)
                    )
            waiting = failed
            if waiting:
                await retry.after(None)
        if waiting:  # stopping, or refused: the partitions stay paused
            return
        await self._read_from_committed(partitions)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop the producers of partitions that moved away (their last batch is committed)."""
        async with self._lock:
            for tp in partitions:
                self.starting.discard(tp)
                producer = self._producers.pop(tp, None)
                self._fenced.discard(tp)
                if producer is not None:
                    await _stop(producer)

    async def stop(self, budget: float) -> None:
        """Stop every producer, all within ``budget`` seconds."""
        producers, self._producers = list(self._producers.values()), {}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(_stop(p) for p in producers)), max(0.1, budget))


async def _stop(producer: TxnProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5.0)
    except Exception as exc:
        log.warning("txn.producer_stop_failed", error=repr(exc))
