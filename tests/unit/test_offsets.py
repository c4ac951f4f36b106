"""Reading a group's committed offsets (``service.kafka.offsets.committed_from``) without a broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    NotCoordinatorError,
)

from service.kafka.offsets import CommittedOffsets, CoordinatorInDispute, agreed_coordinator, committed_from

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


def response(error_code: int, partitions: list[tuple[int, int, int]]) -> SimpleNamespace:
    """An OffsetFetch response (v2 and later): a top-level error and (partition, offset, error)."""
    return SimpleNamespace(error_code=error_code, topics=[("t", [(p, o, "", e) for p, o, e in partitions])])


def test_offsets_and_partitions_without_a_commit() -> None:
    assert committed_from(response(0, [(0, 950, 0), (1, -1, 0)])) == {T0: 950, T1: None}


@pytest.mark.parametrize(
    ("code", "error"),
    [(16, NotCoordinatorError), (14, CoordinatorLoadInProgressError), (30, GroupAuthorizationFailedError)],
)
def test_a_top_level_error_is_an_error_not_no_commit(code: int, error: type[Exception]) -> None:
    """A broker that is not (or not yet) the coordinator answers with no partitions and the error
    at the top level: aiokafka read that as "nothing committed"."""
    with pytest.raises(error):
        committed_from(response(code, []))


def test_a_partitions_error_is_an_error() -> None:
    with pytest.raises(NotCoordinatorError):
        committed_from(response(0, [(0, -1, 16)]))


@pytest.mark.parametrize(
    ("answers", "brokers", "agreed"),
    [
        ({1: 2, 2: 2, 3: 2}, 3, 2),
        ({1: 1, 2: 3, 3: 3}, 3, 3),  # broker 1, cut off, names itself: the others outvote it
        ({1: 1, 3: 3}, 3, None),  # one each and one silent: no majority yet
        ({2: 3, 3: 3}, 3, 3),
        ({1: 1}, 3, None),
        ({1: 2, 2: 2}, 4, None),  # two of four is no majority
        ({1: 2, 2: 2, 3: 2}, 4, 2),
        ({}, 3, None),
    ],
)
def test_the_coordinator_is_the_one_a_majority_of_the_brokers_name(
    answers: dict[int, int], brokers: int, agreed: int | None
) -> None:
    assert agreed_coordinator(answers, brokers) == agreed


class FakeClient:
    """A client whose brokers each name a coordinator (or fail, or never answer)."""

    def __init__(self, answers: dict[int, int | Exception | None]) -> None:
        self.answers = answers
        self.cluster = SimpleNamespace(brokers=lambda: [SimpleNamespace(nodeId=n) for n in answers])
        self.asked: list[int] = []
        self.hung: list[asyncio.Future[None]] = []

    async def send(self, node: int, request: object) -> SimpleNamespace:
        self.asked.append(node)
        answer = self.answers[node]
        if answer is None:  # a broker that does not answer
            hang: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.hung.append(hang)
            await hang
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(error_code=0, coordinator_id=answer)

    async def coordinator_lookup(self, kind: int, key: str) -> int:
        return 7


async def test_a_broker_that_names_itself_against_the_others_is_outvoted() -> None:
    client = FakeClient({1: 1, 2: 3, 3: 3})
    offsets = CommittedOffsets({}, "g")
    assert await offsets._coordinator(client) == 3  # type: ignore[arg-type]
    assert sorted(client.asked) == [1, 2, 3]


async def test_a_majority_needs_no_silent_broker() -> None:
    client = FakeClient({1: None, 2: 3, 3: 3})
    assert await asyncio.wait_for(CommittedOffsets({}, "g")._coordinator(client), 5) == 3  # type: ignore[arg-type]
    assert all(hang.cancelled() for hang in client.hung), "the silent broker's request is given up"


async def test_without_a_majority_the_lookup_is_retried() -> None:
    client = FakeClient({1: 1, 2: 2, 3: KafkaConnectionError()})
    with pytest.raises(CoordinatorInDispute) as raised:
        await CommittedOffsets({}, "g")._coordinator(client)  # type: ignore[arg-type]
    assert raised.value.retriable


async def test_one_broker_is_asked_as_aiokafka_asks() -> None:
    assert await CommittedOffsets({}, "g")._coordinator(FakeClient({1: 1})) == 7  # type: ignore[arg-type]
