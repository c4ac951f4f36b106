"""Logging, configured once at start-up: JSON lines in production, a console renderer on a terminal.

The per-record line is the hot path (one per input record), so it has a logger of its own,
``record_logger()``, with the shortest processor chain that still yields the canonical line: the level, a
timestamp (``_IsoTime``: the date and time formatted once a second) and the renderer. In JSON mode its
lines are buffered and written in one go by ``flush_records`` (the loop calls it once per batch,
before awaiting the batch's acknowledgements), or by the next line of any other logger, which
writes everything buffered before it: the log keeps the order in which lines were logged.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, BinaryIO, Literal, TextIO, cast

import orjson
import structlog

RECORDS = "marker_ingest.records"


class _IsoTime:
    """``TimeStamper(fmt="iso", utc=True)`` (``2024-01-24T08:15:02.123456Z``), cheaper: the date and
    time of day are formatted once a second, the microseconds per line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _name: str, event_dict: structlog.typing.EventDict) -> Any:
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        """The time now, formatted."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"


REPEAT_WINDOW_SECONDS = 10.0
"""A Kafka client's line that repeats (same logger, level and message template) is written once per
this window; the next one written says how many were held back (``repeated``)."""

_write_errors = 0
_library_hook: Any = None


def log_write_errors() -> int:
    """Log writes that failed (a closed or broken stderr) since start-up; the lines were dropped."""
    return _write_errors


def on_library_line(hook: Any) -> None:
    """Call ``hook(logger_name)`` for every warning or error of the Kafka client (for the metrics),
    repeats held back included; ``None`` removes it."""
    global _library_hook
    _library_hook = hook


class _SafeStream:
    """stderr for the log lines: a write that fails (the reader of a pipe went away, the stream was
    closed) is counted and dropped, so that logging can never stop the service or a signal handler."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: Any) -> None:
        global _write_errors
        try:
            self._stream.write(data)
        except (OSError, ValueError):
            _write_errors += 1

    def flush(self) -> None:
        global _write_errors
        try:
            self._stream.flush()
        except (OSError, ValueError):
            _write_errors += 1

    def isatty(self) -> bool:
        return False


class _Repeats(logging.Filter):
    """Holds back a library line that repeats within ``REPEAT_WINDOW_SECONDS`` (aiokafka logs every
    failed connection attempt, hundreds of lines a minute during an outage)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        hook = _library_hook
        if hook is not None and record.levelno >= logging.WARNING:
            hook(record.name)
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < REPEAT_WINDOW_SECONDS:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.repeated = last[1]
        return True


def _library_event(_logger: Any, _name: str, event_dict: structlog.typing.EventDict) -> Any:
    """A Kafka client's line in the service's shape: a stable event name, the text as ``detail``."""
    event_dict["detail"] = event_dict.get("event")
    event_dict["event"] = f"kafka_client.{event_dict.get('level', 'info')}"
    return event_dict


# Hand-written on purpose: structlog's own fast path (BytesLoggerFactory, JSONRenderer with orjson,
# make_filtering_bound_logger, cache_logger_on_first_use, TimeStamper(fmt="iso", utc=True) and the
# processors of configure_logging) logs the record line at half the rate. `python scripts/bench_logs.py`
# (200,000 record lines to a file, batches of 500, 3 runs each alternating, medians, structlog 26.1):
# this path 89,813 records/s, structlog's 46,439 (0.52x); structlog's BytesLogger behind this module's
# short record chain 66,108 (0.74x): it writes and flushes every line, _Sink a batch's lines in one
# write. To /dev/null: 0.49x and 0.81x. See docs/performance.md.
class _Sink:
    """One binary stream for every JSON line; per-record lines wait in a buffer until the next flush."""

    def __init__(self, stream: BinaryIO | _SafeStream) -> None:
        self._stream = stream
        self.pending: list[bytes] = []
        """Lines waiting for the next flush (a list that is never replaced: writers keep it)."""

    def buffer(self, line: bytes) -> None:
        self.pending.append(line)

    def write(self, line: bytes) -> None:
        self.pending.append(line)
        self.flush()

    def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self._stream.write(data)
            self._stream.flush()


class _LineLogger:
    """structlog's logger for rendered JSON lines (bytes): written at once, after anything buffered."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def msg(self, message: bytes) -> None:
        self._sink.write(message + b"\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _BufferedLineLogger(_LineLogger):
    """The per-record lines: buffered until ``flush_records`` or the next line of another logger."""

    def msg(self, message: bytes) -> None:
        self._sink.buffer(message + b"\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _TextToSink:
    """A text stream for the standard library's handler (aiokafka's lines), writing through the sink."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def write(self, text: str) -> None:
        self._sink.write(text.encode("utf-8", "replace"))

    def flush(self) -> None:
        return None


def hide_credentials(record: logging.LogRecord) -> bool:
    """A logging filter: aiokafka logs every request at DEBUG, SaslAuthenticate's bytes (the PLAIN
    password, SCRAM's proofs) included; keep the line, drop the request's content."""
    if record.name.startswith("aiokafka") and record.levelno <= logging.DEBUG:
        text = record.getMessage()
        cut = text.find("SaslAuthenticateRequest")
        if cut >= 0:
            record.msg, record.args = text[:cut] + "SaslAuthenticateRequest(<credentials hidden>)", None
    return True


_configured: tuple[Any, Any, _Sink | None, int] | None = None
"""What ``configure_logging`` set up last: structlog's logger factory, the per-record logger, the
sink (JSON mode), the level."""


def _current() -> tuple[Any, Any, _Sink | None, int] | None:
    """The setup of ``configure_logging``, while structlog still runs with it (a caller that
    restored an earlier configuration, as the operator tools do, no longer does)."""
    configured = _configured
    if configured is not None and structlog.get_config()["logger_factory"] is configured[0]:
        return configured
    return None


def record_logger() -> Any:
    """The logger of the canonical per-record line (bind it to the record's topic and partition)."""
    current = _current()
    return current[1] if current is not None else structlog.get_logger(RECORDS)


class RecordLines:
    """The canonical record lines of one input partition: ``add`` one per record.

    In JSON mode (the production format) a line is rendered here, straight into the sink's buffer:
    the same bytes as the record logger's chain would write (add_log_level, the timestamp, orjson;
    ``tests/unit/test_logs.py`` holds the two to each other), without a logger call per record. In
    any other set-up the lines go through ``record_logger()``.
    """

    __slots__ = ("_buffer", "_logger", "_prefix")

    def __init__(self, topic: str, partition: int, **context: Any) -> None:
        current = _current()
        self._buffer: list[bytes] | None = None
        self._logger: Any = None
        if current is not None and current[2] is not None:
            if current[3] <= logging.INFO:
                self._buffer = current[2].pending
            bound = orjson.dumps({"topic": topic, "partition": partition, **context})
            self._prefix = bound[:-1] + b","
        else:
            self._logger = record_logger().bind(topic=topic, partition=partition, **context)
            self._prefix = b""

    def add(self, offset: int, record_index: int, error_code: str | None, event_id: str) -> None:
        """One record's line: where it was read, what it became, its event id."""
        buffer = self._buffer
        if buffer is not None:
            buffer.append(
                b'%s"offset":%d,"record_index":%d,%s"event_id":%s,"event":"record","level":"info",'
                b'"timestamp":"%s"}\n'
                % (self._prefix, offset, record_index, _OUTCOME[error_code], orjson.dumps(event_id), _stamp())
            )
        elif self._logger is not None:
            self._logger.info(
                "record",
                offset=offset,
                record_index=record_index,
                outcome="article" if error_code is None else "dead_letter",
                error_code=error_code,
                event_id=event_id,
            )


class _Outcomes(dict[str | None, bytes]):
    """The outcome fields of a record line by error code, rendered once."""

    def __missing__(self, code: str | None) -> bytes:
        fields = {"outcome": "article" if code is None else "dead_letter", "error_code": code}
        rendered = self[code] = orjson.dumps(fields)[1:-1] + b","
        return rendered


_OUTCOME = _Outcomes()
_clock = _IsoTime()


def _stamp() -> bytes:
    """Now, as ``_IsoTime`` writes it."""
    return _clock.now().encode()


def flush_records() -> None:
    """Write the buffered per-record lines (JSON mode; a no-op otherwise)."""
    current = _current()
    if current is not None and current[2] is not None:
        current[2].flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (OSError, ValueError):
        return False


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    """Route structlog (and the standard library's loggers, e.g. aiokafka's) to stderr.

    ``auto`` picks the console renderer when stderr is a terminal, JSON otherwise.
    """
    global _configured
    flush_records()
    use_console = fmt == "console" or (fmt == "auto" and _isatty(sys.stderr))
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    wrapper = structlog.make_filtering_bound_logger(logging.getLevelName(level))
    stamp = _IsoTime()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamp,
    ]
    if use_console:
        factory: Any = structlog.PrintLoggerFactory(cast(TextIO, _SafeStream(sys.stderr)))
        structlog.configure(
            processors=[*shared, renderer],
            wrapper_class=wrapper,
            logger_factory=factory,
            cache_logger_on_first_use=True,
        )
        _configured = (factory, structlog.get_logger(RECORDS), None, logging.getLevelName(level))
        stdlib_stream: Any = _SafeStream(sys.stderr)
    else:
        # structlog's own lines skip the str round trip: orjson renders bytes, written to the binary
        # stream. The standard library's lines (aiokafka) keep the str renderer logging.Formatter needs.
        sink = _Sink(_SafeStream(sys.stderr.buffer))
        own_renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)

        def factory(*_args: Any) -> _LineLogger:
            return _LineLogger(sink)

        structlog.configure(
            processors=[*shared, structlog.processors.format_exc_info, own_renderer],
            wrapper_class=wrapper,
            logger_factory=factory,
            cache_logger_on_first_use=True,
        )
        records = structlog.wrap_logger(
            _BufferedLineLogger(sink),
            processors=[structlog.processors.add_log_level, stamp, own_renderer],
            wrapper_class=wrapper,
        ).bind()
        _configured = (factory, records, sink, logging.getLevelName(level))
        stdlib_stream = _TextToSink(sink)
    handler = logging.StreamHandler(stdlib_stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=["repeated"]),
                _library_event,
            ],
        )
    )
    handler.addFilter(hide_credentials)
    handler.addFilter(_Repeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level == "INFO" else level)
