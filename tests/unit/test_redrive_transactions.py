"""``redrive`` with INGEST_DELIVERY=exactly-once, over a fake transactional producer: each input is
committed with its marker or not at all; a failure commits nothing more; a fenced run stops.

The real broker's side (fencing, read_committed, a second run) is in
tests/integration/test_redrive_command.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
import pytest
from aiokafka.errors import (
    IllegalOperation,
    MessageSizeTooLargeError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    UnknownError,
)
from structlog.testing import capture_logs

from schemas.errors import ErrorCode
from service.kafka.failures import Stage
from service.tools import redrive_publish as publishing
from service.tools.redrive_messages import RedriveMessage
from service.tools.redrive_plan import Decision

NOW = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)


class FakeTxnProducer:
    """What ``publish_in_transactions`` uses of aiokafka's transactional producer."""

    def __init__(
        self, *, refuse: bytes = b"", fail: dict[bytes, BaseException] | None = None, ended: bytes = b""
    ) -> None:
        self.refuse, self.fail, self.ended = refuse, fail or {}, ended
        self.calls: list[str] = []
        self.open: list[tuple[str, bytes]] = []
        self.committed: list[tuple[str, bytes]] = []

    async def begin_transaction(self) -> None:
        self.calls.append("begin")
        self.open = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        if value == self.refuse:
            raise MessageSizeTooLargeError("over max_request_size")
        if value == self.ended:  # what aiokafka's producer says once it knows it was fenced
            raise IllegalOperation("Can't send messages while not in transaction")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if (error := self.fail.get(value)) is not None:
            future.set_exception(error)
        else:
            future.set_result(None)
        self.open.append((topic, value))
        return future

    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        self.committed += self.open

    async def abort_transaction(self) -> None:
        self.calls.append("abort")
        self.open = []


def _messages(n: int) -> list[tuple[Decision, RedriveMessage]]:
    return [
        (
            Decision(f"in:0:{i}:0", 0, i, ErrorCode.NO_MARKERS, "payload", 0, None),
            RedriveMessage(b"k", f"payload {i}".encode(), ()),
        )
        for i in range(n)
    ]


def _inputs(producer: FakeTxnProducer) -> list[bytes]:
    return [value for topic, value in producer.committed if topic == "in"]


def _marked(producer: FakeTxnProducer) -> list[int]:
    return [
        orjson.loads(value)["dead_letter"]["offset"] for topic, value in producer.committed if topic == "dlq"
    ]


async def _publish(producer: FakeTxnProducer, n: int) -> set[str]:
    return await publishing.publish_in_transactions(producer, "dlq", "in", _messages(n), now=NOW)


async def test_inputs_and_their_markers_commit_together_in_transactions_of_bounded_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publishing, "TRANSACTION_SIZE", 2)
    producer = FakeTxnProducer()
    assert await _publish(producer, 5) == set()
    assert producer.calls == ["begin", "commit"] * 3
    assert _inputs(producer) == [f"payload {i}".encode() for i in range(5)]
    assert _marked(producer) == [0, 1, 2, 3, 4]
    assert [t for t, _ in producer.committed[:4]] == ["in", "dlq", "in", "dlq"], "each input, then its marker"


async def test_a_message_the_producer_refuses_is_left_out_and_the_rest_commit() -> None:
    producer = FakeTxnProducer(refuse=b"payload 1")
    assert await _publish(producer, 3) == {"in:0:1:0"}
    assert producer.calls == ["begin", "commit"]
    assert _inputs(producer) == [b"payload 0", b"payload 2"]
    assert _marked(producer) == [0, 2], "no marker without its input"


async def test_a_failed_send_aborts_and_commits_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing, "TRANSACTION_SIZE", 2)
    producer = FakeTxnProducer(fail={b"payload 3": UnknownError("refused")})
    with capture_logs() as logs:
        failed = await _publish(producer, 6)
    assert failed == {"in:0:2:0", "in:0:3:0", "in:0:4:0", "in:0:5:0"}
    assert producer.calls == ["begin", "commit", "begin", "abort"]
    assert _inputs(producer) == [b"payload 0", b"payload 1"]
    assert [(e["event"], e["not_committed"]) for e in logs] == [("redrive.transaction_failed", 4)]


async def test_a_fenced_run_stops_without_aborting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later run's InitProducerId fenced this one: what it did not commit is that run's to redrive,
    and aiokafka's fenced producer cannot abort anyway."""
    monkeypatch.setattr(publishing, "TRANSACTION_SIZE", 2)
    producer = FakeTxnProducer(fail={b"payload 2": ProducerFenced()})
    with capture_logs() as logs:
        failed = await _publish(producer, 4)
    assert failed == {"in:0:2:0", "in:0:3:0"}
    assert producer.calls == ["begin", "commit", "begin"]
    assert [(e["event"], e["not_committed"]) for e in logs] == [("redrive.fenced", 2)]


async def test_a_run_fenced_between_two_sends_stops_without_a_traceback() -> None:
    """aiokafka fails the sends already made with ``ProducerFenced``, then refuses the next send with
    ``IllegalOperation`` (no ``KafkaError``): the run stops as fenced, it does not crash."""
    producer = FakeTxnProducer(fail={b"payload 0": ProducerFenced()}, ended=b"payload 1")
    with capture_logs() as logs:
        failed = await _publish(producer, 3)
    assert failed == {"in:0:0:0", "in:0:1:0", "in:0:2:0"}
    assert producer.calls == ["begin"]
    assert [e["event"] for e in logs] == ["redrive.fenced"]


async def test_a_refused_write_is_raised_for_the_operator() -> None:
    producer = FakeTxnProducer(fail={b"payload 0": TopicAuthorizationFailedError({"in"})})
    with pytest.raises(publishing.Refused) as refused:
        await _publish(producer, 2)
    assert (refused.value.stage, refused.value.resource) == (Stage.SEND, "in")
    assert producer.calls == ["begin", "abort"]
    assert producer.committed == []
