"""A fetched batch's books: what its messages became, which sends are on their way, what it may
commit; and ``Delivered``, what a delivery mode reports once a batch (or part of one) is committed.

The pipeline only calls ``Batch.add`` (a message's outcomes into the sink, the books kept); the
delivery modes ``take`` the sends to await and read the books to commit. Nobody else writes them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from aiokafka import TopicPartition

from schemas.errors import ErrorCode
from service.core.events import Outcome
from service.delivery.outbox import Send
from service.delivery.tracing import PartitionTrace


class Sink(Protocol):
    """Where a batch's sends go: an ``Outbox``, or one per input partition (transactions)."""

    async def add(self, send: Send) -> None: ...
    async def flush(self) -> None: ...


@dataclass(slots=True)
class _Books:
    """One input partition's share of a batch."""

    first: int
    """The first offset: where an aborted transaction goes back to."""
    next: int = 0
    """The offset to commit: the last message's plus one."""
    messages: int = 0
    records: int = 0
    payload_bytes: int = 0
    dead_letters: dict[ErrorCode, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a delivery mode committed: the offsets, and the tallies of the messages behind them."""

    offsets: dict[TopicPartition, int]
    messages: int
    records: int
    payload_bytes: int
    dead_letters: dict[ErrorCode, int]
    started: float
    """When the batch's processing began (``time.perf_counter``)."""


class Taken(NamedTuple):
    """Sends taken from a batch to be awaited, and the Kafka timestamps of their messages."""

    sends: list[Send]
    timestamps: list[int | None]


class Batch:
    """One fetched batch: its sends handed to ``sink``, its books kept per input partition.

    ``in_flight`` counts the bytes read and produced since the sends were last taken: what the
    broker has not acknowledged yet.
    """

    __slots__ = (
        "_books",
        "_last",
        "_sends",
        "_timestamps",
        "acked_at",
        "in_flight",
        "sink",
        "started",
        "traces",
    )

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.started = time.perf_counter()
        self.in_flight = 0
        self.acked_at: float | None = None
        """When the broker had acknowledged every send taken at the end of processing."""
        self._books: dict[TopicPartition, _Books] = {}
        self._last: tuple[TopicPartition, _Books] | None = None
        self._sends: list[Send] = []
        self._timestamps: list[int | None] = []
        self.traces: dict[TopicPartition, PartitionTrace] = {}
        """Per input partition, its spans (tracing on only)."""

    async def add(
        self, tp: TopicPartition, message: Any, outcomes: Sequence[Outcome], sends: list[Send]
    ) -> int:
        """One message of ``tp`` (a consumer record) became ``outcomes``, going out as ``sends``:
        hand them to the sink and keep the books. Returns how many were dead letters."""
        last = self._last
        if last is not None and last[0] == tp:
            books = last[1]
        else:
            books = self._books.get(tp) or self._books.setdefault(tp, _Books(first=message.offset))
            self._last = (tp, books)
        size = len(message.value or b"")
        in_flight = size
        for send in sends:
            await self.sink.add(send)
            in_flight += len(send.event.value)
        self._sends.extend(sends)
        dead = 0
        for outcome in outcomes:
            if outcome.error is not None:
                books.dead_letters[outcome.error] = books.dead_letters.get(outcome.error, 0) + 1
                dead += 1
        books.next = message.offset + 1
        books.messages += 1
        books.records += len(outcomes)
        books.payload_bytes += size
        self._timestamps.append(message.timestamp)
        self.in_flight += in_flight
        return dead

    @property
    def sends(self) -> Sequence[Send]:
        """The sends handed over and not taken yet (read only)."""
        return self._sends

    def take(self) -> Taken:
        """The sends handed over since the last take, and their messages' timestamps; the bytes in
        flight start again from zero."""
        taken = Taken(self._sends, self._timestamps)
        self._sends, self._timestamps, self.in_flight = [], [], 0
        return taken

    @property
    def partitions(self) -> list[TopicPartition]:
        """The input partitions of the batch, in the order they were fetched."""
        return list(self._books)

    @property
    def messages(self) -> int:
        """Input messages in the batch."""
        return sum(b.messages for b in self._books.values())

    def offsets(self) -> dict[TopicPartition, int]:
        """Per input partition, the offset to commit: the last message's plus one."""
        return {tp: b.next for tp, b in self._books.items()}

    def first_offset(self, tp: TopicPartition) -> int | None:
        """The batch's first offset of ``tp`` (where an aborted transaction goes back to)."""
        books = self._books.get(tp)
        return None if books is None else books.first

    def end_traces(
        self, partitions: Iterable[TopicPartition] | None = None, error: str | None = None
    ) -> None:
        """The ``send`` spans of the batch (or of ``partitions``) end: delivered, or ``error``."""
        traces = self.traces
        if traces:
            for tp in list(traces) if partitions is None else partitions:
                trace = traces.pop(tp, None)
                if trace is not None:
                    trace.delivered(error)

    def delivered(self, partitions: Iterable[TopicPartition] | None = None) -> Delivered:
        """What committing the batch (or only ``partitions`` of it) delivers."""
        chosen = list(self._books) if partitions is None else list(partitions)
        books = [self._books[tp] for tp in chosen if tp in self._books]
        dead_letters: dict[ErrorCode, int] = {}
        for b in books:
            for code, n in b.dead_letters.items():
                dead_letters[code] = dead_letters.get(code, 0) + n
        return Delivered(
            offsets={tp: self._books[tp].next for tp in chosen if tp in self._books},
            messages=sum(b.messages for b in books),
            records=sum(b.records for b in books),
            payload_bytes=sum(b.payload_bytes for b in books),
            dead_letters=dead_letters,
            started=self.started,
        )
