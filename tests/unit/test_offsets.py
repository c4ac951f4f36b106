"""Reading a group's committed offsets (``service.kafka.offsets.committed_from``) without a broker."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CoordinatorLoadInProgressError, GroupAuthorizationFailedError, NotCoordinatorError

from service.kafka.offsets import committed_from

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
