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
