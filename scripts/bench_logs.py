"""Benchmark the per-record log line: the project's logger beside structlog's own fast path. Not a test.

Logs ``--records`` canonical record lines, the line the service writes per record
(``record_log.info("record", offset=..., record_index=..., outcome=..., error_code=..., event_id=...)``
with ``record_log`` bound to the topic and partition, one in ten a dead letter), in batches of
``--batch`` (the service's ``getmany(max_records=500)``), to ``--output`` (default: a temporary file,
removed at the end; ``/dev/null`` works too), through:

* ``project``: ``configure_logging("json")`` then ``record_logger()``, bound once per batch, and
  ``flush_records()`` after each batch, as ``service/delivery/pipeline.py`` does: the lines of a batch are
  buffered and written in one go;
* ``structlog``: structlog's own fast path as its documentation gives it: ``BytesLoggerFactory``,
  ``JSONRenderer(serializer=orjson.dumps)``, ``make_filtering_bound_logger``,
  ``cache_logger_on_first_use=True``, and the processors of ``configure_logging`` with structlog's
  own ``TimeStamper(fmt="iso", utc=True)`` (the same timestamp format); ``BytesLogger`` writes and
  flushes every line;
* ``structlog-short``: ``BytesLogger`` with the project's shorter chain of the record logger
  (``add_log_level``, the project's once-a-second timestamp, the renderer): the cost of the writer
  alone.

Each variant runs ``--repeat`` times (default 3), alternating, with the garbage collector on. Printed:
the median records/s by the wall clock and by the process's CPU time (user and system: steadier on a
shared machine), each as a ratio to the first variant, every run's wall-clock figure, then the first
line each variant wrote (the same keys, in the same order). Usage::

    python scripts/bench_logs.py [--records N] [--batch B] [--repeat R] [--output PATH]
                                 [--variants project,structlog,structlog-short]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

import service.ops.logs
from service.ops.logs import configure_logging, flush_records, record_logger

TOPIC = "bench.raw"
PARTITION = 3

Variant = Callable[[Path], contextlib.AbstractContextManager[tuple[Callable[[], Any], Callable[[], None]]]]
"""Logging set up to write to a file: (a logger for the record lines, the flush after a batch)."""


@contextlib.contextmanager
def _project(path: Path) -> Iterator[tuple[Callable[[], Any], Callable[[], None]]]:
    saved = sys.stderr
    with path.open("w", encoding="utf-8") as stream:
        sys.stderr = stream  # configure_logging writes to stderr's binary buffer
        try:
            configure_logging("json", "INFO")
            yield record_logger, flush_records
        finally:
            sys.stderr = saved
            _reset()


@contextlib.contextmanager
def _structlog_fast(path: Path) -> Iterator[tuple[Callable[[], Any], Callable[[], None]]]:
    with path.open("wb") as stream:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.BytesLoggerFactory(stream),
            cache_logger_on_first_use=True,
        )
        log = structlog.get_logger("marker_ingest.records")
        try:
            yield (lambda: log), (lambda: None)
        finally:
            _reset()


@contextlib.contextmanager
def _structlog_short(path: Path) -> Iterator[tuple[Callable[[], Any], Callable[[], None]]]:
    with path.open("wb") as stream:
        log = structlog.wrap_logger(
            structlog.BytesLogger(stream),
            processors=[
                structlog.processors.add_log_level,
                service.ops.logs._IsoTime(),
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        ).bind()
        yield (lambda: log), (lambda: None)


VARIANTS: dict[str, Variant] = {
    "project": _project,
    "structlog": _structlog_fast,
    "structlog-short": _structlog_short,
}


def _reset() -> None:
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def run_once(variant: Variant, path: Path, records: int, batch: int) -> tuple[float, float]:
    """Log ``records`` record lines through the variant; records/s of wall-clock and of CPU time."""
    event_ids = [f"{TOPIC}:{PARTITION}:{offset}:0" for offset in range(records)]
    with variant(path) as (logger, flush):
        begun, cpu = time.perf_counter(), time.process_time()
        for start in range(0, records, batch):
            record_log = logger().bind(topic=TOPIC, partition=PARTITION)
            for offset in range(start, min(records, start + batch)):
                dead = offset % 10 == 9
                record_log.info(
                    "record",
                    offset=offset,
                    record_index=0,
                    outcome="dead_letter" if dead else "article",
                    error_code="invalid_field" if dead else None,
                    event_id=event_ids[offset],
                )
            flush()
        seconds, cpu = time.perf_counter() - begun, time.process_time() - cpu
    return records / seconds, records / cpu


def _first_line(path: Path) -> str:
    with path.open("rb") as stream:
        return stream.readline().decode().rstrip("\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000, metavar="N", help="record lines per run")
    parser.add_argument("--batch", type=int, default=500, metavar="B", help="records per batch (flush)")
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="runs of each variant")
    parser.add_argument(
        "--output", type=Path, metavar="PATH", help="where the lines go (default: a temp file)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        sys.stderr.write(f"bench_logs: unknown variant(s): {', '.join(unknown)}\n")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        output: Path = args.output or Path(tmp) / "records.log"
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        samples: dict[str, str] = {}
        gc.collect()
        for _ in range(args.repeat):
            for name in names:
                results[name].append(run_once(VARIANTS[name], output, args.records, args.batch))
                if output != Path(os.devnull):
                    samples[name] = _first_line(output)
    print(
        f"{args.records:,} record lines per run, batches of {args.batch}, {args.repeat} runs each "
        f"(alternating), to {args.output or 'a temporary file'}; Python {sys.version.split()[0]}, "
        f"structlog {structlog.__version__}, orjson {orjson.__version__}"
    )
    print("records/s, median of the runs, by the wall clock and by the process's CPU time (user + system)")
    wall_base = statistics.median(wall for wall, _ in results[names[0]])
    cpu_base = statistics.median(cpu for _, cpu in results[names[0]])
    for name in names:
        wall = statistics.median(w for w, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        runs = ", ".join(f"{w:,.0f}" for w, _ in results[name])
        print(
            f"  {name:16} wall {wall:>9,.0f} ({wall / wall_base:.2f}x)  cpu {cpu:>9,.0f} "
            f"({cpu / cpu_base:.2f}x, {1e6 / cpu:.2f} µs per line)  wall runs: {runs}"
        )
    for name, line in samples.items():
        print(f"  {name:16} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
