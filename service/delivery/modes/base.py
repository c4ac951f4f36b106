"""The seam of the delivery modes (``INGEST_DELIVERY``): how processed batches become delivered.

The pipeline knows only these calls: ``begin`` a batch, hand it over when processed
(``handed_over``), ``relieve`` it when over the bytes-in-flight ceiling, ``settle`` everything
before a pause, a stop, a rebalance or while idle, and the group's ``assigned``/``revoked``; a mode
reports what it committed as ``Delivered`` values, which the pipeline counts. ``Delivery`` holds
what both modes share (the metrics of a committed batch, the readiness fields, default hooks);
``AtLeastOnce`` and ``ExactlyOnce`` override what differs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.delivery.batch import Batch, Delivered
from service.delivery.retry import Retries
from service.kafka.failures import Failure
from service.ops.metrics import Metrics

log = structlog.get_logger("marker_ingest")


class Consumer(Protocol):
    """What the delivery modes use of the consumer: seeking and pausing its partitions."""

    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...


class Offsets(Protocol):
    """The group's committed offsets (``service.kafka.offsets.CommittedOffsets``): None where the
    group has none; raises ``KafkaError`` when its coordinator cannot say."""

    async def fetch(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]: ...


class Delivery:
    """Common ground of the delivery modes; a mode overrides ``begin``, ``handed_over`` and
    ``relieve``, and the hooks it needs."""

    def __init__(self, *, consumer: Consumer, offsets: Offsets, metrics: Metrics, retries: Retries) -> None:
        self._consumer, self._offsets = consumer, offsets
        self._metrics, self._retries, self._grace = metrics, retries, retries.grace
        self.send_error: str | None = None
        """Why events are not being delivered, for ``/readyz`` (None while they are)."""
        self.coordinator_error: str | None = None
        """Why offsets cannot be committed to the group coordinator, for ``/readyz``."""
        self.refusal: Failure | None = None
        """A refusal that no retry can cure, which stops the service (None while there is none)."""
        self._done: list[Delivered] = []
        self.starting: set[TopicPartition] = set()
        """Assigned partitions held paused until the broker answers for them (their committed
        offsets; in exactly-once, their producers first): ``/readyz`` counts the broker's silence
        over them as over a fetch."""

    @property
    def in_flight(self) -> int:
        """Bytes of the batches in hand that the broker has not acknowledged yet."""
        return 0

    def begin(self) -> Batch:
        """A new batch to process into."""
        raise NotImplementedError

    async def handed_over(self, batch: Batch) -> None:
        """``batch`` is processed: every outcome is in its sink."""
        raise NotImplementedError

    async def relieve(self, batch: Batch) -> None:
        """Over the bytes-in-flight ceiling in the middle of ``batch``: wait for the broker."""
        raise NotImplementedError

    async def settle(self) -> None:
        """Deliver everything handed over (acknowledged and committed) before returning."""

    def take_delivered(self) -> list[Delivered]:
        """What was committed since the last call (also after a call that raised)."""
        done, self._done = self._done, []
        return done

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group assigned ``partitions`` to this instance: read them from the group's committed
        offsets (a mode that must first settle what the previous owner left overrides it)."""
        partitions = list(partitions)
        if partitions:
            self._consumer.pause(*partitions)  # before any await: nothing is fetched from a stale offset
            self.starting.update(partitions)
            await self._read_from_committed(partitions)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """``partitions`` move away, once everything handed over is settled."""
        self.starting.difference_update(partitions)

    async def stop(self, budget: float) -> None:
        """The service is stopping: complete nothing more; release the mode's own clients within
        ``budget`` seconds."""

    async def _read_from_committed(self, partitions: list[TopicPartition]) -> None:
        """Seek the paused ``partitions`` to the group's committed offsets, asking until the group
        coordinator answers, then resume them (a partition without a commit starts where
        ``INGEST_AUTO_OFFSET_RESET`` says). aiokafka's own reading takes a coordinator that moved
        for "nothing committed"; a stop requested meanwhile leaves them paused."""
        retry = self._retries.new("fetch")
        while True:
            try:
                offsets = await self._grace.within(self._offsets.fetch(partitions))
                break
            except KafkaError as exc:
                if self._grace.requested:
                    return
                await retry.after("offsets.retrying", error=repr(exc), partitions=len(partitions))
        for tp, offset in offsets.items():
            if offset is not None:
                self._consumer.seek(tp, offset)
        self._consumer.resume(*partitions)
        self.starting.difference_update(partitions)

    def _delivered(self, batch: Batch, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Record a committed batch (or the committed ``partitions`` of it) for the pipeline, and
        count it in the metrics."""
        done = batch.delivered(partitions)
        batch.end_traces(partitions)
        metrics = self._metrics
        metrics.count_batch(
            messages=done.messages,
            payload_bytes=done.payload_bytes,
            records=done.records,
            dead_letters=done.dead_letters,
        )
        metrics.batch_seconds.observe(time.perf_counter() - done.started)
        self._done.append(done)
