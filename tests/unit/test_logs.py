"""Logging: the Kafka client's lines in the service's shape, held back when they repeat, counted;
a log stream that cannot be written never raises."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

import orjson
import pytest
import structlog

import service.ops.logs
from service.ops.logs import configure_logging, log_write_errors, on_library_line


class _Stderr(io.TextIOWrapper):
    """A stand-in stderr (text on top of bytes, like the real one)."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", write_through=True)

    def lines(self) -> list[dict[str, Any]]:
        raw = self.buffer.getvalue()  # type: ignore[attr-defined]
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


class _Broken:
    """stderr after the reader of its pipe went away."""

    def write(self, _data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> _Broken:
        return self


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    config = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    on_library_line(None)
    structlog.configure(**config)
    logging.getLogger().handlers[:] = handlers


def test_repeated_client_lines_are_held_back_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    seen: list[str] = []
    configure_logging("json", "INFO")
    on_library_line(seen.append)
    client = logging.getLogger("aiokafka.client")
    for _ in range(300):
        client.error("Unable connect to node with id %s: %s", 1, "[Errno 111] Connect call failed")
    lines = stderr.lines()
    assert len(lines) == 1, lines[:3]
    [line] = lines
    assert line["event"] == "kafka_client.error"
    assert line["logger"] == "aiokafka.client"
    assert line["detail"].startswith("Unable connect to node with id 1")
    assert len(seen) == 300, "every line counts in the metrics, held back or not"


def test_after_the_window_the_next_line_says_how_many_were_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(service.ops.logs, "REPEAT_WINDOW_SECONDS", 0.0)
    configure_logging("json", "INFO")
    client = logging.getLogger("aiokafka.consumer")
    client.warning("Heartbeat failed")
    monkeypatch.setattr(service.ops.logs, "REPEAT_WINDOW_SECONDS", 3600.0)
    client.warning("Heartbeat failed")
    client.warning("Heartbeat failed")
    monkeypatch.setattr(service.ops.logs, "REPEAT_WINDOW_SECONDS", 0.0)
    client.warning("Heartbeat failed")
    client.warning("another message")
    lines = stderr.lines()
    assert [(e["detail"], e.get("repeated")) for e in lines] == [
        ("Heartbeat failed", None),
        ("Heartbeat failed", 2),
        ("another message", None),
    ]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_broken_log_stream_never_raises_and_is_counted(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setattr(sys, "stderr", _Broken())
    configure_logging(fmt, "INFO")  # type: ignore[arg-type]
    before = log_write_errors()
    log = structlog.get_logger("marker_ingest")
    log.info("stop.requested", grace_seconds=20)
    logging.getLogger("aiokafka").warning("a client warning")
    service.ops.logs.record_logger().info("record", offset=1)
    service.ops.logs.flush_records()
    assert log_write_errors() > before


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_record_lines_render_what_the_record_loggers_chain_renders(
    monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    """In JSON mode the canonical record line is rendered without a logger call per record: its
    bytes are the record logger's (structlog's chain: the level, the timestamp, orjson), but for the
    timestamp; at WARNING there is none."""
    stderr = _Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("json", level)
    lines = service.ops.logs.RecordLines("news.raw", 3)
    lines.add(7, 0, None, "news.raw:3:7:0")
    lines.add(7, 1, "invalid_field", "news.raw:3:7:1")
    logger = service.ops.logs.record_logger().bind(topic="news.raw", partition=3)
    logger.info(
        "record",
        offset=7,
        record_index=0,
        outcome="article",
        error_code=None,
        event_id="news.raw:3:7:0",
    )
    logger.info(
        "record",
        offset=7,
        record_index=1,
        outcome="dead_letter",
        error_code="invalid_field",
        event_id="news.raw:3:7:1",
    )
    service.ops.logs.flush_records()
    raw = stderr.buffer.getvalue().splitlines()  # type: ignore[attr-defined]
    if level == "WARNING":
        assert raw == []
        return
    fast, chain = raw[:2], raw[2:]

    def without_time(line: bytes) -> tuple[bytes, str]:
        head, _, stamp = line.rpartition(b',"timestamp":"')
        return head, stamp.decode()

    assert [without_time(line)[0] for line in fast] == [without_time(line)[0] for line in chain]
    assert all(len(without_time(line)[1]) == len("2024-01-24T08:15:02.123456Z") + 2 for line in fast)
