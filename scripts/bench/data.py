"""The records and the broker chores: datasets of ~5.5 KB marker records, loaded once per sitting.

A dataset is one input topic: bench_core's records (the seed and variants of it, distinct FNs), every
``round(1 / share)``-th with an impossible date when it has dead letters. Sizes follow the service's
clients (``service/kafka/clients.py``) so that the loaders and the probes fit its largest events.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BATCH_MAX = 500
"""The peers' batch (the service's ``INGEST_BATCH_MAX_MESSAGES`` default)."""
BATCH_TIMEOUT_MS = 200
MAX_PAYLOAD = 1_000_000
FETCH_PARTITION_BYTES = max(1024 * 1024, MAX_PAYLOAD + 64 * 1024)
PRODUCER_BATCH = 512 * 1024
MAX_REQUEST = 2 * MAX_PAYLOAD + 1024 * 1024

LATENCY_FN = 10_000_000
"""The paced messages' keys and FNs: 10,000,000 + their index, which ties every event to its input."""
LATENCY_TEMPLATES = 2000
WARMUP = 20
"""Messages that show an implementation answers before a paced run starts."""

FN = re.compile(r"(F-N-S-T-A-R-T\. )(\d+)( F-N-E-N-D\.)")
_DATE = re.compile(r"D-A-T-E-S-T-A-R-T\. \S+ D-A-T-E-E-N-D\.")
BAD_DATE = "D-A-T-E-S-T-A-R-T. 2024-02-30 D-A-T-E-E-N-D."


@dataclass
class Dataset:
    """One input topic, pre-loaded once per sitting."""

    name: str
    dl_share: float
    topic: str
    partitions: int
    payloads: list[bytes]
    keys: list[bytes]
    dead: list[bool]
    traced: bool = False
    """Every message carries a ``traceparent`` header (``--traced-input``)."""

    @property
    def messages(self) -> int:
        return len(self.payloads)

    @property
    def bytes(self) -> int:
        return sum(map(len, self.payloads))

    @property
    def expected_articles(self) -> int:
        return self.messages - sum(self.dead)

    @property
    def expected_dead(self) -> int:
        return sum(self.dead)


def make_dataset(name: str, count: int, dl_share: float, topic: str, partitions: int = 1) -> Dataset:
    """``count`` records (bench_core's); every round(1/share)-th gets an impossible date."""
    from bench_core import make_records

    records = make_records(count, 0.25, random.Random(2433))
    every = round(1 / dl_share) if dl_share > 0 else 0
    payloads, keys, dead = [], [], []
    for i, rec in enumerate(records):
        bad = bool(every) and i % every == every - 1
        if bad:
            rec = _DATE.sub(BAD_DATE, rec, count=1)
        m = FN.search(rec)
        assert m is not None
        payloads.append(rec.encode())
        keys.append(m.group(2).encode())
        dead.append(bad)
    return Dataset(name, dl_share, topic, partitions, payloads, keys, dead)


def templates(ds: Dataset, count: int) -> list[tuple[bytes, bytes]]:
    """The first ``count`` payloads cut around their FN: (before, after), for the pacer's messages."""
    out = []
    for payload in ds.payloads[:count]:
        m = FN.search(payload.decode())
        assert m is not None
        out.append((payload[: m.start(2)], payload[m.end(2) :]))
    return out


def plain_producer(bootstrap: str) -> Any:
    """A producer for loading data: acks=all, not idempotent, linger 5 ms, the largest requests."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=PRODUCER_BATCH,
        max_request_size=MAX_REQUEST,
    )


async def preload(bootstrap: str, ds: Dataset) -> float:
    """Send the dataset to its input topic (acks=all, keyed: the default partitioner spreads it);
    return the seconds it took."""
    producer = plain_producer(bootstrap)
    await producer.start()
    start = time.perf_counter()
    try:
        rng = random.Random(ds.topic)
        futures = []
        for value, key in zip(ds.payloads, ds.keys, strict=True):
            headers = None
            if ds.traced:
                parent = f"00-{rng.getrandbits(128) | 1:032x}-{rng.getrandbits(64) | 1:016x}-01"
                headers = [("traceparent", parent.encode())]
            futures.append(await producer.send(ds.topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - start


async def send_warmup(bootstrap: str, topic: str, payload: bytes, count: int = WARMUP) -> None:
    """``count`` valid messages (distinct FNs, key b"warmup") that show the implementation answers."""
    m = FN.search(payload.decode())
    assert m is not None
    pre, post = payload[: m.start(2)], payload[m.end(2) :]
    producer = plain_producer(bootstrap)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, pre + str(90_000_000 + i).encode() + post, key=b"warmup")
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Free the broker's disk and memory; failures are ignored."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(list(topics))
    except KafkaError:
        pass
    finally:
        await admin.close()


async def broker_count(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        return len(client.cluster.brokers())
    finally:
        await client.close()
