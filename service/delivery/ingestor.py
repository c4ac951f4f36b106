"""The service's lifecycle: start, run the pipeline, stop; and how a run ends (its exit status).

``Ingestor`` wires the pieces beside the pipeline: the HTTP endpoint (started before the broker is
reached, so that ``/healthz`` answers while it is unreachable; its routes only read state), the
start-up checks (``startup``), the delivery mode (``modes``), the watch over the connection
(``access``), the safety switch (``safety_gate``) and burst mode (``burst``). Every error that ends
a run is a ``service.errors.MarkerIngestError``; ``run`` logs it and returns its exit status, here
and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service import __version__
from service.delivery.access import AccessWatch
from service.delivery.burst import DrainCheck
from service.delivery.grace import Grace
from service.delivery.modes import Delivery, make_delivery
from service.delivery.pipeline import Pipeline, RebalanceListener
from service.delivery.retry import Retries
from service.delivery.safety_gate import SafetyGate, safety_switch
from service.delivery.startup import start_clients, stop_quietly
from service.errors import (
    BrokerUnreachable,
    EndpointUnavailable,
    ExitStatus,
    GraceExpired,
    MarkerIngestError,
    Misconfigured,
    TopicsMissing,
)
from service.kafka.clients import Kafka
from service.kafka.offsets import CommittedOffsets
from service.kafka.topics import partition_names
from service.ops.http import HttpEndpoint
from service.ops.logs import log_write_errors, on_library_line
from service.ops.metrics import Metrics
from service.ops.readiness import ServiceState, readiness
from service.ops.routes import LoopWatch, operator_routes
from service.ops.tracing import Tracer
from service.settings import Settings

FETCH_WATCH_SECONDS = 0.5
"""How often the broker's silence to the consumer's fetches is sampled for ``/readyz``."""

log = structlog.get_logger("marker_ingest")


class Ingestor:
    """The service: one consumer, one producer (or one per input partition), one pipeline."""

    def __init__(self, settings: Settings, tracer: Tracer | None = None) -> None:
        self.settings = settings
        self.kafka = Kafka.of(settings)
        self.grace = Grace(settings.shutdown_grace_seconds)
        self.metrics = Metrics(__version__)
        self.tracer = tracer
        if tracer is not None:
            tracer.count_dropped(self.metrics.count_spans_dropped)
        self.retries = Retries(
            self.grace, self.metrics, (settings.retry_initial_seconds, settings.retry_max_seconds)
        )
        self.safety = SafetyGate(safety_switch(settings), self.metrics)
        self.access = AccessWatch(
            self.kafka,
            self.grace,
            self.metrics,
            self.retries.new("connect"),
            lambda: self.readiness()[1].get("reason"),
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.delivery: Delivery | None = None
        self.pipeline: Pipeline | None = None
        self.http: HttpEndpoint | None = None
        self._loop_watch = LoopWatch()
        self.offsets = CommittedOffsets(self.kafka.client_kwargs(), settings.group_id)
        self._drain_check = DrainCheck(self.kafka, self.offsets)
        self._fetch_silent_seconds = 0.0
        self.metrics.watch(
            in_flight=lambda: 0 if self.delivery is None else self.delivery.in_flight,
            paused=lambda: 1.0 if self.paused else 0.0,
            assigned=lambda: len(self._assignment()),
            ready=lambda: 1.0 if self.readiness()[0] else 0.0,
            log_write_errors=lambda: float(log_write_errors()),
            stop_remaining=self.grace.remaining,
            grace_seconds=settings.shutdown_grace_seconds,
        )

    @property
    def messages_done(self) -> int:
        """Input messages whose events are committed."""
        return 0 if self.pipeline is None else self.pipeline.messages_done

    @property
    def records_done(self) -> int:
        """Records of those messages."""
        return 0 if self.pipeline is None else self.pipeline.records_done

    def request_stop(self) -> None:
        """Stop fetching; deliver and commit what is in hand; then return. Safe in a signal handler:
        the stop is requested before anything is logged."""
        if self.grace.request():
            with contextlib.suppress(Exception):
                log.info("stop.requested", grace_seconds=self.settings.shutdown_grace_seconds)

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.grace.requested

    @property
    def paused(self) -> bool:
        """True while the safety switch keeps consumption paused."""
        return self.safety.paused

    def request_resume(self) -> None:
        """Resume consumption paused by the safety switch (SIGUSR1); ignored when it is not tripped."""
        self.safety.request_resume()

    def _assignment(self) -> set[TopicPartition]:
        if self.consumer is None or (self.pipeline is not None and self.pipeline.finished):
            return set()
        assigned: set[TopicPartition] = self.consumer.assignment()
        return assigned

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        """Run until stopped; returns the process exit status: 0 after a clean stop, else the
        status of the ``MarkerIngestError`` that ended the run (logged here)."""
        s = self.settings
        log.info("service.starting", version=__version__, settings=s.redacted())
        on_library_line(self.access.library_line)
        for warning in s.warnings():
            log.warning("settings.weakened", detail=warning)
        status = ExitStatus.OK
        try:
            await self._serve()
        except MarkerIngestError as exc:
            _log_end(exc)
            status = exc.exit_status
        finally:
            on_library_line(None)
            if self.http is not None:
                await self.http.stop()
                await self._loop_watch.stop()
        if self.pipeline is not None:
            log.info("service.stopped", messages=self.messages_done, records=self.records_done)
        return status

    async def _serve(self) -> None:
        """The HTTP endpoint, then the clients, then the pipeline until it returns."""
        s = self.settings
        if s.http_port:
            routes = operator_routes(
                self.metrics, self.readiness, lambda: partition_names(self._assignment()), self._loop_watch
            )
            self.http = HttpEndpoint(s.http_host, s.http_port, routes)
            try:
                await self.http.start()
            except OSError as exc:
                raise EndpointUnavailable(f"cannot listen on {s.http_host}:{s.http_port}: {exc!r}") from None
            self._loop_watch.start()
            log.info("http.listening", host=s.http_host, port=self.http.port)
        # A burst run is a batch job: it gives up on a broker that does not answer (a service waits).
        give_up = s.kafka_request_timeout_ms / 1000 if s.burst else None
        clients = await start_clients(
            self.kafka, self.grace, self.retries.new("connect"), give_up_after=give_up
        )
        if clients is None:
            log.info("service.stopped", messages=0, records=0, detail="stopped before the broker answered")
            return
        self.consumer, self.producer = clients
        self.delivery = make_delivery(
            self.kafka,
            self.consumer,
            self.producer,
            offsets=self.offsets,
            metrics=self.metrics,
            retries=self.retries,
        )
        self.pipeline = Pipeline(
            self.kafka,
            self.consumer,
            self.delivery,
            grace=self.grace,
            metrics=self.metrics,
            safety=self.safety,
            fetch_retry=self.retries.new("fetch"),
            drain_check=self._drain_check,
            tracer=self.tracer,
        )
        self.consumer.subscribe([s.input_topic], listener=RebalanceListener(self.pipeline))
        log.info("service.started", input_topic=s.input_topic, group_id=s.group_id, delivery=s.delivery)
        watch = asyncio.gather(self.access.run(), self._watch_fetches(self.pipeline))
        try:
            await self.pipeline.run()
        except asyncio.CancelledError:
            # serve() cancels the run wherever it waits once the grace period is over.
            if not self.grace.expired:
                raise
            raise GraceExpired from None
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            self.pipeline.finished = True
            await self.delivery.stop(self.grace.stop_budget())
            probe = self._drain_check.probe
            await stop_quietly(self.producer, self.consumer, probe, limit_seconds=self.grace.stop_budget())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.offsets.close(), min(2.0, self.grace.stop_budget()))

    async def _watch_fetches(self, pipeline: Pipeline) -> None:
        """Keep ``/readyz``'s view of the broker's fetch answers fresh (``/readyz`` is answered on
        the HTTP endpoint's thread, which must not read the consumer)."""
        while not self.grace.requested:
            self._fetch_silent_seconds = pipeline.fetch_silence()
            await self.grace.sleep(FETCH_WATCH_SECONDS)

    # ----------------------------------------------------------------- readiness

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to take traffic, and why not (``ops.readiness`` over the current state)."""
        return readiness(self._state())

    def _state(self) -> ServiceState:
        access, delivery, pipeline = self.access.failure, self.delivery, self.pipeline
        return ServiceState(
            stopping=self.stopping or (pipeline is not None and pipeline.finished),
            access_refused=None
            if access is None
            else {"cause": access.kind.value, "setting": access.setting, "detail": access.line},
            connected=self.consumer is not None,
            fetch_error=None if pipeline is None else pipeline.fetch_error,
            fetch_silent_seconds=self._fetch_silent_seconds,
            send_error=None if delivery is None else delivery.send_error,
            coordinator_error=None if delivery is None else delivery.coordinator_error,
            safety_pause=self.safety.pause_state(),
            assigned_partitions=0 if self.consumer is None else len(self.consumer.assignment()),
        )


def _log_end(exc: MarkerIngestError) -> None:
    """The error line(s) of a run that ended with ``exc``."""
    if isinstance(exc, Misconfigured):
        log.error("kafka.misconfigured", **exc.fields, exit_status=exc.exit_status)
    elif isinstance(exc, TopicsMissing):
        for setting, (topic, why) in exc.problems.items():
            log.error(
                "topic.missing" if why == "UnknownTopicOrPartitionError" else "topic.invalid",
                topic=topic,
                setting=setting,
                error=why,
                detail="create it (or set INGEST_CREATE_TOPICS=true), or correct the setting",
            )
    elif isinstance(exc, GraceExpired):
        log.error("stop.grace_expired", detail=str(exc))
    elif isinstance(exc, EndpointUnavailable):
        log.error("http.unavailable", detail=str(exc))
    elif isinstance(exc, BrokerUnreachable):
        log.error("broker.gave_up", detail=str(exc), exit_status=exc.exit_status)
    else:
        log.error("service.failed", detail=str(exc), exit_status=exc.exit_status)
