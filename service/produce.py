"""Pushing marker-text files to the input topic: what upstream producers and the demo use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from service.settings import Settings


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the files under directories named (sorted, hidden files skipped).

    Raises ``FileNotFoundError`` for a path that does not exist.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not any(x.startswith(".") for x in p.parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(str(path))
    return files


@dataclass
class PushReport:
    """What a push did."""

    files: int = 0
    messages: int = 0
    bytes: int = 0
    refused: list[tuple[Path, str]] = field(default_factory=list)


def producer_for(settings: Settings) -> AIOKafkaProducer:
    """A producer with the service's connection, security and durability settings."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        max_request_size=2 * settings.max_payload_bytes + 1024 * 1024,
        linger_ms=5,
        **settings.kafka_client_kwargs(),
    )


async def push_messages(
    settings: Settings,
    messages: Iterator[tuple[bytes | None, bytes]],
    *,
    topic: str | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send (key, value) pairs to ``topic`` (default: the input topic); wait for every ack."""
    producer = producer_for(settings)
    await producer.start()
    sent = 0
    try:
        futures = []
        for key, value in messages:
            futures.append(await producer.send(topic or settings.input_topic, value, key=key))
            sent += 1
            if on_sent is not None:
                on_sent(len(value))
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return sent


async def push_files(settings: Settings, files: list[Path], *, topic: str | None = None) -> PushReport:
    """One message per file, keyed by the file name."""
    report = PushReport(files=len(files))

    def messages() -> Iterator[tuple[bytes | None, bytes]]:
        for path in files:
            data = path.read_bytes()
            report.bytes += len(data)
            yield path.name.encode(), data

    report.messages = await push_messages(settings, messages(), topic=topic)
    return report
