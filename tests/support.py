"""Shared helpers for the suites that talk to a real broker: topics, feeds, reading back, accounting.

The accounting invariant: every input (partition, offset, record index) appears in the output or the
dead-letter topic; nothing refers to an unknown input; duplicates only ever carry identical ids.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from schemas.events import REDRIVEN_HEADER
from service import __version__
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.kafka.topics import create_topics, read_topic
from service.settings import Settings

Coord = tuple[int, int, int]
"""(input partition, input offset, record index)."""


@dataclass(frozen=True)
class Topics:
    """One test's private topics."""

    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def unique(cls, label: str) -> Topics:
        """Fresh names, so tests never see each other's data."""
        tag = f"{label}-{uuid.uuid4().hex[:8]}"
        return cls(f"{tag}.raw", f"{tag}.articles", f"{tag}.dlq", f"{tag}.group")

    async def create(
        self,
        bootstrap: str,
        partitions: int = 1,
        *,
        replication_factor: int = 1,
        configs: dict[str, str] | None = None,
        input_configs: dict[str, str] | None = None,
    ) -> Topics:
        """Create the three topics on the broker (``input_configs`` on the input topic only)."""
        if input_configs:
            await create_topics(
                bootstrap,
                {self.input: partitions},
                replication_factor=replication_factor,
                configs={**(configs or {}), **input_configs},
            )
        await create_topics(
            bootstrap,
            {self.input: partitions, self.output: 1, self.dlq: 1},
            replication_factor=replication_factor,
            configs=configs,
        )
        return self


def service_env(bootstrap: str, topics: Topics, *, idempotence: bool, **extra: str) -> dict[str, str]:
    """The environment a service process is started with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        INGEST_INPUT_TOPIC=topics.input,
        INGEST_OUTPUT_TOPIC=topics.output,
        INGEST_DLQ_TOPIC=topics.dlq,
        INGEST_GROUP_ID=topics.group,
        KAFKA_ENABLE_IDEMPOTENCE=str(idempotence).lower(),
        INGEST_LOG_FORMAT="json",
        INGEST_RETRY_MAX_SECONDS="2",
    )
    env.update(extra)
    return env


def settings_for(bootstrap: str, topics: Topics, *, idempotence: bool, **overrides: Any) -> Settings:
    """Settings for an in-process service."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "input_topic": topics.input,
        "output_topic": topics.output,
        "dlq_topic": topics.dlq,
        "group_id": topics.group,
        "kafka_enable_idempotence": idempotence,
        "retry_max_seconds": 2.0,
        "burst_idle_seconds": 8.0,
    }
    values.update(overrides)
    return Settings(**values)


SERVICE_CMD = [sys.executable, "-m", "service", "run"]


@dataclass(frozen=True)
class Sent:
    """One input message as it landed on the broker."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | None],
    *,
    partitions: int = 1,
    headers: list[tuple[str, bytes]] | None = None,
    timestamps: Sequence[int | None] | None = None,
) -> list[Sent]:
    """Send each value (round-robin over the partitions, keyed by its position, with its CreateTime
    from ``timestamps`` if given); return where it landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=4 << 20
    )
    await producer.start()
    try:
        futures = []
        items = list(values)
        for i, value in enumerate(items):
            futures.append(
                await producer.send(
                    topic,
                    value,
                    key=f"k{i}".encode(),
                    partition=i % partitions,
                    headers=headers,
                    timestamp_ms=None if timestamps is None else timestamps[i],
                )
            )
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        Sent(m.partition, m.offset, f"k{i}".encode(), v)
        for i, (m, v) in enumerate(zip(metas, items, strict=True))
    ]


async def read_all(bootstrap: str, topic: str, *, committed: bool = False) -> list[Any]:
    """Every record of ``topic``, to its end (``committed``: as a read_committed consumer sees it)."""
    kwargs = {"isolation_level": "read_committed"} if committed else None
    return await read_topic(bootstrap, topic, client_kwargs=kwargs)


def expected_outcomes(
    sent: Iterable[Sent], topic: str, limits: Limits | None = None
) -> dict[Coord, str | None]:
    """What the core says each input record becomes: coordinates → error code (None for an article)."""
    limits = limits or Limits()
    now = dt.datetime.now(dt.UTC)
    expected: dict[Coord, str | None] = {}
    for s in sent:
        for o in process_payload(
            s.value, Source(topic, s.partition, s.offset), limits, now=now, version=__version__
        ):
            expected[(s.partition, s.offset, o.record_index)] = None if o.error is None else o.error.value
    return expected


@dataclass
class Ledger:
    """What came out, by input coordinates."""

    articles: dict[Coord, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: dict[Coord, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    async def read(cls, bootstrap: str, topics: Topics, *, committed: bool = False) -> Ledger:
        """Read both output topics back (``committed``: only what committed transactions wrote)."""
        ledger = cls()
        for rec in await read_all(bootstrap, topics.output, committed=committed):
            ev = orjson.loads(rec.value)
            ledger.articles[(ev["kafkapartition"], ev["kafkaoffset"], ev["recordindex"])].append(ev)
        for rec in await read_all(bootstrap, topics.dlq, committed=committed):
            if any(name == REDRIVEN_HEADER for name, _ in rec.headers or ()):
                continue  # a redrive marker, not a dead letter
            ev = orjson.loads(rec.value)
            src = ev["source"]
            ledger.dead_letters[(src["partition"], src["offset"], src["record_index"])].append(ev)
        return ledger

    @property
    def total(self) -> int:
        """Events read, duplicates included."""
        return sum(map(len, self.articles.values())) + sum(map(len, self.dead_letters.values()))

    def check(self, expected: dict[Coord, str | None], *, exactly_once: bool) -> None:
        """Assert the accounting invariant (and no duplicates at all when ``exactly_once``)."""
        seen = set(self.articles) | set(self.dead_letters)
        missing = sorted(set(expected) - seen)
        unknown = sorted(seen - set(expected))
        assert not missing, f"{len(missing)} input records have no event, e.g. {missing[:5]}"
        assert not unknown, f"{len(unknown)} events refer to unknown inputs, e.g. {unknown[:5]}"
        both = sorted(set(self.articles) & set(self.dead_letters))
        assert not both, f"records that are both article and dead letter: {both[:5]}"
        for coord, code in expected.items():
            events = self.articles.get(coord) or self.dead_letters[coord]
            ids = {e["id"] for e in events}
            assert len(ids) == 1, f"{coord}: duplicates with different ids {ids}"
            if exactly_once:
                assert len(events) == 1, f"{coord}: {len(events)} copies"
            if code is None:
                assert coord in self.articles, f"{coord}: expected an article, got a dead letter"
            else:
                assert coord in self.dead_letters, f"{coord}: expected dead letter {code}, got an article"
                assert {e["error"]["code"] for e in events} == {code}, f"{coord}: wrong code"

    @property
    def duplicates(self) -> int:
        """Events beyond the first for each input record."""
        return self.total - len(set(self.articles) | set(self.dead_letters))


def record(
    fn: int | str, *, date: str = "2024-01-24", title: str | None = None, text: str | None = None
) -> str:
    """One well-formed record in marker text."""
    title = title if title is not None else f"Title of article {fn}"
    text = text if text is not None else f"Body of article {fn}.  Second sentence kept with its double space."
    return (
        f"F-N-S-T-A-R-T. {fn} F-N-E-N-D. D-A-T-E-S-T-A-R-T. {date} D-A-T-E-E-N-D. "
        f"T-I-T-L-E-S-T-A-R-T. {title} T-I-T-L-E-E-N-D. T-E-X-T-S-T-A-R-T. {text} T-E-X-T-E-N-D."
    )


def feed(count: int, *, start_fn: int = 1, body_bytes: int = 200, bad_every: int = 0) -> list[bytes]:
    """``count`` one-record payloads; every ``bad_every``-th has an impossible date."""
    filler = ("lorem ipsum dolor sit amet " * (body_bytes // 27 + 1))[:body_bytes]
    out = []
    for i in range(count):
        date = "2024-02-30" if bad_every and i % bad_every == bad_every - 1 else "2024-01-24"
        out.append(record(start_fn + i, date=date, text=filler + f" #{i}").encode())
    return out


def mixed_feed(max_payload_bytes: int = Limits().max_payload_bytes) -> dict[str, bytes | None]:
    """One payload per case: valid ones, every error code, multi-record, invalid UTF-8, null, oversize."""
    good = record
    return {
        "valid": good(10).encode(),
        "valid_bom_extra": b"\xef\xbb\xbf"
        + (good(11) + " S-O-U-R-C-E-S-T-A-R-T. BBC S-O-U-R-C-E-E-N-D.").encode(),
        "multi_bad_middle": (good(12) + " " + good(13, date="2024-13-01") + " " + good(14)).encode(),
        "invalid_encoding": good(15).encode() + b"\xff\xfe",
        "null": None,
        "empty": b"   \n\t ",
        "too_large": b"F-N-S-T-A-R-T. 1 F-N-E-N-D. " + b"x" * max_payload_bytes,
        "no_markers": b"just some words without any field markers",
        "unterminated": b"F-N-S-T-A-R-T. 16 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-01 T-I-T-L-E-S-T-A-R-T. t "
        b"T-I-T-L-E-E-N-D. T-E-X-T-S-T-A-R-T. x T-E-X-T-E-N-D.",
        "unmatched_end": (good(17) + " D-A-T-E-E-N-D.").encode(),
        "duplicate": (good(18) + " T-I-T-L-E-S-T-A-R-T. again T-I-T-L-E-E-N-D.").encode(),
        "missing": b"F-N-S-T-A-R-T. 19 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-01 D-A-T-E-E-N-D. "
        b"T-E-X-T-S-T-A-R-T. body T-E-X-T-E-N-D.",
        "stray": ("oops " + good(20)).encode(),
        "invalid_field": good("12a").encode(),
        "too_many": (" ".join(good(100 + i) for i in range(5))).encode(),  # with a limit of 4
    }


def get_text(port: int, path: str) -> tuple[int, str]:
    """A GET of the service's HTTP endpoint on 127.0.0.1: the status and the body (0 and "" when
    nothing answers). Blocking: call it through ``asyncio.to_thread`` where the loop must run."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""
