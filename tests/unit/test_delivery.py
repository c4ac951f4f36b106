"""The delivery layer's guarantees over fakes: the outbox and the at-least-once completion.

A fake producer keeps every batch handed to it with a future the test resolves (the broker's
acknowledgement or its refusal); a fake commit records the offsets. Each guarantee of
docs/guarantees.md that the delivery layer keeps has a test here, beside the fault test that proves
it on a real broker: nothing committed before every event of the batch is acknowledged (3), a
failed send retried with the same event and never turned into a dead letter (2, 4), the resend in
input order across batches, a commit refused after a rebalance not fatal (8), the bytes in flight
bounded (6), the grace period ending the wait without a commit (7).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    CoordinatorLoadInProgressError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotCoordinatorError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)
from structlog.testing import capture_logs

from service import __version__
from service.core.events import Outcome
from service.delivery.batch import Batch, Delivered
from service.delivery.grace import Grace
from service.delivery.modes.at_least_once import AtLeastOnce
from service.delivery.outbox import Outbox, Send
from service.delivery.retry import Retries
from service.delivery.routing import Destination
from service.errors import GraceExpired
from service.kafka.failures import access_from
from service.ops.metrics import Metrics
from service.settings import Settings

IN0, IN1 = TopicPartition("in", 0), TopicPartition("in", 1)


@dataclass
class FakeBuilder:
    """aiokafka's batch builder: takes records until ``capacity``."""

    capacity: int
    records: list[bytes] = field(default_factory=list)

    def append(self, *, key: bytes | None, value: bytes, timestamp: None, headers: Any) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append(value)
        return object()


@dataclass
class Shipped:
    """One batch handed to the fake producer, with the future the test resolves."""

    topic: str
    partition: int
    values: list[bytes]
    future: asyncio.Future[Any]


class FakeCluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def available_partitions_for_topic(self, _topic: str) -> set[int]:
        return set(range(self.partitions))


class FakeClient:
    def __init__(self, partitions: int) -> None:
        self.cluster = FakeCluster(partitions)


class FakeProducer:
    """aiokafka's batch API, with a broker the test drives: ``ack`` and ``fail`` each shipped batch."""

    def __init__(self, partitions: int = 1, capacity: int = 100) -> None:
        self.partitions, self.capacity = partitions, capacity
        self.client = FakeClient(partitions)
        self.shipped: list[Shipped] = []

    async def partitions_for(self, _topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(self.capacity)

    async def send_batch(self, builder: FakeBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.shipped.append(Shipped(topic, partition, list(builder.records), future))
        return future

    def unresolved(self) -> list[Shipped]:
        return [s for s in self.shipped if not s.future.done()]

    def ack_all(self) -> int:
        pending = self.unresolved()
        for s in pending:
            s.future.set_result(object())
        return len(pending)

    def fail_all(self, exc: BaseException) -> int:
        pending = self.unresolved()
        for s in pending:
            s.future.set_exception(exc)
        return len(pending)


class FakeOffsets:
    """The group's committed offsets, as ``CommittedOffsets.fetch`` answers: ``commits`` (None where
    the group has none), after raising what the test queued (a coordinator that moved)."""

    def __init__(self, journal: list[tuple[int, str]] | None = None) -> None:
        self.commits: dict[TopicPartition, int] = {}
        self.raises: list[BaseException] = []
        self.journal = journal if journal is not None else []

    async def fetch(self, partitions: Any) -> dict[TopicPartition, int | None]:
        tps = list(partitions)
        self.journal.extend((tp.partition, "committed?") for tp in tps)
        if self.raises:
            raise self.raises.pop(0)
        return {tp: self.commits.get(tp) for tp in tps}


class FakeSeeker:
    """The consumer as the delivery modes use it: seeks, pauses, resumes."""

    def __init__(self, journal: list[tuple[int, str]] | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)
        self.journal.extend((tp.partition, "pause") for tp in tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)
        self.journal.extend((tp.partition, "resume") for tp in tps)


class FakeCommit:
    """The consumer's ``commit``: records the offsets, or raises what the test queued."""

    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []
        self.raises: list[BaseException] = []

    async def __call__(self, offsets: dict[TopicPartition, int]) -> None:
        if self.raises:
            raise self.raises.pop(0)
        self.committed.append(dict(offsets))


@dataclass
class Rig:
    producer: FakeProducer
    commit: FakeCommit
    delivery: AtLeastOnce
    grace: Grace
    metrics: Metrics
    consumer: FakeSeeker
    offsets: FakeOffsets
    delivered: list[Delivered] = field(default_factory=list)
    """What the delivery reported committed, in order."""


def rig(
    *,
    partitions: int = 1,
    capacity: int = 100,
    max_request_size: int = 10_000,
    stall: float = 30.0,
    grace_seconds: float = 5.0,
) -> Rig:
    producer, commit = FakeProducer(partitions, capacity), FakeCommit()
    grace, metrics = Grace(grace_seconds), Metrics(__version__)
    consumer, offsets = FakeSeeker(), FakeOffsets()
    delivery = AtLeastOnce(
        commit=commit,
        outbox=lambda: Outbox(producer, max_request_size),  # type: ignore[arg-type]
        consumer=consumer,
        offsets=offsets,
        metrics=metrics,
        retries=Retries(grace, metrics, (0.001, 0.002)),
        access=access_from(Settings()),
        stall_after=stall,
    )
    return Rig(producer, commit, delivery, grace, metrics, consumer, offsets)


@dataclass
class FakeMessage:
    """A consumer record, as much of it as a batch's books read."""

    offset: int
    value: bytes
    timestamp: int | None = None


def send(tp: TopicPartition, offset: int, value: bytes, topic: str = "articles") -> Send:
    return Send(tp, offset, topic, Destination(topic, None, value, []), [])


async def process(delivery: AtLeastOnce, *items: tuple[TopicPartition, int, bytes]) -> Batch:
    """What the pipeline does with a fetched batch: each message's one outcome into the batch."""
    batch = delivery.begin()
    for tp, offset, value in items:
        outcome = Outcome(0, f"{tp.topic}:{tp.partition}:{offset}:0", None, value)
        await batch.add(tp, FakeMessage(offset, value), [outcome], [send(tp, offset, value)])
    return batch


async def handed_over(r: Rig, batch: Batch) -> None:
    await r.delivery.handed_over(batch)
    r.delivered.extend(r.delivery.take_delivered())


async def settled(r: Rig, *, ack: bool = True, rounds: int = 200) -> None:
    """Run ``settle`` while the fake broker acknowledges whatever arrives."""
    task = asyncio.create_task(r.delivery.settle())
    for _ in range(rounds):
        await asyncio.sleep(0.002)
        if ack:
            r.producer.ack_all()
        if task.done():
            break
    await task
    r.delivered.extend(r.delivery.take_delivered())


# ------------------------------------------------------------------------------------------ outbox


async def test_the_outbox_keeps_order_per_partition_and_ships_full_batches() -> None:
    producer = FakeProducer(partitions=1, capacity=2)
    outbox = Outbox(producer, 10_000)  # type: ignore[arg-type]
    sends = [send(IN0, i, f"v{i}".encode()) for i in range(5)]
    for s in sends:
        await outbox.add(s)
    assert [b.values for b in producer.shipped] == [[b"v0", b"v1"], [b"v2", b"v3"]], (
        "full batches ship at once"
    )
    await outbox.flush()
    assert [v for b in producer.shipped for v in b.values] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert sends[0].future is sends[1].future is producer.shipped[0].future
    assert sends[4].future is producer.shipped[2].future


async def test_an_event_over_the_request_size_fails_alone_and_is_not_shipped() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, 200)  # type: ignore[arg-type]
    small, huge = send(IN0, 0, b"small"), send(IN0, 1, b"x" * 500)
    await outbox.add(small)
    await outbox.add(huge)
    await outbox.flush()
    assert isinstance(huge.error, MessageSizeTooLargeError)
    assert huge.future is None
    assert [b.values for b in producer.shipped] == [[b"small"]]


# -------------------------------------------------------------------------------------- completion


async def test_nothing_is_committed_until_every_event_of_the_batch_is_acknowledged() -> None:
    r = rig()
    batch = await process(r.delivery, (IN0, 0, b"a"), (IN0, 1, b"b"))
    await handed_over(r, batch)
    settle = asyncio.create_task(r.delivery.settle())
    await asyncio.sleep(0.05)
    assert not settle.done()
    assert r.commit.committed == [], "committed before the broker acknowledged"
    r.producer.ack_all()
    await settle
    [done] = r.delivery.take_delivered()
    assert r.commit.committed == [{IN0: 2}]
    assert (done.offsets, done.messages, done.records) == ({IN0: 2}, 2, 2)


async def test_handing_over_the_next_batch_completes_the_one_before() -> None:
    """The first batch is committed in the background once the second is handed over; the next
    completion waits for that commit before it starts its own (commits stay in order)."""
    r = rig()
    first = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, first)
    assert r.commit.committed == [], "a batch waits for the next one (or settle) to be completed"
    r.producer.ack_all()
    second = await process(r.delivery, (IN0, 1, b"b"))
    await handed_over(r, second)
    await asyncio.sleep(0)  # the commit runs beside the next batch's processing
    assert r.commit.committed == [{IN0: 1}], "only the first: the second is not acknowledged yet"
    assert r.delivered == [], "reported once its commit is done, at the next call"
    await settled(r)
    assert r.commit.committed == [{IN0: 1}, {IN0: 2}]
    assert [d.offsets for d in r.delivered] == [{IN0: 1}, {IN0: 2}]


@pytest.mark.parametrize("error", [KafkaTimeoutError(), NotLeaderForPartitionError(), RequestTimedOutError()])
async def test_a_failed_send_is_resent_unchanged_then_committed_never_dead_lettered(error: Exception) -> None:
    r = rig()
    batch = await process(r.delivery, (IN0, 0, b"a"), (IN0, 1, b"b"))
    await handed_over(r, batch)
    r.producer.fail_all(error)
    with capture_logs() as logs:
        await settled(r)
    assert [b.values for b in r.producer.shipped] == [[b"a", b"b"], [b"a", b"b"]], "the same events again"
    assert {b.topic for b in r.producer.shipped} == {"articles"}, "a transient fault became a dead letter"
    assert r.commit.committed == [{IN0: 2}]
    assert r.delivery.send_error is None, "still reported once delivered"
    # aiokafka marks some of these not retriable (logged as send.refused): the service retries them all.
    retrying = [e for e in logs if e["event"] in ("send.retrying", "send.refused")]
    assert len(retrying) == 1
    assert retrying[0]["offset"] == 0
    assert r.metrics.retries["send"]._value.get() == 1


async def test_while_a_send_fails_it_is_reported_and_nothing_is_committed() -> None:
    r = rig()
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    settle = asyncio.create_task(r.delivery.settle())
    for _ in range(5):  # refused again and again: retried each time, never committed
        await asyncio.sleep(0.01)
        r.producer.fail_all(NotLeaderForPartitionError())
    await asyncio.sleep(0.01)
    assert r.delivery.send_error is not None
    assert "articles" in r.delivery.send_error
    assert r.commit.committed == []
    assert len(r.producer.shipped) >= 4
    r.producer.ack_all()
    for _ in range(100):
        await asyncio.sleep(0.005)
        r.producer.ack_all()
        if settle.done():
            break
    await settle
    assert r.commit.committed == [{IN0: 1}]


async def test_the_resend_repeats_a_partition_from_its_first_failure_in_input_order_across_batches() -> None:
    r = rig(capacity=1)  # one record per shipped batch: each send has its own future
    first = await process(r.delivery, (IN0, 0, b"a0"), (IN1, 0, b"b0"), (IN0, 1, b"a1"))
    await handed_over(r, first)
    r.producer.shipped[0].future.set_exception(NotLeaderForPartitionError())  # a0 failed
    r.producer.ack_all()  # b0, a1 acknowledged
    second = await process(r.delivery, (IN0, 2, b"a2"), (IN1, 1, b"b1"))
    task = asyncio.create_task(r.delivery.handed_over(second))
    for _ in range(200):  # the broker acknowledges everything else, then the resend
        await asyncio.sleep(0.002)
        r.producer.ack_all()
        if task.done():
            break
    await task
    await r.delivery.settle()
    values = [v for b in r.producer.shipped for v in b.values]
    assert values[:5] == [b"a0", b"b0", b"a1", b"a2", b"b1"], "both batches shipped once"
    resent = values[5:]
    assert resent == [b"a0", b"a1", b"a2"], "partition in:0 from its first failure on, later batch included"
    assert r.commit.committed == [{IN0: 2, IN1: 1}, {IN0: 3, IN1: 2}]


async def test_a_commit_refused_after_a_rebalance_is_logged_and_not_fatal() -> None:
    r = rig()
    r.commit.raises.append(CommitFailedError("rebalanced"))
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    with capture_logs() as logs:
        await settled(r)
    assert [e["event"] for e in logs if e["event"].startswith("commit")] == ["commit.refused"]
    assert r.commit.committed == []
    assert r.metrics.commit_failures._value.get() == 1


async def test_a_commit_that_times_out_is_retried() -> None:
    r = rig()
    r.commit.raises.append(RequestTimedOutError())
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    await settled(r)
    assert r.commit.committed == [{IN0: 1}]
    assert r.metrics.retries["commit"]._value.get() == 1


async def test_once_the_grace_period_is_over_the_wait_ends_without_a_commit() -> None:
    r = rig(grace_seconds=0.05)
    grace = r.grace
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    grace.request()
    with pytest.raises(GraceExpired):
        await r.delivery.settle()  # the broker never answers
    assert r.commit.committed == []


async def test_a_stalled_acknowledgement_is_reported_then_cleared() -> None:
    r = rig(stall=0.02)
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    with capture_logs() as logs:
        settle = asyncio.create_task(r.delivery.settle())
        await asyncio.sleep(0.1)
        assert r.delivery.send_error is not None
        assert r.delivery.send_error.startswith("events to articles not acknowledged")
        assert r.commit.committed == []
        r.producer.ack_all()
        await settle
    events = [e["event"] for e in logs]
    assert events.count("send.stalled") == 1, "logged once however long it lasts"
    assert r.delivery.send_error is None
    assert r.commit.committed == [{IN0: 1}]


async def test_relieving_the_bytes_in_flight_waits_for_the_broker_and_resets_the_count() -> None:
    r = rig()
    previous = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, previous)
    current = await process(r.delivery, (IN0, 1, b"bb"))
    assert (previous.in_flight, current.in_flight) == (2, 4), "each message's payload and event bytes"
    assert r.delivery.in_flight == 6
    task = asyncio.create_task(r.delivery.relieve(current))
    for _ in range(100):
        await asyncio.sleep(0.002)
        r.producer.ack_all()
        if task.done():
            break
    await task
    [done] = r.delivery.take_delivered()
    assert r.commit.committed == [{IN0: 1}], "the batch before is committed; this one when it is completed"
    assert done.offsets == {IN0: 1}
    assert r.delivery.in_flight == 0
    assert list(current.sends) == []
    assert current.offsets() == {IN0: 2}, "its offsets wait for its completion"


async def test_once_stopped_nothing_more_is_completed() -> None:
    r = rig()
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    r.producer.ack_all()
    await r.delivery.stop(1.0)
    await r.delivery.settle()
    assert r.delivery.take_delivered() == []
    assert r.commit.committed == []


async def test_a_commit_without_a_group_coordinator_is_reported_until_one_succeeds() -> None:
    r = rig()
    r.commit.raises.extend([NotCoordinatorError(), NotCoordinatorError()])
    batch = await process(r.delivery, (IN0, 0, b"a"))
    await handed_over(r, batch)
    task = asyncio.create_task(settled(r))
    reported = []
    while not task.done():
        reported.append(r.delivery.coordinator_error)
        await asyncio.sleep(0.0005)
    await task
    assert any(e and "committing offsets failed" in e for e in reported), "/readyz never said so"
    assert r.delivery.coordinator_error is None
    assert r.commit.committed == [{IN0: 1}]


async def test_an_assigned_partition_starts_from_the_committed_offset_once_the_coordinator_answers() -> None:
    """The group coordinator moved (NOT_COORDINATOR, then loading): aiokafka reads that as "nothing
    committed" and would start the partition over (the chaos run found it). The partition stays
    paused until the coordinator says where the group stands, then starts there."""
    r = rig()
    r.offsets.commits[IN0] = 950
    r.offsets.raises.extend([NotCoordinatorError(), CoordinatorLoadInProgressError()])
    await r.delivery.assigned([IN0, IN1])
    assert r.consumer.seeks == [(IN0, 950)], "in:1 has no commit: the reset policy applies"
    assert r.consumer.paused == set()
    assert r.metrics.retries["fetch"]._value.get() == 2
