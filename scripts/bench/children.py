"""The processes a sitting starts beside the service, each ``bench_service.py --child KIND --config
JSON``: the passthrough, the FastStream and confluent-kafka peers, the latency reader and pacer."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import service_api
from bench.data import BATCH_MAX, BATCH_TIMEOUT_MS, FETCH_PARTITION_BYTES, LATENCY_FN, make_dataset, templates


def has(module: str) -> bool:
    """True when ``module`` can be imported."""
    return importlib.util.find_spec(module) is not None


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _stopping_flag() -> list[bool]:
    stopping: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    return stopping


async def passthrough(cfg: dict[str, Any]) -> int:
    """The ceiling: the service's client settings, its ``Outbox`` and cadence, no processing.

    Every value goes on unchanged (key and headers too) through the service's own ``Outbox`` (record
    batches per output partition, aiokafka's batch API); a batch is acknowledged and committed while
    the next one is sent, as the service completes batch N while it processes batch N+1.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

    consumer_kwargs, producer_kwargs = service_api.client_configs(
        cfg["bootstrap"], cfg["group"], idempotence=cfg["idempotence"]
    )
    outbox_type, send_type, destination = service_api.outbox_types()
    max_request = producer_kwargs["max_request_size"]
    stop = _stop_event()
    consumer = AIOKafkaConsumer(**consumer_kwargs)
    producer = AIOKafkaProducer(**producer_kwargs)
    out = cfg["output"]
    previous: list[tuple[list[Any], dict[Any, int]]] = []  # the batch handed over, not yet committed
    idle = asyncio.Event()  # no batch in hand
    idle.set()

    async def complete() -> None:
        if not previous:
            return
        sends, offsets = previous.pop()
        for future in {id(s.future): s.future for s in sends if s.future is not None}.values():
            await future
        failed = next((s.error for s in sends if s.error is not None), None)
        if failed is not None:
            raise failed
        await consumer.commit(offsets)

    class Settle(ConsumerRebalanceListener):  # type: ignore[misc]
        """As the service does: the batch in hand is processed and everything handed over committed
        before partitions move away (with --instances, peers join the group while it drains)."""

        async def on_partitions_revoked(self, revoked: Any) -> None:
            await idle.wait()
            await complete()

        async def on_partitions_assigned(self, assigned: Any) -> None:
            pass

    await producer.start()
    await consumer.start()
    consumer.subscribe([cfg["input"]], listener=Settle())
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=BATCH_TIMEOUT_MS, max_records=BATCH_MAX)
            if not batch:
                await complete()
                continue
            idle.clear()
            outbox = outbox_type(producer, max_request)
            sends, offsets = [], {}
            for tp, messages in batch.items():
                for msg in messages:
                    headers = list(msg.headers)
                    event = destination(out, msg.key, msg.value, headers)
                    send = send_type(tp, msg.offset, out, event, headers)
                    await outbox.add(send)
                    sends.append(send)
                offsets[tp] = messages[-1].offset + 1
            await outbox.flush()
            await complete()
            previous.append((sends, offsets))
            idle.set()
    finally:
        await consumer.stop()
        await producer.stop()
    return 0


def faststream(cfg: dict[str, Any]) -> int:
    """The transform written the way a FastStream user would: defaults everywhere."""
    from faststream import FastStream
    from faststream.kafka import KafkaBroker, KafkaMessage

    process_payload, source_type, limits = service_api.core()
    version = service_api.version()
    header = service_api.ERROR_CODE_HEADER
    broker = KafkaBroker(cfg["bootstrap"])
    articles = broker.publisher(cfg["output"])
    dead_letters = broker.publisher(cfg["dlq"])

    # auto_offset_reset="earliest" is the one non-default: the data was loaded before the group existed.
    @broker.subscriber(cfg["input"], group_id=cfg["group"], auto_offset_reset="earliest")
    async def handle(body: bytes, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        source = source_type(raw.topic, raw.partition, raw.offset, raw.timestamp, raw.key)
        now = dt.datetime.now(dt.UTC)
        for outcome in process_payload(body, source, limits, now=now, version=version):
            if outcome.error is None:
                await articles.publish(outcome.value, key=outcome.key)
            else:
                headers = {k: v.decode("utf-8", "replace") for k, v in raw.headers if k != header}
                headers[header] = outcome.error.value
                await dead_letters.publish(outcome.value, key=outcome.key, headers=headers)

    asyncio.run(FastStream(broker).run())
    return 0


def confluent(cfg: dict[str, Any]) -> int:
    """The transform with confluent-kafka: a plain consume / produce / flush / commit loop."""
    from confluent_kafka import Consumer, KafkaError, Producer

    process_payload, source_type, limits = service_api.core()
    version = service_api.version()
    header = service_api.ERROR_CODE_HEADER
    stopping = _stopping_flag()
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
        {"bootstrap.servers": cfg["bootstrap"], "acks": "all", "enable.idempotence": False, "linger.ms": 5}
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
                source = source_type(
                    msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], msg.key()
                )
                for outcome in process_payload(msg.value(), source, limits, now=now, version=version):
                    if outcome.error is None:
                        producer.produce(out, outcome.value, key=outcome.key, on_delivery=delivered)
                    else:
                        headers = [(k, v) for k, v in (msg.headers() or []) if k != header]
                        headers.append((header, outcome.error.value.encode()))
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


def reader(cfg: dict[str, Any]) -> int:
    """The latency probe: reads the output topics as events arrive; writes key, arrival, timestamp.

    librdkafka (confluent-kafka) when installed, as it costs the 2-core machine least; else aiokafka.
    Either asks the broker to hold an empty fetch for at most 5 ms, so the probe adds next to nothing
    (Tansu holds an empty fetch for half the fetch wait: ~250 ms at the clients' 500 ms default).
    """
    seen: list[tuple[str, float, int]] = []
    stopping = _stopping_flag()
    try:
        if has("confluent_kafka") and not cfg.get("aiokafka"):
            _read_confluent(cfg, seen, stopping)
        else:
            asyncio.run(_read_aiokafka(cfg, seen, stopping))
    finally:
        Path(cfg["result"]).write_text(json.dumps(seen))
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
    Path(cfg["ready"]).touch()
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
    Path(cfg["ready"]).touch()  # noqa: ASYNC240 - once, before the reading starts
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


def pacer(cfg: dict[str, Any]) -> int:
    """The paced producer: ``count`` messages at ``rate``/s, each stamped with its send time.

    The key (and the FN, so the article key too) is 10,000,000 + its index, which ties every event to
    its input message. librdkafka (confluent-kafka) when installed, else aiokafka; linger 5 ms.
    """
    ds = make_dataset("latency", cfg["templates"], cfg["dl_share"], cfg["topic"])
    cuts = templates(ds, cfg["templates"])
    sends: list[float] = []
    acks: list[float] = []
    if has("confluent_kafka") and not cfg.get("aiokafka"):
        _pace_confluent(cfg, cuts, sends, acks)
    else:
        asyncio.run(_pace_aiokafka(cfg, cuts, sends, acks))
    Path(cfg["result"]).write_text(json.dumps({"sends": sends, "acks": acks}))
    return 0


def _pace_confluent(
    cfg: dict[str, Any], cuts: list[tuple[bytes, bytes]], sends: list[float], acks: list[float]
) -> None:
    from confluent_kafka import Producer

    # linger 5 ms as upstream producers do (service/tools/produce.py): with none, Tansu takes one small
    # request per message and the input's own acks fall ~100 ms behind at a few thousand msgs/s.
    producer = Producer(
        {"bootstrap.servers": cfg["bootstrap"], "acks": "all", "enable.idempotence": False, "linger.ms": 5}
    )

    def acked(err: Any, msg: Any) -> None:
        acks.append(time.time() - sends[int(msg.key()) - LATENCY_FN] if err is None else -1.0)

    rate, count, topic = cfg["rate"], cfg["count"], cfg["topic"]
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pre, post = cuts[i % len(cuts)]
        fn = str(LATENCY_FN + i).encode()
        now = time.time()
        sends.append(now)
        producer.produce(topic, pre + fn + post, key=fn, timestamp=int(now * 1000), on_delivery=acked)
        producer.poll(0)
    producer.flush(60)


async def _pace_aiokafka(
    cfg: dict[str, Any], cuts: list[tuple[bytes, bytes]], sends: list[float], acks: list[float]
) -> None:
    from bench.data import plain_producer

    producer = plain_producer(cfg["bootstrap"])
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
            pre, post = cuts[i % len(cuts)]
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


def run_child(kind: str, config: str) -> int:
    """Run one child process's ``kind`` with its JSON ``config``; its exit status."""
    cfg = json.loads(config)
    if kind in ("passthrough", "reader", "pacer"):
        # They measure no service code: this checkout first, whatever --service-path says.
        sys.path.insert(0, str(service_api.ROOT))
    if kind == "passthrough":
        return asyncio.run(passthrough(cfg))
    if kind == "faststream":
        return faststream(cfg)
    if kind == "confluent":
        return confluent(cfg)
    if kind == "reader":
        return reader(cfg)
    if kind == "pacer":
        return pacer(cfg)
    raise SystemExit(f"unknown child {kind!r}")
