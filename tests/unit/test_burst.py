"""Burst mode's drain check over fakes: own partitions by position, a peer's by a probe reading from
the group's committed offsets."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import NotCoordinatorError

from service.delivery.burst import DrainCheck
from service.kafka.clients import Kafka
from service.settings import Settings

T = "in"
P0, P1, P2 = (TopicPartition(T, p) for p in range(3))


class FakeConsumer:
    """The group consumer: its assignment, positions, partition ends and the group's commits."""

    def __init__(self, partitions: set[int], assigned: set[TopicPartition], **state: Any) -> None:
        self.partitions, self.assigned = partitions, assigned
        self.ends: dict[TopicPartition, int | None] = state.get("ends", {})
        self.positions: dict[TopicPartition, int] = state.get("positions", {})
        self.commits: dict[TopicPartition, int | None] = state.get("commits", {})

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return self.partitions

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


class FakeProbe:
    """The group-less probe over a log per partition: ``records`` holds the offsets of readable
    records; anything else below ``ends`` (transaction markers, aborted records) is skipped by a
    fetch, as a read_committed consumer does. ``fetches_answered`` fetches complete, the rest time
    out before the broker answers (the end stays unknown)."""

    def __init__(self, ends: dict[TopicPartition, int], records: dict[TopicPartition, set[int]]) -> None:
        self.ends, self.records = ends, records
        self.seeks: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.known: dict[TopicPartition, int] = {}
        self.assigns = 0
        self.started = False
        self.fetches_answered = 1_000_000
        self.assigned: set[TopicPartition] = set()

    async def start(self) -> None:
        self.started = True

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigns += 1
        self.assigned, self.known = set(tps), {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = self.positions[tp] = offset

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[int]]:
        if self.fetches_answered <= 0:
            return {}
        self.fetches_answered -= 1
        out: dict[TopicPartition, list[int]] = {}
        for tp in self.assigned:
            self.known[tp] = self.ends[tp]
            readable = sorted(o for o in self.records.get(tp, set()) if o >= self.positions[tp])
            if readable:
                out[tp] = [readable[0]]
                self.positions[tp] = readable[0] + 1
            else:
                self.positions[tp] = max(self.positions[tp], self.ends[tp])
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.known.get(tp)


class GroupOffsets:
    """The group's committed offsets, read from the consumer fake (``CommittedOffsets`` stands for
    it in the service); ``unanswered`` fetches raise as a coordinator that moved does."""

    def __init__(self) -> None:
        self.consumer: FakeConsumer | None = None
        self.unanswered = 0

    async def fetch(self, partitions: Any) -> dict[TopicPartition, int | None]:
        if self.unanswered:
            self.unanswered -= 1
            raise NotCoordinatorError()
        assert self.consumer is not None
        return {tp: self.consumer.commits.get(tp) for tp in partitions}


def check(probe: FakeProbe | None = None, offsets: GroupOffsets | None = None) -> DrainCheck:
    return DrainCheck(Kafka.of(Settings(input_topic=T)), offsets or GroupOffsets(), make_probe=lambda: probe)


async def drained(drain: DrainCheck, consumer: FakeConsumer, idle: float = 0.0) -> bool:
    drain._offsets.consumer = consumer  # type: ignore[attr-defined]
    return await drain.drained(consumer, idle)  # type: ignore[arg-type]


async def test_own_partitions_count_by_position() -> None:
    consumer = FakeConsumer({0}, {P0}, ends={P0: 10}, positions={P0: 9})
    assert not await drained(check(), consumer, 0.0)
    consumer.positions[P0] = 10
    assert await drained(check(), consumer, 0.0)


async def test_an_unknown_end_is_not_drained() -> None:
    consumer = FakeConsumer({0}, {P0}, positions={P0: 0})
    assert not await drained(check(), consumer, 100.0)


async def test_a_peers_partitions_count_by_what_lies_past_the_groups_commits() -> None:
    """P1 and P2 are a peer's: drained only once nothing readable lies past the group's commits."""
    consumer = FakeConsumer({0, 1, 2}, {P0}, ends={P0: 5}, positions={P0: 5}, commits={P1: 7, P2: None})
    probe = FakeProbe({P1: 7, P2: 3}, {P1: set(range(7)), P2: {0, 1, 2}})
    drain = check(probe)
    assert not await drained(drain, consumer, 0.0)
    assert probe.seeks == {P1: 7, P2: 0}, "a partition never committed counts from its start"
    consumer.commits[P2] = 3
    assert await drained(drain, consumer, 0.0)


async def test_a_commit_short_of_a_transaction_marker_is_drained() -> None:
    """The peer committed 8, past its last record (7); offset 8 is the commit marker of its
    transaction, so the end is 9: nothing readable is left."""
    consumer = FakeConsumer({0, 1}, {P0}, ends={P0: 0}, positions={P0: 0}, commits={P1: 8})
    probe = FakeProbe({P1: 9}, {P1: set(range(8))})
    assert await drained(check(probe), consumer, 0.0)


async def test_the_probe_keeps_its_assignment_while_a_fetch_is_slow() -> None:
    """The bug of a burst run beside a live peer: the probe was assigned again on every check, which
    forgot the ends its last fetch had learned, so a fetch slower than one check never counted."""
    consumer = FakeConsumer({0, 1}, {P0}, ends={P0: 0}, positions={P0: 0}, commits={P1: 4})
    probe = FakeProbe({P1: 4}, {P1: set(range(4))})
    drain = check(probe)
    probe.fetches_answered = 1
    assert await drained(drain, consumer, 0.0)
    assert await drained(drain, consumer, 0.0)  # this fetch timed out
    assert probe.assigns == 1


async def test_a_topic_whose_partitions_stay_unknown_drains_after_the_idle_time() -> None:
    consumer = FakeConsumer(set(), set())
    idle = Settings().burst_idle_seconds
    assert not await drained(check(), consumer, idle - 0.1)
    assert await drained(check(), consumer, idle + 0.1)


async def test_a_coordinator_that_cannot_say_is_not_a_drained_partition() -> None:
    """A peer's partition whose commit the coordinator cannot tell now (it moved) is not drained:
    asked again at the next idle fetch, never read as "no commit", which would start it at 0."""
    consumer = FakeConsumer({0, 1}, {P0}, ends={P0: 0}, positions={P0: 0}, commits={P1: 4})
    offsets = GroupOffsets()
    offsets.unanswered = 1
    drain = check(FakeProbe({P1: 4}, {P1: set(range(4))}), offsets)
    assert not await drained(drain, consumer)
    assert await drained(drain, consumer)
