"""Burst mode's drain check over fakes: own partitions by position, a peer's by committed offsets."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from service.delivery.burst import DrainCheck
from service.settings import Settings

T = "in"
P0, P1, P2 = (TopicPartition(T, p) for p in range(3))


class FakeConsumer:
    """The group consumer: its assignment, positions, high watermarks and the group's commits."""

    def __init__(self, partitions: set[int], assigned: set[TopicPartition], **state: Any) -> None:
        self.partitions, self.assigned = partitions, assigned
        self.high: dict[TopicPartition, int | None] = state.get("high", {})
        self.positions: dict[TopicPartition, int] = state.get("positions", {})
        self.commits: dict[TopicPartition, int | None] = state.get("commits", {})

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return self.partitions

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.commits.get(tp)


class FakeProbe:
    """The group-less probe: it learns each partition's end from a fetch."""

    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends, self.seeks, self.started = ends, {}, False

    async def start(self) -> None:
        self.started = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        return {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)


def check(probe: FakeProbe | None = None) -> DrainCheck:
    return DrainCheck(Settings(input_topic=T), make_probe=lambda: probe)


async def test_own_partitions_count_by_position() -> None:
    consumer = FakeConsumer({0}, {P0}, high={P0: 10}, positions={P0: 9})
    assert not await check().drained(consumer, 0.0)  # type: ignore[arg-type]
    consumer.positions[P0] = 10
    assert await check().drained(consumer, 0.0)  # type: ignore[arg-type]


async def test_an_unknown_end_is_not_drained() -> None:
    consumer = FakeConsumer({0}, {P0}, positions={P0: 0})
    assert not await check().drained(consumer, 100.0)  # type: ignore[arg-type]


async def test_a_peers_partitions_count_by_the_groups_commits() -> None:
    """P1 and P2 are a dead peer's: drained only once the group's commits reach their ends."""
    consumer = FakeConsumer({0, 1, 2}, {P0}, high={P0: 5}, positions={P0: 5}, commits={P1: 7, P2: None})
    probe = FakeProbe({P1: 7, P2: 3})
    assert not await check(probe).drained(consumer, 0.0)  # type: ignore[arg-type]
    assert probe.seeks == {P1: 7, P2: 0}, "a partition never committed counts from 0"
    consumer.commits[P2] = 3
    assert await check(FakeProbe({P1: 7, P2: 3})).drained(consumer, 0.0)  # type: ignore[arg-type]


async def test_a_topic_whose_partitions_stay_unknown_drains_after_the_idle_time() -> None:
    consumer = FakeConsumer(set(), set())
    idle = Settings().burst_idle_seconds
    assert not await check().drained(consumer, idle - 0.1)  # type: ignore[arg-type]
    assert await check().drained(consumer, idle + 0.1)  # type: ignore[arg-type]
