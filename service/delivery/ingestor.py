"""The loop: fetch a batch, turn every message into outcomes with the core, hand them over.

``Ingestor`` wires one consumer and one producer to the pieces beside it: the outbox and the
delivery mode (``completion``: acknowledgements, ordered resend, commit), the start-up checks
(``startup``), the watch over the connection (``access``), the safety switch (``safety_gate``),
burst mode (``burst``) and the grace period (``grace``). Partitions being revoked are delivered
first; a stop ends fetching, delivers what is in hand and commits it.

Operations: an HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``), started before the broker
is reached, serving from a thread of its own; its routes only read the state this loop keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from service import __version__
from service.core.events import Outcome, Source, origin_of, process_payload
from service.delivery.access import AccessWatch
from service.delivery.burst import DrainCheck
from service.delivery.completion import Batch, Delivery
from service.delivery.failures import Stage, access_from, classify
from service.delivery.grace import Backoff, Grace, GraceExpired
from service.delivery.lag import update_lag
from service.delivery.modes import make_delivery
from service.delivery.outbox import Send
from service.delivery.plans import ServiceState, Trip, readiness
from service.delivery.routing import Routes, route
from service.delivery.safety_gate import SafetyGate, names, safety_switch
from service.delivery.startup import Misconfigured, TopicsMissing, start_clients, stop_quietly
from service.ops.http import HttpEndpoint
from service.ops.logs import log_write_errors, on_library_line, record_logger
from service.ops.metrics import Metrics
from service.ops.routes import LoopWatch, operator_routes
from service.settings import Settings

LAG_REFRESH_SECONDS = 1.0
YIELD_EVERY = 32
"""Messages processed between two yields to the event loop within a batch."""
EXIT_CONFIG = 2
"""Exit status of ``run`` when the configuration does not match the cluster (a topic is missing)."""

log = structlog.get_logger("marker_ingest")


class Ingestor:
    """The service: one consumer, one producer, one loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._routes = Routes(settings.output_topic, settings.dlq_topic, settings.max_event_bytes)
        self.grace = Grace(settings.shutdown_grace_seconds)
        self._idle = asyncio.Event()
        self._idle.set()
        self.messages_done = self.records_done = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.delivery: Delivery | None = None
        self.metrics = Metrics(__version__)
        self.safety = SafetyGate(safety_switch(settings), self.metrics)
        self.access = AccessWatch(
            settings, self.grace, self.metrics, lambda: self.readiness()[1].get("reason")
        )
        self._drain_check = DrainCheck(settings)
        self.http: HttpEndpoint | None = None
        self._loop_watch = LoopWatch()
        self._fetch_error: str | None = None
        self._finished = False
        self.metrics.watch(
            in_flight=lambda: 0 if self.delivery is None else self.delivery.in_flight,
            paused=lambda: 1.0 if self.paused else 0.0,
            assigned=lambda: len(self._assignment()),
            ready=lambda: 1.0 if self.readiness()[0] else 0.0,
            log_write_errors=lambda: float(log_write_errors()),
        )

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
        if self.consumer is None or self._finished:
            return set()
        assigned: set[TopicPartition] = self.consumer.assignment()
        return assigned

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        """Run until stopped; returns the process exit status (0 clean, 1 grace period expired, 2
        the cluster refuses the configuration). The HTTP endpoint (when ``INGEST_HTTP_PORT`` is set)
        comes up first, so that ``/healthz`` answers while the broker is unreachable; a port that
        cannot be bound exits with 1."""
        s = self.settings
        log.info("service.starting", version=__version__, settings=s.redacted())
        on_library_line(self.access.library_line)
        for warning in s.warnings():
            log.warning("settings.weakened", detail=warning)
        if s.http_port:
            routes = operator_routes(
                self.metrics, self.readiness, lambda: names(self._assignment()), self._loop_watch
            )
            self.http = HttpEndpoint(s.http_host, s.http_port, routes)
            try:
                await self.http.start()
            except OSError as exc:
                log.error("http.unavailable", host=s.http_host, port=s.http_port, error=repr(exc))
                return 1
            self._loop_watch.start()
            log.info("http.listening", host=s.http_host, port=self.http.port)
        try:
            return await self._run_kafka()
        finally:
            on_library_line(None)
            if self.http is not None:
                await self.http.stop()
                await self._loop_watch.stop()

    async def _run_kafka(self) -> int:
        s = self.settings
        try:
            clients = await start_clients(s, self.grace, self.metrics)
        except Misconfigured as exc:
            log.error("kafka.misconfigured", **exc.failure.fields(), exit_status=EXIT_CONFIG)
            return EXIT_CONFIG
        except TopicsMissing as exc:
            for setting, (topic, why) in exc.problems.items():
                log.error(
                    "topic.missing" if why == "UnknownTopicOrPartitionError" else "topic.invalid",
                    topic=topic,
                    setting=setting,
                    error=why,
                    detail="create it (or set INGEST_CREATE_TOPICS=true), or correct the setting",
                )
            return EXIT_CONFIG
        if clients is None:
            log.info("service.stopped", messages=0, records=0, detail="stopped before the broker answered")
            return 0
        self.consumer, self.producer = clients
        self.delivery = make_delivery(
            s, self.consumer, self.producer, grace=self.grace, metrics=self.metrics, completed=self._completed
        )
        self.consumer.subscribe([s.input_topic], listener=_RebalanceListener(self))
        log.info("service.started", input_topic=s.input_topic, group_id=s.group_id, delivery=s.delivery)
        watch = asyncio.create_task(self.access.run())
        try:
            await self._loop(self.consumer, self.delivery)
        except Misconfigured as exc:
            log.error("kafka.misconfigured", **exc.failure.fields(), exit_status=EXIT_CONFIG)
            return EXIT_CONFIG
        except GraceExpired:
            log.error("stop.grace_expired", detail="in-flight work was not acknowledged; not committed")
            return 1
        except asyncio.CancelledError:
            # serve() cancels the loop wherever it waits once the grace period is over.
            remaining = self.grace.remaining()
            if remaining is None or remaining > 0:
                raise
            log.error("stop.grace_expired", detail="in-flight work was not acknowledged; not committed")
            return 1
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            self._finished = True
            self.delivery.close()
            await self.delivery.stop(self.grace.stop_budget())
            probe = self._drain_check.probe
            await stop_quietly(self.producer, self.consumer, probe, limit_seconds=self.grace.stop_budget())
            log.info("service.stopped", messages=self.messages_done, records=self.records_done)
        return 0

    # ----------------------------------------------------------------- the loop

    async def _loop(self, consumer: AIOKafkaConsumer, delivery: Delivery) -> None:
        """Fetch, process, hand over; the previous batch is delivered while the next is processed."""
        s = self.settings
        idle_since, lag_due = time.monotonic(), 0.0
        fetch_backoff = Backoff(s.retry_initial_seconds, s.retry_max_seconds)
        while not self.stopping:
            if (refused := delivery.check()) is not None:
                raise Misconfigured(refused)
            self.safety.resume_if_due(consumer)
            max_records = s.batch_max_messages
            if s.max_messages is not None:
                max_records = min(max_records, s.max_messages - self.messages_done)
            try:
                batch = await consumer.getmany(timeout_ms=s.batch_timeout_ms, max_records=max_records)
            except KafkaError as exc:
                self._fetch_failed(exc)
                await delivery.settle()
                await self.grace.sleep(fetch_backoff.next_delay())
                continue
            self._fetch_error, fetch_backoff.attempt = None, 0
            if not batch:
                await delivery.settle()
                now = time.monotonic()
                if now >= lag_due:
                    lag_due = now + LAG_REFRESH_SECONDS
                    await update_lag(self.consumer, self.metrics, {})
                if self.paused:
                    idle_since = now  # paused is not drained: burst mode waits for the resume
                if s.burst and await self._drain_check.drained(consumer, time.monotonic() - idle_since):
                    log.info("burst.drained", messages=self.messages_done)
                    return
                continue
            idle_since = time.monotonic()
            self._idle.clear()
            try:
                await delivery.handed_over(await self._process(batch, delivery))
            finally:
                self._idle.set()
            lag_due = time.monotonic() + LAG_REFRESH_SECONDS
            if self.stopping or self.safety.tripped or s.max_messages is not None:
                # Nothing is left waiting before a stop, a pause, or a count that must be exact.
                await delivery.settle()
            self.safety.pause_if_tripped(consumer)
            if s.max_messages is not None and self.messages_done >= s.max_messages:
                log.info("max_messages.reached", messages=self.messages_done)
                return
        await delivery.settle()

    def _fetch_failed(self, exc: KafkaError) -> None:
        failure = classify(exc, Stage.FETCH, access_from(self.settings), topic=self.settings.input_topic)
        line = repr(exc) if failure is None else failure.line
        self.metrics.retries["fetch"].inc()
        if failure is None:
            log.warning("fetch.failed", error=repr(exc))
        elif line != self._fetch_error:
            log.error("fetch.refused", error=repr(exc), **failure.fields())
        self._fetch_error = line

    async def _process(self, batch: dict[TopicPartition, Sequence[Any]], delivery: Delivery) -> Batch:
        """Process every message and hand every outcome to the outbox."""
        s, limits, routes = self.settings, self.settings.limits, self._routes
        now = dt.datetime.now(dt.UTC)
        switch = self.safety.switch
        current = delivery.begin()
        offsets, dead_letters, sends = current.offsets, current.dead_letters, current.sends
        in_flight = records = payload_bytes = 0
        for tp, messages in batch.items():
            record_log = record_logger().bind(topic=tp.topic, partition=tp.partition)
            if messages:
                current.first[tp], current.counts[tp] = messages[0].offset, len(messages)
            for i, msg in enumerate(messages):
                if i and i % YIELD_EVERY == 0:
                    # Let the producer's sender ship what is ready and acks come back while
                    # this batch is still being processed, instead of all of it at the end.
                    await asyncio.sleep(0)
                headers = msg.headers
                origin = origin_of(headers, msg.value, s.redrive_key) if headers else None
                source = Source(tp.topic, tp.partition, msg.offset, msg.timestamp, msg.key, origin)
                outcomes = process_payload(msg.value, source, limits, now=now, version=__version__)
                size = len(msg.value or b"")
                in_flight += size
                payload_bytes += size
                dead = 0
                sends = current.sends
                for outcome in outcomes:
                    event = route(outcome, headers, routes)
                    send = Send(tp, msg.offset, event.topic, event, event.headers)
                    await current.outbox.add(send)
                    sends.append(send)
                    in_flight += len(event.value)
                    if outcome.error is not None:
                        dead_letters[outcome.error] = dead_letters.get(outcome.error, 0) + 1
                        dead += 1
                    _log_record(record_log, msg.offset, outcome)
                if switch is not None:
                    switch.observe(len(outcomes), dead)
                self.records_done += len(outcomes)
                records += len(outcomes)
                current.timestamps.append(msg.timestamp)
                offsets[tp] = msg.offset + 1
                current.in_flight = in_flight
                if delivery.in_flight >= s.max_bytes_in_flight:
                    await delivery.relieve(current)
                    in_flight = 0
        current.messages = sum(len(m) for m in batch.values())
        current.payload_bytes, current.records = payload_bytes, records
        return current

    async def _completed(self, done: Batch) -> None:
        self.messages_done += done.messages
        await update_lag(self.consumer, self.metrics, done.offsets)

    async def drain(self, revoked: set[TopicPartition]) -> None:
        """Before partitions are revoked: wait until the batch in hand is processed, then deliver
        everything handed over. The loop is held in ``getmany`` meanwhile (aiokafka returns no
        records while the group rebalances)."""
        if revoked:
            log.info("partitions.revoking", partitions=names(revoked))
        await self._idle.wait()
        if self.delivery is not None:
            await self.delivery.settle()
            await self.delivery.revoked(revoked)

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: drop the lag of lost partitions; keep new ones paused if tripped."""
        self.metrics.keep_partitions((tp.topic, tp.partition) for tp in assigned)
        if self.delivery is not None and not self._finished:
            await self.delivery.assigned(assigned)
        if self.consumer is not None:
            self.safety.keep_paused(self.consumer, assigned)

    # ----------------------------------------------------------------- readiness

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to take traffic, and why not (``plans.readiness`` over the current state)."""
        return readiness(self._state())

    def _state(self) -> ServiceState:
        consumer, access, switch, trip = self.consumer, self.access.failure, self.safety.switch, None
        coordinator = getattr(consumer, "_coordinator", None)
        if switch is not None and switch.tripped is not None and switch.paused_since is not None:
            now = time.monotonic()
            trip = Trip(
                ratio=switch.tripped.ratio,
                window=switch.tripped.records,
                dead_letters=switch.tripped.dead_letters,
                threshold=switch.tripped.threshold,
                paused_seconds=now - switch.paused_since,
                resumes_in_seconds=switch.resumes_in(now),
            )
        return ServiceState(
            stopping=self.stopping or self._finished,
            access_refused=None
            if access is None
            else {"cause": access.kind.value, "setting": access.setting, "detail": access.line},
            connected=consumer is not None,
            fetch_error=self._fetch_error,
            send_error=None if self.delivery is None else self.delivery.send_error,
            coordinator_known=coordinator is None or getattr(coordinator, "coordinator_id", 0) is not None,
            trip=trip,
            assigned_partitions=0 if consumer is None else len(consumer.assignment()),
        )


def _log_record(record_log: Any, offset: int, outcome: Outcome) -> None:
    """The canonical log line: one per record (``record_log`` is bound to its topic and partition)."""
    record_log.info(
        "record",
        offset=offset,
        record_index=outcome.record_index,
        outcome="article" if outcome.error is None else "dead_letter",
        error_code=None if outcome.error is None else outcome.error.value,
        event_id=outcome.event_id,
    )


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._ingestor.drain(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions.assigned", partitions=names(assigned))
        await self._ingestor.assigned(assigned)
