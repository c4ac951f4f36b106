"""Logging, configured once at start-up: JSON lines in production, a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    """Route structlog (and the standard library's loggers, e.g. aiokafka's) to stderr.

    ``auto`` picks the console renderer when stderr is a terminal, JSON otherwise.
    """
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    # structlog's own lines (one per record: the hot path) skip the str round trip in JSON mode:
    # orjson renders bytes and BytesLogger writes them to the binary stream, one line per write.
    # The standard library's lines (aiokafka) keep the str renderer that logging.Formatter needs.
    fast = not use_console
    own_renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps) if fast else renderer
    )
    factory: structlog.BytesLoggerFactory | structlog.PrintLoggerFactory = (
        structlog.BytesLoggerFactory(sys.stderr.buffer) if fast else structlog.PrintLoggerFactory(sys.stderr)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not use_console:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, own_renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level == "INFO" else level)
