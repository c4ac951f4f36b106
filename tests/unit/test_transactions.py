"""Exactly-once delivery over fakes: one transaction per input partition of a batch.

The fake transactional producer records what the delivery asks of it (begin, the record batches,
the offsets, commit or abort); the fake consumer records seeks, pauses and resumes. The proofs on a
real broker, with read_committed consumers counting, are in tests/faults/test_exactly_once.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NotLeaderForPartitionError, ProducerFenced, RequestTimedOutError

from service import __version__
from service.core.events import Outcome
from service.delivery.batch import Batch, Delivered
from service.delivery.grace import Grace
from service.delivery.modes.exactly_once import ExactlyOnce
from service.delivery.outbox import Send
from service.delivery.retry import Retries
from service.delivery.routing import Destination
from service.errors import GraceExpired
from service.ops.metrics import Metrics
from tests.unit.test_delivery import FakeMessage, FakeOffsets, FakeProducer, FakeSeeker

IN0, IN1 = TopicPartition("in", 0), TopicPartition("in", 1)


class FakeTxnProducer(FakeProducer):
    """A transactional producer whose broker acknowledges every batch at once (unless told)."""

    def __init__(self, partition: int, journal: list[tuple[int, str]]) -> None:
        super().__init__()
        self.partition, self.journal = partition, journal
        self.fail_commit: BaseException | None = None
        self.fail_send: BaseException | None = None
        self.started = self.stopped = False

    def _note(self, what: str) -> None:
        self.journal.append((self.partition, what))

    async def start(self) -> None:
        await asyncio.sleep(0.01)
        self.started = True
        self._note("start")

    async def stop(self) -> None:
        self.stopped = True
        self._note("stop")

    async def begin_transaction(self) -> None:
        self._note("begin")

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future = await super().send_batch(builder, topic, partition=partition)
        self._note("send " + ",".join(v.decode() for v in builder.records))
        if self.fail_send is not None:
            future.set_exception(self.fail_send)
        else:
            future.set_result(object())
        return future

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        self._note(f"offsets {offsets[TopicPartition('in', self.partition)]} {group_id}")

    async def commit_transaction(self) -> None:
        if self.fail_commit is not None:
            error, self.fail_commit = self.fail_commit, None
            raise error
        self._note("commit")

    async def abort_transaction(self) -> None:
        self._note("abort")

    async def flush(self) -> None:
        pass


class Rig:
    def __init__(self, grace_seconds: float = 5.0) -> None:
        self.journal: list[tuple[int, str]] = []
        self.producers: list[FakeTxnProducer] = []
        self.consumer = FakeSeeker(self.journal)
        self.offsets = FakeOffsets(self.journal)
        self.metrics = Metrics(__version__)
        self.grace = Grace(grace_seconds)
        self.completed: list[Delivered] = []

        def make(partition: int) -> FakeTxnProducer:
            producer = FakeTxnProducer(partition, self.journal)
            self.producers.append(producer)
            return producer

        self.delivery = ExactlyOnce(
            make_producer=make,
            consumer=self.consumer,
            offsets=self.offsets,
            group_id="g",
            metrics=self.metrics,
            retries=Retries(self.grace, self.metrics, (0.001, 0.002)),
            max_request_size=10_000,
        )

    async def handed_over(self, batch: Batch) -> None:
        try:
            await self.delivery.handed_over(batch)
        finally:
            self.completed.extend(self.delivery.take_delivered())

    def producer(self, partition: int) -> FakeTxnProducer:
        return [p for p in self.producers if p.partition == partition and not p.stopped][-1]

    def of(self, partition: int, *, consumer: bool = False) -> list[str]:
        mine = [what for p, what in self.journal if p == partition]
        return mine if consumer else [w for w in mine if w not in ("pause", "resume", "committed?")]


async def process(delivery: ExactlyOnce, *items: tuple[TopicPartition, int, bytes]) -> Batch:
    """What the pipeline does with a fetched batch (see ``Pipeline._process``)."""
    batch = delivery.begin()
    for tp, offset, value in items:
        send = Send(tp, offset, "articles", Destination("articles", None, value, []), [])
        outcome = Outcome(0, f"{tp.topic}:{tp.partition}:{offset}:0", None, value)
        await batch.add(tp, FakeMessage(offset, value), [outcome], [send])
    return batch


def counted(metrics: Metrics, outcome: str) -> float:
    return float(metrics.transactions[outcome]._value.get())


async def test_a_batch_commits_its_events_and_offsets_in_one_transaction() -> None:
    r = Rig()
    batch = await process(r.delivery, (IN0, 5, b"a"), (IN0, 6, b"b"))
    await r.handed_over(batch)
    assert r.of(0) == ["start", "begin", "send a,b", "offsets 7 g", "commit"]
    [done] = r.completed
    assert (done.offsets, done.messages) == ({IN0: 7}, 2)
    assert counted(r.metrics, "committed") == 1
    assert r.consumer.seeks == []


@pytest.mark.parametrize("error", [NotLeaderForPartitionError(), RequestTimedOutError()])
async def test_a_failed_send_aborts_and_rewinds_to_the_batch_and_is_not_dead_lettered(
    error: Exception,
) -> None:
    r = Rig()
    await r.delivery.assigned([IN0])
    r.producer(0).fail_send = error
    batch = await process(r.delivery, (IN0, 5, b"a"), (IN0, 6, b"b"))
    await r.handed_over(batch)
    assert "commit" not in r.of(0)
    assert r.of(0)[-1] == "abort"
    assert r.consumer.seeks == [(IN0, 5)], "processed again from the batch's first offset"
    assert r.completed == [], "nothing counted as delivered"
    assert r.delivery.send_error is not None
    assert counted(r.metrics, "aborted") == 1
    assert all(s.topic == "articles" for p in r.producers for s in p.shipped), "no dead letter from a fault"
    # The batch again, fetched from the rewound offset: now the broker takes it.
    r.producer(0).fail_send = None
    again = await process(r.delivery, (IN0, 5, b"a"), (IN0, 6, b"b"))
    await r.handed_over(again)
    assert r.of(0)[-2:] == ["offsets 7 g", "commit"]
    assert [d.offsets for d in r.completed] == [{IN0: 7}]
    assert r.delivery.send_error is None


async def test_a_failed_commit_aborts_and_rewinds() -> None:
    r = Rig()
    await r.delivery.assigned([IN0])
    r.producer(0).fail_commit = RequestTimedOutError()
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await r.handed_over(batch)
    assert r.of(0)[-2:] == ["offsets 1 g", "abort"]
    assert r.consumer.seeks == [(IN0, 0)]
    assert r.completed == []


async def test_a_fenced_partition_is_dropped_paused_and_taken_up_again_when_reassigned() -> None:
    r = Rig()
    await r.delivery.assigned([IN0])
    zombie = r.producer(0)
    zombie.fail_commit = ProducerFenced()
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await r.handed_over(batch)
    assert "commit" not in r.of(0)
    assert "abort" not in r.of(0), "a fenced producer cannot abort; the broker already has"
    assert zombie.stopped
    assert r.consumer.paused == {IN0}, "no further batch of it until the group assigns it again"
    assert counted(r.metrics, "fenced") == 1
    assert r.completed == []
    await r.delivery.assigned([IN0])
    assert r.consumer.paused == set()
    assert r.producer(0) is not zombie
    assert r.producer(0).started, "a new producer, which fences whoever wrote the partition meanwhile"


async def test_partitions_of_one_batch_commit_apart_and_only_the_committed_count() -> None:
    r = Rig()
    await r.delivery.assigned([IN0, IN1])
    r.producer(1).fail_commit = RequestTimedOutError()
    batch = await process(r.delivery, (IN0, 0, b"a"), (IN1, 0, b"x"), (IN0, 1, b"b"))
    await r.handed_over(batch)
    assert r.of(0)[-1] == "commit"
    assert r.of(1)[-1] == "abort"
    assert r.consumer.seeks == [(IN1, 0)]
    [done] = r.completed
    assert done.offsets == {IN0: 2}
    assert (done.messages, done.records) == (2, 2), "in:1's message is processed again, not counted"
    assert r.metrics.input_messages._value.get() == 2


async def test_producers_start_once_however_many_ask() -> None:
    r = Rig()
    await asyncio.gather(r.delivery.assigned([IN0, IN1]), process(r.delivery, (IN0, 0, b"a"), (IN1, 0, b"b")))
    assert sorted(p.partition for p in r.producers) == [0, 1]


async def test_revoked_partitions_stop_their_producers() -> None:
    r = Rig()
    await r.delivery.assigned([IN0, IN1])
    await r.delivery.revoked([IN1])
    assert r.producer(0).started
    assert [p.stopped for p in r.producers if p.partition == 1] == [True]


async def test_once_the_grace_period_is_over_nothing_more_is_committed() -> None:
    r = Rig(grace_seconds=0.0)
    await r.delivery.assigned([IN0])
    batch = await process(r.delivery, (IN0, 0, b"a"))
    r.grace.request()
    await asyncio.sleep(0.01)
    with pytest.raises(GraceExpired):
        await r.handed_over(batch)
    assert "commit" not in r.of(0)
    assert r.completed == []


async def test_an_assigned_partition_is_read_from_the_offsets_committed_once_its_producer_started() -> None:
    """aiokafka fetches the committed offsets as the assignment arrives, possibly before the previous
    owner's last transaction is complete; starting the producer completes it, so the partition is
    paused until then and sought to the offsets fetched afterwards."""
    r = Rig()
    r.offsets.commits[IN0] = 42
    await r.delivery.assigned([IN0, IN1])
    assert r.of(0, consumer=True) == ["pause", "start", "committed?", "resume"]
    assert r.consumer.seeks == [(IN0, 42)], "in:1 has no commit: the consumer's reset policy applies"
    assert r.consumer.paused == set()


async def test_a_partition_whose_producer_cannot_start_stays_paused_and_is_retried() -> None:
    r = Rig()
    original = r.delivery._make_producer
    failures = [RequestTimedOutError(), RequestTimedOutError()]

    def flaky(partition: int) -> FakeTxnProducer:
        producer = original(partition)
        if failures:
            error = failures.pop()

            async def refuse() -> None:
                raise error

            producer.start = refuse  # type: ignore[method-assign]
        return producer

    r.delivery._make_producer = flaky
    await r.delivery.assigned([IN0])
    assert r.of(0, consumer=True) == ["pause", "stop", "stop", "start", "committed?", "resume"]
    assert r.consumer.paused == set()
