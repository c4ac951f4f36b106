"""The bootstrap of ``marker-ingest run``: logging, the signals, the grace period's last resort.

SIGTERM and SIGINT request a stop (the grace period starts), SIGUSR1 resumes consumption paused by
the safety switch. Once the grace period is over the loop is cancelled wherever it waits; a timer
thread ends a process still running ``HARD_STOP_MARGIN_SECONDS`` later, even with a blocked loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading

import structlog

from service.delivery.grace import STOP_MARGIN_SECONDS
from service.delivery.ingestor import Ingestor
from service.errors import ExitStatus
from service.ops.logs import configure_logging, flush_records
from service.ops.tracing import EXPORTER_VARIABLE, Tracer, start_tracing
from service.settings import Settings

HARD_STOP_MARGIN_SECONDS = 4.0
"""A process still running this long after the grace period is ended by a timer (``stop.hard_exit``)."""

log = structlog.get_logger("marker_ingest")


TRACE_FLUSH_SECONDS = 3.0
"""How long a stopping service waits for its last spans to be exported."""


def run_service(settings: Settings) -> int:
    """Entry point of ``marker-ingest run``. Raises ``TracingUnavailable`` before anything starts
    when ``OTEL_TRACES_EXPORTER`` asks for tracing that cannot be set up."""
    configure_logging(settings.log_format, settings.log_level)
    tracer = start_tracing(os.environ, max_links=settings.batch_max_messages)
    if tracer is not None:
        log.info("tracing.on", exporters=os.environ.get(EXPORTER_VARIABLE, "").strip())
    try:
        return asyncio.run(serve(settings, tracer))
    finally:
        flush_records()
        if tracer is not None:
            tracer.shutdown(TRACE_FLUSH_SECONDS)


async def serve(settings: Settings, tracer: Tracer | None = None) -> int:
    """Run the service in the current event loop, with its signal handlers."""
    ingestor = Ingestor(settings, tracer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ingestor.request_stop)
    loop.add_signal_handler(signal.SIGUSR1, ingestor.request_resume)
    task = asyncio.create_task(ingestor.run())
    watchdog = asyncio.create_task(_watchdog(ingestor))
    try:
        return await _run_with_grace(task, ingestor)
    finally:
        watchdog.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


async def _watchdog(ingestor: Ingestor) -> None:
    """The last resort behind the grace period: once a stop is requested, a timer thread ends the
    process with status 1 after ``INGEST_SHUTDOWN_GRACE_SECONDS + HARD_STOP_MARGIN_SECONDS``, even if
    the event loop is blocked (the process normally exits well before)."""
    await ingestor.grace.wait()
    timer = threading.Timer(ingestor.settings.shutdown_grace_seconds + HARD_STOP_MARGIN_SECONDS, _hard_exit)
    timer.daemon = True
    timer.start()


def _hard_exit() -> None:
    with contextlib.suppress(Exception):
        os.write(2, b'{"event": "stop.hard_exit", "level": "error", "detail": "the grace period ran out"}\n')
    os._exit(ExitStatus.FAILED)


async def _run_with_grace(task: asyncio.Task[int], ingestor: Ingestor) -> int:
    """Await the service; once a stop is requested it gets the grace period, then it is cancelled."""
    stop_wait = asyncio.create_task(ingestor.grace.wait())
    done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stop_wait.cancel()
        return task.result()
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(asyncio.shield(task), max(0.0, ingestor.grace.left()))
    # The grace period is over: cancel the loop wherever it waits (a frozen broker answers nothing);
    # it logs stop.grace_expired, and the clients get STOP_MARGIN_SECONDS to stop. A run already
    # past its loop (its work done, its clients closing) is not cancelled: closing has that margin.
    if ingestor.pipeline is None or not ingestor.pipeline.finished:
        ingestor.grace.expired = True
        task.cancel()
    try:
        return await asyncio.wait_for(task, STOP_MARGIN_SECONDS + 1)
    except (TimeoutError, asyncio.CancelledError):
        log.error("stop.forced", detail="the service did not stop within the grace period")
        return ExitStatus.FAILED
