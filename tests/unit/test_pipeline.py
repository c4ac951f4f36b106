"""The pipeline's loop over a fake consumer and a fake producer, without a broker.

The fake consumer hands out scripted batches (and nothing once they are gone), records commits and
can fail a fetch; the fake producer is the one of ``test_delivery`` with a broker that acknowledges
on its own. Each test drives ``Pipeline.run`` as the service does, at-least-once delivery behind it:
batches go out in order and are committed once acknowledged, a failed send is sent again (never a
dead letter), a rebalance in the middle of a batch waits for it and commits it first, and a stop
delivers and commits what is in hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError

from service import __version__
from service.delivery.burst import DrainCheck
from service.delivery.grace import Grace
from service.delivery.modes.at_least_once import AtLeastOnce
from service.delivery.outbox import Outbox
from service.delivery.pipeline import Pipeline
from service.delivery.retry import Retries
from service.delivery.safety_gate import SafetyGate
from service.errors import GraceExpired
from service.kafka.clients import Kafka
from service.ops.metrics import Metrics
from service.settings import Settings
from tests.unit.test_delivery import FakeOffsets, FakeProducer, FakeSeeker

TOPIC = "news.raw"
IN0, IN1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def record(fn: int, date: str = "2024-01-24") -> bytes:
    return (
        f"F-N-S-T-A-R-T. {fn} F-N-E-N-D. D-A-T-E-S-T-A-R-T. {date} D-A-T-E-E-N-D. "
        f"T-I-T-L-E-S-T-A-R-T. Title {fn} T-I-T-L-E-E-N-D. T-E-X-T-S-T-A-R-T. Body {fn}. T-E-X-T-E-N-D."
    ).encode()


@dataclass
class Message:
    """A consumer record."""

    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 1_706_000_000_000


class FakeConsumer:
    """Hands out the scripted batches, then nothing; ``on_fetch`` runs as each batch is returned."""

    def __init__(self, batches: list[dict[TopicPartition, list[Message]]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail_fetches: list[BaseException] = []
        self.on_fetch: Callable[[int], None] | None = None
        self.fetched = 0
        self.paused_partitions: set[TopicPartition] = set()
        self.answered: dict[TopicPartition, int] = {}
        """When the broker last answered a fetch of each partition (ms since the epoch)."""

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Message]]:
        if self.fail_fetches:
            raise self.fail_fetches.pop(0)
        if not self.batches:
            await asyncio.sleep(0.005)
            return {}
        self.fetched += 1
        if self.on_fetch is not None:
            self.on_fetch(self.fetched)
        return self.batches.pop(0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return {IN0, IN1}

    def paused(self) -> set[TopicPartition]:
        return self.paused_partitions

    def highwater(self, _tp: TopicPartition) -> int | None:
        return None

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.answered.get(tp)


class AckingProducer(FakeProducer):
    """A broker that acknowledges each record batch a moment after it arrives (or fails it once,
    for the first ``fail_first`` batches; or, once ``frozen``, never answers)."""

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__(partitions=1, capacity=1000)
        self.fail_first = fail_first
        self.frozen = False

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future = await super().send_batch(builder, topic, partition=partition)
        loop = asyncio.get_running_loop()
        if self.frozen:
            return future
        if self.fail_first:
            self.fail_first -= 1
            loop.call_later(0.001, future.set_exception, NotLeaderForPartitionError())
        else:
            loop.call_later(0.001, future.set_result, object())
        return future


@dataclass
class Rig:
    consumer: FakeConsumer
    producer: AckingProducer
    pipeline: Pipeline
    grace: Grace

    async def run_until(self, done: Callable[[], bool], *, then_stop: bool = True) -> None:
        """Run the pipeline until ``done()``, then request the stop and wait for the loop to end."""
        task = asyncio.create_task(self.pipeline.run())
        for _ in range(1000):
            if done() or task.done():
                break
            await asyncio.sleep(0.005)
        assert done(), "the pipeline did not get there"
        if then_stop:
            self.grace.request()
        await asyncio.wait_for(task, 5)

    def shipped(self) -> list[tuple[str, int, int]]:
        """(topic, input offset, record index) of every event shipped, in order."""
        out = []
        for batch in self.producer.shipped:
            for value in batch.values:
                event = orjson.loads(value)
                source = event.get("source")
                if isinstance(source, dict):
                    out.append((batch.topic, source["offset"], source["record_index"]))
                else:
                    out.append((batch.topic, event["kafkaoffset"], event["recordindex"]))
        return out


def rig(
    batches: list[dict[TopicPartition, list[Message]]], *, fail_first: int = 0, grace_seconds: float = 5.0
) -> Rig:
    settings = Settings(
        input_topic=TOPIC,
        output_topic="news.articles",
        dlq_topic="news.dlq",
        retry_initial_seconds=0.001,
        retry_max_seconds=0.002,
    )
    kafka, grace, metrics = Kafka.of(settings), Grace(grace_seconds), Metrics(__version__)
    consumer, producer = FakeConsumer(batches), AckingProducer(fail_first)
    retries = Retries(grace, metrics, (0.001, 0.002))
    offsets = FakeOffsets()
    delivery = AtLeastOnce(
        commit=consumer.commit,
        outbox=lambda: Outbox(producer, 1 << 20),  # type: ignore[arg-type]
        consumer=FakeSeeker(),
        offsets=offsets,
        metrics=metrics,
        retries=retries,
        access=kafka.access,
        stall_after=0.2,
    )
    pipeline = Pipeline(
        kafka,
        consumer,  # type: ignore[arg-type]
        delivery,
        grace=grace,
        metrics=metrics,
        safety=SafetyGate(None, metrics),
        fetch_retry=retries.new("fetch"),
        drain_check=DrainCheck(kafka, offsets),
    )
    return Rig(consumer, producer, pipeline, grace)


def messages(
    tp: TopicPartition, first: int, count: int, *, bad: set[int] = frozenset()
) -> dict[TopicPartition, list[Message]]:  # type: ignore[assignment]
    return {
        tp: [
            Message(o, record(o, "2024-02-30" if o in bad else "2024-01-24"))
            for o in range(first, first + count)
        ]
    }


async def test_batches_go_out_in_order_and_are_committed_once_acknowledged() -> None:
    r = rig([messages(IN0, 0, 3, bad={1}), {**messages(IN0, 3, 2), **messages(IN1, 0, 2)}])
    await r.run_until(lambda: r.pipeline.messages_done == 7)
    assert r.consumer.commits == [{IN0: 3}, {IN0: 5, IN1: 2}]
    shipped = r.shipped()
    assert [s for s in shipped if s[0] == "news.articles"] == [
        ("news.articles", o, 0) for o in (0, 2, 3, 4, 0, 1)
    ]
    assert [s for s in shipped if s[0] == "news.dlq"] == [("news.dlq", 1, 0)]
    assert (r.pipeline.messages_done, r.pipeline.records_done) == (7, 7)


async def test_a_failed_send_is_sent_again_never_dead_lettered_and_then_committed() -> None:
    r = rig([messages(IN0, 0, 2)], fail_first=1)
    await r.run_until(lambda: bool(r.consumer.commits))
    shipped = r.shipped()
    assert shipped == [("news.articles", 0, 0), ("news.articles", 1, 0)] * 2, "the same events again"
    assert r.consumer.commits == [{IN0: 2}]


async def test_a_fetch_that_fails_is_retried_and_reported_until_one_succeeds() -> None:
    r = rig([messages(IN0, 0, 1)])
    r.consumer.fail_fetches = [KafkaConnectionError("down"), KafkaConnectionError("down")]
    await r.run_until(lambda: bool(r.consumer.commits))
    assert r.pipeline.fetch_error is None
    assert r.consumer.commits == [{IN0: 1}]


async def test_a_rebalance_in_the_middle_of_a_batch_waits_for_it_and_commits_it_first() -> None:
    """The group revokes the partition while a 100-message batch is being processed (the loop
    yields every 32 messages): the revocation waits until the batch is handed over, then delivers
    and commits it before the partition moves away."""
    r = rig([messages(IN0, 0, 100)])
    journal: list[str] = []
    revoked: list[asyncio.Task[None]] = []

    async def revoke() -> None:
        journal.append("revoking")
        await r.pipeline.drain({IN0})
        journal.append(f"revoked after commits {r.consumer.commits}")

    r.consumer.on_fetch = lambda _n: revoked.append(asyncio.get_running_loop().create_task(revoke()))
    await r.run_until(lambda: bool(revoked) and revoked[0].done())
    assert journal == ["revoking", "revoked after commits [{" + repr(IN0) + ": 100}]"]
    assert r.pipeline.messages_done == 100


async def test_a_stop_delivers_and_commits_what_is_in_hand_and_fetches_no_more() -> None:
    r = rig([messages(IN0, 0, 5), messages(IN0, 5, 5)])
    r.consumer.on_fetch = lambda n: r.grace.request() if n == 1 else None
    await r.run_until(lambda: r.grace.requested, then_stop=False)
    assert r.consumer.fetched == 1, "no fetch after the stop"
    assert r.consumer.commits == [{IN0: 5}]
    assert r.pipeline.messages_done == 5


async def test_the_counts_are_of_committed_messages_and_their_records_alike() -> None:
    """Every message holds two records; the second batch is never acknowledged (the broker froze)
    and the grace period runs out: both counts are of the first batch only (the summary of
    ``service.stopped`` once said 1000 messages and 3000 records for such a run)."""
    two = [Message(o, record(o) + b" " + record(o + 100)) for o in range(3)]
    more = [Message(o, record(o) + b" " + record(o + 100)) for o in range(3, 6)]
    r = rig([{IN0: two}, {IN0: more}], grace_seconds=0.2)

    def on_fetch(n: int) -> None:
        if n == 2:
            r.producer.frozen = True

    r.consumer.on_fetch = on_fetch
    task = asyncio.create_task(r.pipeline.run())
    for _ in range(1000):
        if r.consumer.fetched == 2 and not r.consumer.batches:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    r.grace.request()
    with pytest.raises(GraceExpired):
        await asyncio.wait_for(task, 5)
    assert r.consumer.commits == [{IN0: 3}]
    assert (r.pipeline.messages_done, r.pipeline.records_done) == (3, 6)


def test_the_brokers_silence_counts_from_its_last_answer_or_from_when_a_partition_became_fetchable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r, clock = rig([]), [1000.0]
    monkeypatch.setattr("service.delivery.pipeline.time.time", lambda: clock[0])
    assert r.pipeline.fetch_silence() == 0.0, "just assigned: nothing is late yet"
    clock[0] += 3
    assert r.pipeline.fetch_silence() == 3.0, "assigned 3 s ago and never answered"
    r.consumer.answered = {IN0: int(1002.5 * 1000)}
    assert r.pipeline.fetch_silence() == 0.5, "the newest answer counts"
    r.consumer.paused_partitions = {IN0, IN1}
    assert r.pipeline.fetch_silence() == 0.0, "paused partitions are not fetched: no silence"
    r.consumer.paused_partitions = set()
    clock[0] += 1
    assert r.pipeline.fetch_silence() == 0.0, "just resumed: counts from now"


def test_partitions_paused_until_the_broker_gives_their_offsets_count_as_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Assigned partitions are held paused while their committed offsets are read: a broker that
    freezes then must not look like an idle, healthy one to ``/readyz``."""
    r, clock = rig([]), [1000.0]
    monkeypatch.setattr("service.delivery.pipeline.time.time", lambda: clock[0])
    r.consumer.paused_partitions = {IN0, IN1}
    r.pipeline.delivery.starting.update({IN0, IN1})
    assert r.pipeline.fetch_silence() == 0.0
    clock[0] += 7
    assert r.pipeline.fetch_silence() == 7.0, "7 s without the offsets: the broker is silent"
    r.pipeline.delivery.starting.clear()
    assert r.pipeline.fetch_silence() == 0.0, "read and still paused (the safety switch): no silence"


async def test_the_offsets_read_marks_the_partitions_starting_until_they_resume() -> None:
    r = rig([])
    offsets: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[set[TopicPartition]] = []
    asked = asyncio.Event()

    async def slow_fetch(partitions: object) -> dict[TopicPartition, int | None]:
        seen.append(set(r.pipeline.delivery.starting))
        asked.set()
        await offsets
        return {IN0: 5}

    r.pipeline.delivery._offsets.fetch = slow_fetch  # type: ignore[method-assign]
    task = asyncio.create_task(r.pipeline.delivery.assigned([IN0]))
    await asyncio.wait_for(asked.wait(), 5)
    assert seen == [{IN0}]
    offsets.set_result(None)
    await task
    assert r.pipeline.delivery.starting == set()
