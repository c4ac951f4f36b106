"""The chaos run's feed: uniquely numbered input messages, some bad, and what each must become.

Message *n* carries its number in a ``chaos-seq`` header (dead letters copy the input's headers) and
in each record's title (``chaos <n>.<record index>``, which the article event carries). Its FN is a
*story* (``n % STORIES``), so FNs repeat and each story is one output key fed through one input
partition: the ordering check has sequences to look at. Which messages are bad, and the error code
each bad record must get, is decided here from *n* alone, following docs/contracts.md; it does not
ask the service's core (``test_chaos_checker.py`` holds the table to the core).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from tests.support import record

STORIES = 24
FILLER = ("lorem ipsum dolor sit amet " * 12)[:300]
SEQ_HEADER = "chaos-seq"


@dataclass(frozen=True)
class Message:
    """One input message and the outcome each of its records must have (None: an article)."""

    n: int
    key: bytes
    value: bytes | None
    expected: tuple[str | None, ...]

    @property
    def story(self) -> int:
        """The FN of its articles, and its key's story."""
        return self.n % STORIES

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """The input headers: the message number."""
        return [(SEQ_HEADER, str(self.n).encode())]

    def partition(self, partitions: int) -> int:
        """The input partition: one per story, so a story's messages stay in order."""
        return self.story % partitions


def title(n: int, index: int) -> str:
    """The title of record ``index`` of message ``n``."""
    return f"chaos {n}.{index}"


def _record(n: int, index: int, *, date: str = "2024-01-24") -> str:
    return record(n % STORIES, date=date, title=title(n, index), text=f"{FILLER} #{n}.{index}")


def message(n: int) -> Message:
    """Message ``n``: mostly one good record; every so often one of five kinds of bad input."""
    key = f"story-{n % STORIES}".encode()
    if n % 97 == 0:
        return Message(n, key, None, ("empty_payload",))
    if n % 89 == 0:
        return Message(n, key, _record(n, 0).encode() + b"\xff\xfe", ("invalid_encoding",))
    if n % 31 == 0:
        return Message(n, key, f"chaos {n}: plain words, no field markers".encode(), ("no_markers",))
    if n % 17 == 0:
        missing_title = (
            f"F-N-S-T-A-R-T. {n % STORIES} F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-24 D-A-T-E-E-N-D. "
            f"T-E-X-T-S-T-A-R-T. {FILLER} #{n}.1 T-E-X-T-E-N-D."
        )
        text = " ".join([_record(n, 0), missing_title, _record(n, 2)])
        return Message(n, key, text.encode(), (None, "missing_field", None))
    if n % 7 == 0:
        return Message(n, key, _record(n, 0, date="2024-02-30").encode(), ("invalid_field",))
    return Message(n, key, _record(n, 0).encode(), (None,))


class Feed:
    """Produces messages 1, 2, 3, ... at a steady rate to the input topic, whatever the cluster does.

    A send that fails (a timeout while a leader is away) is not repeated: the message may or may not
    be on the topic, and the checker accepts either. Every acknowledged message must be there, at the
    offset the broker acknowledged. ``sent.jsonl`` gets one line per message: ``n``, ``partition`` and
    ``offset`` (null when not acknowledged) and the error.
    """

    def __init__(self, bootstrap: str, topic: str, *, partitions: int, rate: float, log: Path) -> None:
        self.bootstrap, self.topic, self.partitions, self.rate = bootstrap, topic, partitions, rate
        self.log = log
        self.next_n = 1
        self.acked: dict[int, tuple[int, int]] = {}
        self.failed: dict[int, str] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._out = log.open("ab")

    @property
    def attempted(self) -> int:
        """Messages handed to the producer so far."""
        return self.next_n - 1

    def start(self) -> Feed:
        """Start producing in the background."""
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            request_timeout_ms=15_000,
            max_request_size=4 << 20,
        )
        await producer.start()
        tick = 0.1
        per_tick = max(1, round(self.rate * tick))
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                for _ in range(per_tick):
                    await self._send(producer, message(self.next_n))
                    self.next_n += 1
                ahead = (self.next_n - 1) / self.rate - (time.monotonic() - started)
                if ahead < -1.0:  # a send blocked: go on at the rate, without a burst to catch up
                    started += -ahead - 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, ahead))
            if self._pending:
                await asyncio.wait(self._pending)
        finally:
            await producer.stop()
            self._out.close()

    async def _send(self, producer: AIOKafkaProducer, msg: Message) -> None:
        try:
            fut = await asyncio.wait_for(
                producer.send(
                    self.topic,
                    msg.value,
                    key=msg.key,
                    headers=msg.headers,
                    partition=msg.partition(self.partitions),
                ),
                timeout=20,
            )
        except Exception as exc:
            self._settle(msg.n, None, exc)
            return
        task = asyncio.create_task(self._await(msg.n, fut))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _await(self, n: int, fut: asyncio.Future[object]) -> None:
        try:
            meta = await fut
        except Exception as exc:
            self._settle(n, None, exc)
        else:
            self._settle(n, (meta.partition, meta.offset), None)  # type: ignore[attr-defined]

    def _settle(self, n: int, where: tuple[int, int] | None, exc: BaseException | None) -> None:
        if where is not None:
            self.acked[n] = where
        else:
            self.failed[n] = repr(exc)
        line = {"n": n, "partition": None if where is None else where[0]}
        line.update(offset=None if where is None else where[1], error=None if exc is None else repr(exc))
        self._out.write(orjson.dumps(line) + b"\n")

    async def stop(self) -> None:
        """Stop producing; returns once every message handed over is acknowledged or failed."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
