"""The imperative shell: consume → process → produce → commit, at least once.

The loop fetches a batch, turns every message into outcomes with the pure core, and hands each
outcome to the producer (record batches per output partition). While the next batch is processed,
the previous one is completed: the broker has acknowledged all of its events (``acks=all``), and
only then are its offsets committed. Infrastructure errors are retried with capped exponential
backoff and jitter, and nothing is committed past them. Partitions being revoked are drained first;
SIGTERM/SIGINT stop fetching, finish the batches in flight and commit.

Operations: an HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``) on the same loop, started
before the broker is reached; and the safety switch, which pauses the partitions after a flood of
dead letters (once the batch in flight is committed) until SIGUSR1 or the cool-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from schemas.errors import ErrorCode
from schemas.events import ERROR_CODE_HEADER as ERROR_CODE_HEADER
from service import __version__
from service.core.events import Outcome, Source, origin_of, process_payload
from service.delivery.clients import consumer_config, max_request_size, producer_config
from service.delivery.connection import diagnose
from service.delivery.failures import Access, Failure, Stage, access_from, classify, fatal_at_startup
from service.delivery.plans import ServiceState, Trip, readiness, resend_plan
from service.delivery.routing import Destination, Headers, Routes, route
from service.delivery.topics import create_with_broker_defaults, topic_problems
from service.ops.http import HttpEndpoint, LoopWatch, Response, cached
from service.ops.logs import (
    configure_logging,
    flush_records,
    log_write_errors,
    on_library_line,
    record_logger,
)
from service.ops.metrics import CONTENT_TYPE, Metrics
from service.ops.safety import SafetyPolicy, SafetySwitch
from service.settings import Settings

HEALTH_STALE_LIMIT_SECONDS = 10.0
"""``/healthz`` fails once the event loop has been this late to tick."""
METRICS_MAX_AGE_SECONDS = 1.0
"""``/metrics`` is rendered at most once per this interval; a scrape flood gets the same bytes."""
LAG_REFRESH_SECONDS = 1.0
YIELD_EVERY = 32
"""Messages processed between two yields to the event loop within a batch."""
ACCESS_CHECK_SECONDS = 1.0
"""While running, how often the service looks for signs that the broker refuses its connections."""
TROUBLED = frozenset({"fetch_failing", "send_failing", "no_group_coordinator"})
"""Readiness reasons after which the connection is probed (as are the Kafka client's warnings)."""

log = structlog.get_logger("marker_ingest")


@dataclass(slots=True)
class _Send:
    """One outcome on its way to the broker: its input coordinates and what goes out (``event``)."""

    tp: TopicPartition
    offset: int
    topic: str
    event: Destination
    headers: Headers
    future: asyncio.Future[Any] | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Batch:
    """A fetched batch, processed, its outcomes handed to the producer: it is completed (every event
    acknowledged, then its offsets committed) while the next batch is processed."""

    outbox: _Outbox
    started: float
    sends: list[_Send] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    timestamps: list[int | None] = field(default_factory=list)
    dead_letters: dict[ErrorCode, int] = field(default_factory=dict)
    in_flight: int = 0
    messages: int = 0
    payload_bytes: int = 0
    records: int = 0
    acked_at: float | None = None
    """When the broker had acknowledged every event handed over at the end of processing."""


class _Outbox:
    """Outcomes into record batches, one open batch per output partition (aiokafka's batch API).

    The output partition is the one ``producer.send(key=...)`` picks: the default partitioner over
    the topic's partitions. Each batch fills up to the producer's ``max_batch_size`` (a batch's first
    record always fits); a full batch is handed to the producer (``send_batch``) and a new one
    started, so the records of one output partition leave in the order they were added. Every
    outcome of a batch shares the batch's future. An event larger than the producer's
    ``max_request_size``, or a topic whose partitions cannot be looked up, fails its outcomes at
    once (``send.error``), as ``producer.send`` would raise.
    """

    def __init__(self, producer: AIOKafkaProducer, max_request_size: int) -> None:
        self._producer = producer
        self._max_request_size = max_request_size
        self._partitions: dict[str, list[int] | KafkaError] = {}
        self._open: dict[tuple[str, int], tuple[Any, list[_Send]]] = {}

    async def _partitions_of(self, topic: str) -> list[int] | KafkaError:
        known = self._partitions.get(topic)
        if known is None:
            try:
                known = sorted(await self._producer.partitions_for(topic))
            except KafkaError as exc:
                known = exc
            self._partitions[topic] = known
        return known

    async def add(self, send: _Send) -> None:
        """Append ``send``'s event to its partition's open batch; ship the batch first if it is full."""
        send.future = send.error = None
        topic, event = send.topic, send.event
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = await self._partitions_of(topic)
        if isinstance(partitions, KafkaError):
            send.error = partitions
            return
        key, value, headers = event.key, event.value, send.headers
        size = _estimate_size(key, value, headers)
        if size > self._max_request_size:
            send.error = MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the maximum request "
                "size you have configured with the max_request_size configuration"
            )
            return
        if len(partitions) == 1:
            partition = partitions[0]  # what the default partitioner answers for a single partition
        else:
            available = self._producer.client.cluster.available_partitions_for_topic(topic)
            partition = _PARTITIONER(key, partitions, list(available))
        slot = self._open.get((topic, partition))
        if slot is None:
            slot = self._open[topic, partition] = (self._producer.create_batch(), [])
        if slot[0].append(key=key, value=value, timestamp=None, headers=headers) is None:
            await self._ship(topic, partition)
            slot = self._open[topic, partition] = (self._producer.create_batch(), [])
            slot[0].append(key=key, value=value, timestamp=None, headers=headers)  # the first always fits
        slot[1].append(send)

    async def flush(self) -> None:
        """Hand every open batch to the producer."""
        for topic, partition in list(self._open):
            await self._ship(topic, partition)

    async def _ship(self, topic: str, partition: int) -> None:
        builder, sends = self._open.pop((topic, partition))
        try:
            future = await self._producer.send_batch(builder, topic, partition=partition)
        except KafkaError as exc:
            for send in sends:
                send.error = exc
            return
        for send in sends:
            send.future = future


_PARTITIONER = DefaultPartitioner()
_estimate_size = DefaultRecordBatchBuilder.estimate_size_in_bytes


STOP_MARGIN_SECONDS = 2.0
"""After the grace period, the Kafka clients get this long to stop (leave the group, close)."""
HARD_STOP_MARGIN_SECONDS = 4.0
"""A process still running this long after the grace period is ended by a timer (``stop.hard_exit``)."""

EXIT_CONFIG = 2
"""Exit status of ``run`` when the configuration does not match the cluster (a topic is missing)."""


class TopicsMissing(Exception):
    """Raised at start-up when a topic the service needs does not exist (or its name is invalid)."""

    def __init__(self, problems: dict[str, tuple[str, str]]) -> None:
        super().__init__(", ".join(f"{setting}={topic}: {why}" for setting, (topic, why) in problems.items()))
        self.problems = problems
        """Setting name → (topic, the broker's error)."""


class Misconfigured(Exception):
    """Raised at start-up when the cluster refuses the configuration or the credentials."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.line)
        self.failure = failure


class GraceExpired(Exception):
    """Raised inside the loop when shutdown took longer than the grace period."""


def probe_due(client_complained: bool, reason: str | None, *, refused: bool) -> bool:
    """Whether the running service should probe its connection: the Kafka client has logged a
    warning since the last look, ``/readyz`` fails for a broker-side ``reason``, or a refusal is
    already known (to find out when it ends)."""
    return client_complained or refused or reason in TROUBLED


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next_delay(self) -> float:
        """The next sleep, in seconds; grows until the cap."""
        ceiling = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


class Ingestor:
    """The service: one consumer, one producer, one loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limits = settings.limits
        self._routes = Routes(settings.output_topic, settings.dlq_topic, settings.max_event_bytes)
        self._stop_requested = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop_deadline: float | None = None
        self.messages_done = 0
        self.records_done = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._probe: AIOKafkaConsumer | None = None
        self.metrics = Metrics(__version__)
        self.safety = _safety_switch(settings)
        self.http: HttpEndpoint | None = None
        self._loop_watch = LoopWatch()
        self._resume_requested = False
        self._in_flight = 0
        self._fetch_error: str | None = None
        self._send_error: str | None = None
        self._access_failure: Failure | None = None
        """Set while a probe finds that the broker refuses the connection (credentials rotated)."""
        self._library_lines = 0
        self._finished = False
        self._pending: _Batch | None = None
        self._completing = asyncio.Lock()
        self._max_request_size = max_request_size(settings)
        self.metrics.watch(
            in_flight=lambda: self._in_flight,
            paused=lambda: 1.0 if self.paused else 0.0,
            assigned=lambda: len(self._assignment()),
            ready=lambda: 1.0 if self.readiness()[0] else 0.0,
            log_write_errors=lambda: float(log_write_errors()),
        )

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Stop fetching; finish, acknowledge and commit the batch in flight; then return.

        The flag is set before anything is logged: a log stream that fails cannot keep the service
        from stopping (a signal handler calls this)."""
        if not self._stop_requested.is_set():
            self._stop_deadline = time.monotonic() + self.settings.shutdown_grace_seconds
            self._stop_requested.set()
            with contextlib.suppress(Exception):
                log.info("stop.requested", grace_seconds=self.settings.shutdown_grace_seconds)

    async def wait_stop_requested(self) -> None:
        """Return once a stop was requested."""
        await self._stop_requested.wait()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop_requested.is_set()

    @property
    def paused(self) -> bool:
        """True while the safety switch keeps consumption paused."""
        return self.safety is not None and self.safety.paused_since is not None

    def request_resume(self) -> None:
        """Resume consumption paused by the safety switch (SIGUSR1); ignored when it is not tripped."""
        if self.safety is None or self.safety.tripped is None:
            log.info("safety.resume_ignored", detail="the safety switch has not tripped")
            return
        self._resume_requested = True

    def _assignment(self) -> set[TopicPartition]:
        if self.consumer is None or self._finished:
            return set()
        assigned: set[TopicPartition] = self.consumer.assignment()
        return assigned

    @property
    def _access(self) -> Access:
        return access_from(self.settings)

    def _failure(self, exc: BaseException, stage: Stage, topic: str | None = None) -> Failure | None:
        return classify(exc, stage, self._access, topic=topic)

    def _make_clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        return AIOKafkaConsumer(**consumer_config(self.settings)), AIOKafkaProducer(
            **producer_config(self.settings)
        )

    async def _check_topics(self) -> None:
        """The input, output and dead-letter topics exist, or are created when ``INGEST_CREATE_TOPICS``
        allows it. Raises ``TopicsMissing`` naming them; ``KafkaError`` when the broker cannot answer."""
        s = self.settings
        names = {s.input_topic: "INGEST_INPUT_TOPIC", s.output_topic: "INGEST_OUTPUT_TOPIC"}
        names[s.dlq_topic] = "INGEST_DLQ_TOPIC"
        kwargs = s.kafka_client_kwargs()
        problems = await topic_problems(list(names), kwargs)
        for topic, why in problems.items():
            if why == "TopicAuthorizationFailedError":
                denied = self._failure(TopicAuthorizationFailedError(topic), Stage.CHECK_TOPICS, topic)
                assert denied is not None
                raise Misconfigured(denied)
        missing = [t for t, why in problems.items() if why == "UnknownTopicOrPartitionError"]
        if missing and s.create_topics:
            try:
                created = await create_with_broker_defaults(missing, kwargs)
            except KafkaError as exc:
                if (failure := self._failure(exc, Stage.CREATE_TOPICS, ", ".join(missing))) is not None:
                    raise Misconfigured(failure) from None
                raise
            log.warning("topics.created", topics=created, detail="INGEST_CREATE_TOPICS=true")
            problems = await topic_problems(list(names), kwargs)
        if problems:
            raise TopicsMissing({names[t]: (t, why) for t, why in problems.items() if t in names})

    async def _start_clients(self) -> bool:
        """Check the topics, then start both clients, waiting with backoff while the broker is
        unreachable."""
        backoff = Backoff(self.settings.retry_initial_seconds, self.settings.retry_max_seconds)
        seen: tuple[str, int] = ("", 0)
        while not self.stopping:
            stage = Stage.CONNECT
            consumer = producer = None
            try:
                done, diagnosed = await self._until_stopped(diagnose(self.settings))
                if not done:
                    return False
                failure, cause = diagnosed
                if failure is None and cause is None:
                    stage = Stage.CHECK_TOPICS
                    if not (await self._until_stopped(self._check_topics()))[0]:
                        return False
                    consumer, producer = self._make_clients()
                    stage = Stage.START_PRODUCER
                    started = (await self._until_stopped(producer.start()))[0]
                    stage = Stage.CONNECT
                    started = started and (await self._until_stopped(consumer.start()))[0]
                    if not started:
                        await _stop_quietly(producer, consumer, limit_seconds=self._stop_budget())
                        return False
            except KafkaError as exc:
                await _stop_quietly(producer, consumer)
                failure, cause = self._failure(exc, stage), repr(exc)
            if failure is not None:
                seen = (failure.line, seen[1] + 1 if seen[0] == failure.line else 1)
                if fatal_at_startup(failure, seen[1]):
                    raise Misconfigured(failure)
            if cause is not None:
                delay = backoff.next_delay()
                self.metrics.retries["connect"].inc()
                log.warning("broker.unreachable", error=cause, retry_in=round(delay, 2))
                await self._sleep(delay)
                continue
            assert consumer is not None
            assert producer is not None
            consumer.subscribe([self.settings.input_topic], listener=_RebalanceListener(self))
            self.consumer, self.producer = consumer, producer
            return True
        return False

    async def _until_stopped(self, work: Any) -> tuple[bool, Any]:
        """Await ``work``, unless a stop is requested first (then it is cancelled): ``(True, its
        result)`` when it ran to the end, else ``(False, None)``. Start-up waits on the broker (up
        to the request timeout); a stop must not."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False, None

    def _stop_budget(self) -> float:
        """How long the clients may take to stop: what is left of the grace period plus
        ``STOP_MARGIN_SECONDS`` once a stop was requested, else the grace period."""
        if self._stop_deadline is None:
            return self.settings.shutdown_grace_seconds
        return max(0.1, self._stop_deadline + STOP_MARGIN_SECONDS - time.monotonic())

    def grace_remaining(self) -> float:
        """Seconds left of the grace period (the whole of it before a stop is requested)."""
        remaining = self._remaining()
        return self.settings.shutdown_grace_seconds if remaining is None else remaining

    def _remaining(self) -> float | None:
        """Seconds left of the grace period once a stop was requested, else None."""
        return None if self._stop_deadline is None else self._stop_deadline - time.monotonic()

    async def run(self) -> int:
        """Run until stopped; returns the process exit status (0 clean, 1 grace period expired).

        The HTTP endpoint (when ``INGEST_HTTP_PORT`` is set) comes up first, so that ``/healthz``
        answers while the broker is still unreachable; a port that cannot be bound exits with 1. It
        serves from a thread of its own: its routes only read the state this loop keeps.
        """
        log.info("service.starting", version=__version__, settings=self.settings.redacted())
        on_library_line(self._on_library_line)
        for warning in self.settings.warnings():
            log.warning("settings.weakened", detail=warning)
        s = self.settings
        if s.http_port:
            self.http = HttpEndpoint(
                s.http_host,
                s.http_port,
                {
                    "/metrics": cached(self._metrics_route, METRICS_MAX_AGE_SECONDS),
                    "/healthz": self._healthz,
                    "/readyz": self._readyz,
                },
            )
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

    def _on_library_line(self, name: str) -> None:
        self._library_lines += 1
        self.metrics.kafka_client_lines.labels(name).inc()

    async def _watch_access(self) -> None:
        """While the loop runs, name a refused connection: once the Kafka client logs warnings or the
        service is not ready for a broker-side reason, probe the connection as start-up does.

        A refusal (the password rotated, a certificate expired; a connection closed at once: three
        probes in a row) makes ``/readyz`` answer ``authentication_failed`` and is logged once as
        ``kafka.access_refused``. The probe repeats with capped backoff, and the first one that
        succeeds clears it (``kafka.access_restored``). The clients keep reconnecting on their own
        meanwhile, and the loop commits nothing that was not acknowledged, so fixing the credentials
        resumes the service without a restart.
        """
        s = self.settings
        backoff = Backoff(s.retry_initial_seconds, s.retry_max_seconds)
        seen, closed, since = self._library_lines, 0, 0.0
        delay = ACCESS_CHECK_SECONDS
        while not self.stopping:
            await self._sleep(delay)
            lines, reason = self._library_lines, self.readiness()[1].get("reason")
            troubled = probe_due(lines != seen, reason, refused=self._access_failure is not None)
            seen = lines
            if not troubled or self.stopping:
                backoff.attempt, delay, closed = 0, ACCESS_CHECK_SECONDS, 0
                continue
            done, diagnosed = await self._until_stopped(diagnose(s))
            if not done:
                return
            failure, cause = diagnosed
            delay = max(ACCESS_CHECK_SECONDS, backoff.next_delay())
            if failure is not None:
                closed += 1
                if not fatal_at_startup(failure, closed):
                    continue
                self.metrics.retries["connect"].inc()
                previous, self._access_failure = self._access_failure, failure
                if previous is None:
                    since = time.monotonic()
                if previous is None or previous.line != failure.line:
                    log.error(
                        "kafka.access_refused",
                        **failure.fields(),
                        error=cause,
                        retry="probed with backoff until the broker accepts the connection again; "
                        "nothing is committed meanwhile",
                    )
                continue
            closed = 0
            if cause is None and self._access_failure is not None:
                self._access_failure = None
                log.warning("kafka.access_restored", refused_seconds=round(time.monotonic() - since, 1))

    async def _serve(self) -> None:
        """The loop, with ``_watch_access`` beside it."""
        watch = asyncio.create_task(self._watch_access())
        try:
            await self._loop()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _run_kafka(self) -> int:
        try:
            if not await self._start_clients():
                log.info(
                    "service.stopped", messages=0, records=0, detail="stopped before the broker answered"
                )
                return 0
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
        log.info("service.started", input_topic=self.settings.input_topic, group_id=self.settings.group_id)
        try:
            await self._serve()
        except GraceExpired:
            log.error("stop.grace_expired", detail="in-flight work was not acknowledged; not committed")
            return 1
        except asyncio.CancelledError:
            # serve() cancels the loop wherever it waits once the grace period is over.
            remaining = self._remaining()
            if remaining is None or remaining > 0:
                raise
            log.error("stop.grace_expired", detail="in-flight work was not acknowledged; not committed")
            return 1
        finally:
            self._finished = True
            await _stop_quietly(self.producer, self.consumer, self._probe, budget=self._stop_budget)
            log.info("service.stopped", messages=self.messages_done, records=self.records_done)
        return 0

    # ----------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        """Fetch, process and hand a batch's events to the producer; then complete the batch before it
        (await its acknowledgements, commit): the next batch is processed while the previous one's
        acknowledgements and commit are under way. At most one batch waits to be completed."""
        s = self.settings
        assert self.consumer is not None
        idle_since = time.monotonic()
        lag_due = 0.0
        fetch_backoff = Backoff(s.retry_initial_seconds, s.retry_max_seconds)
        while not self.stopping:
            self._resume_if_due()
            max_records = s.batch_max_messages
            if s.max_messages is not None:
                max_records = min(max_records, s.max_messages - self.messages_done)
            try:
                batch = await self.consumer.getmany(timeout_ms=s.batch_timeout_ms, max_records=max_records)
            except KafkaError as exc:
                failure = self._failure(exc, Stage.FETCH, s.input_topic)
                line = repr(exc) if failure is None else failure.line
                self.metrics.retries["fetch"].inc()
                if failure is None:
                    log.warning("fetch.failed", error=repr(exc))
                elif line != self._fetch_error:
                    log.error("fetch.refused", error=repr(exc), **failure.fields())
                self._fetch_error = line
                await self._complete_pending()
                await self._sleep(fetch_backoff.next_delay())
                continue
            self._fetch_error = None
            fetch_backoff.attempt = 0
            if not batch:
                await self._complete_pending()
                now = time.monotonic()
                if now >= lag_due:
                    lag_due = now + LAG_REFRESH_SECONDS
                    await self._update_lag({})
                if self.paused:
                    idle_since = now  # paused is not drained: burst mode waits for the resume
                if s.burst and await self._burst_done(time.monotonic() - idle_since):
                    log.info("burst.drained", messages=self.messages_done)
                    return
                continue
            idle_since = time.monotonic()
            self._idle.clear()
            try:
                current = await self._process_batch(batch)
                async with self._completing:
                    previous, self._pending = self._pending, current
                    if previous is not None:
                        await self._complete(previous, current)
            finally:
                self._idle.set()
            lag_due = time.monotonic() + LAG_REFRESH_SECONDS
            tripped = self.safety is not None and self.safety.tripped is not None
            if self.stopping or tripped or s.max_messages is not None:
                # Nothing is left waiting before a stop, a pause, or a count that must be exact.
                await self._complete_pending()
            self._pause_if_tripped()
            if s.max_messages is not None and self.messages_done >= s.max_messages:
                log.info("max_messages.reached", messages=self.messages_done)
                return
        await self._complete_pending()

    async def _burst_done(self, idle_seconds: float) -> bool:
        """True when the group has drained every partition of the input topic.

        This instance's own partitions count by position; the others (held by a peer, or by a dead
        peer whose session has not expired yet) by the group's committed offsets. The end of a
        partition is its high watermark from fetch responses. A topic whose partitions stay unknown
        counts as drained after ``INGEST_BURST_IDLE_SECONDS``.
        """
        assert self.consumer is not None
        partitions = self.consumer.partitions_for_topic(self.settings.input_topic)
        if not partitions:
            return idle_seconds > self.settings.burst_idle_seconds
        assignment = self.consumer.assignment()
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None or await self.consumer.position(tp) < high:
                return False
        others = {TopicPartition(self.settings.input_topic, p) for p in partitions} - assignment
        return not others or await self._committed_to_the_end(others)

    async def _committed_to_the_end(self, tps: set[TopicPartition]) -> bool:
        """True when the group's committed offset of each partition has reached its end."""
        assert self.consumer is not None
        committed = {tp: await self.consumer.committed(tp) or 0 for tp in tps}
        if self._probe is None:
            self._probe = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, **self.settings.kafka_client_kwargs()
            )
            await self._probe.start()
        self._probe.assign(list(tps))
        for tp, offset in committed.items():
            self._probe.seek(tp, offset)
        await self._probe.getmany(timeout_ms=self.settings.batch_timeout_ms, max_records=1)
        for tp, offset in committed.items():
            high = self._probe.highwater(tp)
            if high is None or offset < high:
                return False
        return True

    async def _process_batch(self, batch: dict[TopicPartition, Sequence[Any]]) -> _Batch:
        """Process every message and hand every outcome to the producer; the batch is completed later."""
        s = self.settings
        now = dt.datetime.now(dt.UTC)
        safety = self.safety
        current = _Batch(outbox=self._outbox(), started=time.perf_counter())
        in_flight = 0
        offsets = current.offsets
        # Tallies for the metrics, handed over once the batch is completed.
        records = payload_bytes = 0
        dead_letters = current.dead_letters
        for tp, messages in batch.items():
            record_log = record_logger().bind(topic=tp.topic, partition=tp.partition)
            for i, msg in enumerate(messages):
                if i and i % YIELD_EVERY == 0:
                    # Let the producer's sender ship what is ready and acks come back while
                    # this batch is still being processed, instead of all of it at the end.
                    await asyncio.sleep(0)
                headers = msg.headers
                origin = origin_of(headers) if headers else None
                source = Source(tp.topic, tp.partition, msg.offset, msg.timestamp, msg.key, origin)
                outcomes = process_payload(msg.value, source, self._limits, now=now, version=__version__)
                size = len(msg.value or b"")
                in_flight += size
                payload_bytes += size
                dead = 0
                sends = current.sends
                for outcome in outcomes:
                    send = self._prepare(tp, msg.offset, headers, outcome)
                    await current.outbox.add(send)
                    sends.append(send)
                    in_flight += len(send.event.value)
                    if outcome.error is not None:
                        dead_letters[outcome.error] = dead_letters.get(outcome.error, 0) + 1
                        dead += 1
                    _log_record(record_log, msg.offset, outcome)
                if safety is not None:
                    safety.observe(len(outcomes), dead)
                self.records_done += len(outcomes)
                records += len(outcomes)
                current.timestamps.append(msg.timestamp)
                offsets[tp] = msg.offset + 1
                current.in_flight = in_flight
                self._in_flight = in_flight + self._pending_bytes()
                if self._in_flight >= s.max_bytes_in_flight:
                    await self._await_current_acks(current)
                    in_flight = 0
        await current.outbox.flush()
        flush_records()
        # When the last acknowledgement arrives, for the end-to-end latency (the batch is completed later).
        futures = {id(send.future): send.future for send in current.sends if send.future is not None}
        if futures:
            acks = asyncio.gather(*futures.values(), return_exceptions=True)
            acks.add_done_callback(lambda _: setattr(current, "acked_at", time.time()))
        current.messages = sum(len(m) for m in batch.values())
        current.payload_bytes, current.records = payload_bytes, records
        return current

    async def _await_current_acks(self, current: _Batch) -> None:
        """Over the bytes-in-flight ceiling: complete the batch before, then await the acknowledgements
        of what this batch has handed over so far (it is committed when it is completed)."""
        await self._complete_pending(current)
        await current.outbox.flush()
        flush_records()
        await self._await_acks(current.sends)
        self.metrics.observe_end_to_end(current.timestamps)
        current.sends, current.timestamps, current.in_flight = [], [], 0
        self._in_flight = 0

    def _pending_bytes(self) -> int:
        pending = self._pending
        return 0 if pending is None else pending.in_flight

    async def _complete_pending(self, current: _Batch | None = None) -> None:
        """Complete the batch waiting to be completed, if any (see ``_complete``)."""
        async with self._completing:
            pending, self._pending = self._pending, None
            if pending is not None and not self._finished:
                await self._complete(pending, current)

    async def _complete(self, done: _Batch, current: _Batch | None) -> None:
        """Await every acknowledgement of ``done``, commit its offsets, count it.

        ``current``, if given, is the batch processed after it: when an event of ``done`` failed, the
        events ``current`` has handed over so far are awaited and resent with it (everything from the
        first failed outcome of an input partition onward is sent again, in input order).
        """
        acked_at = None
        if await self._all_acked(done.sends):
            acked_at = done.acked_at
        else:
            sends = done.sends
            if current is not None:
                await current.outbox.flush()
                sends = sends + current.sends
            await self._await_acks(sends)
        self.metrics.observe_end_to_end(done.timestamps, acked_at)
        await self._commit(done.offsets)
        self._in_flight = 0 if current is None else current.in_flight
        self.messages_done += done.messages
        self.metrics.count_batch(
            messages=done.messages,
            payload_bytes=done.payload_bytes,
            records=done.records,
            dead_letters=done.dead_letters,
        )
        self.metrics.batch_seconds.observe(time.perf_counter() - done.started)
        await self._update_lag(done.offsets)

    async def _all_acked(self, sends: list[_Send]) -> bool:
        """Await every send; True when the broker acknowledged all of them.

        aiokafka retries some refusals inside the producer for as long as they last (a partition with
        fewer in-sync replicas than ``min.insync.replicas``, or without a leader): an event waiting
        longer than the request timeout makes the service not ready (``send_failing``) until it is
        acknowledged, and is logged once as ``send.stalled``.
        """
        ok = True
        stall_after = self.settings.kafka_request_timeout_ms / 1000
        for send in sends:
            future = send.future
            if future is not None:
                try:
                    if not future.done():
                        await self._await_ack(send, future, stall_after)
                    else:
                        future.result()
                except KafkaError as exc:
                    send.error = exc
            if send.error is not None:
                ok = False
        return ok

    async def _await_ack(self, send: _Send, future: asyncio.Future[Any], stall_after: float) -> None:
        waited = 0.0
        while True:
            try:
                await self._within_grace(asyncio.wait_for(asyncio.shield(future), stall_after))
            except TimeoutError:
                waited += stall_after
                if self._send_error is None:
                    log.warning(
                        "send.stalled",
                        destination=send.topic,
                        topic=send.tp.topic,
                        partition=send.tp.partition,
                        offset=send.offset,
                        waited_seconds=round(waited, 1),
                        detail="the broker has not acknowledged the event; its partition may have too "
                        "few in-sync replicas or no leader; nothing is committed past it",
                    )
                self._send_error = f"events to {send.topic} not acknowledged for {waited:.0f}s"
                self.metrics.retries["send"].inc()
                continue
            if self._send_error is not None and self._send_error.startswith("events to "):
                self._send_error = None
                log.info("send.resumed", destination=send.topic, waited_seconds=round(waited, 1))
            return

    def _prepare(self, tp: TopicPartition, offset: int, headers: Headers, outcome: Outcome) -> _Send:
        event = route(outcome, headers, self._routes)
        return _Send(tp, offset, event.topic, event, event.headers)

    def _outbox(self) -> _Outbox:
        assert self.producer is not None
        return _Outbox(self.producer, self._max_request_size)

    async def _await_acks(self, sends: list[_Send]) -> None:
        """Wait until the broker acknowledged every send; resend failures until it has.

        After a failure, everything from the first failed outcome of that input partition onward is
        sent again, in input order, so the last copy of each event keeps the input order.
        """
        backoff = Backoff(self.settings.retry_initial_seconds, self.settings.retry_max_seconds)
        pending = sends
        while pending:
            await self._all_acked(pending)
            retry, first = resend_plan(pending)
            if first is None:
                self._send_error = None
                return
            assert first.error is not None
            failure = self._failure(first.error, Stage.SEND, first.topic)
            self._send_error = (
                f"sending to {first.topic} failed: {first.error!r}" if failure is None else failure.line
            )
            delay = backoff.next_delay()
            self.metrics.retries["send"].inc()
            refused = isinstance(first.error, KafkaError) and not first.error.retriable
            (log.error if refused else log.warning)(
                "send.refused" if refused else "send.retrying",
                error=repr(first.error),
                destination=first.topic,
                topic=first.tp.topic,
                partition=first.tp.partition,
                offset=first.offset,
                outcomes=len(retry),
                retry_in=round(delay, 2),
                attempt=backoff.attempt,
                **(
                    {
                        "detail": "the broker refuses this event; its input partition is blocked until it is "
                        "accepted (check the topic's max.message.bytes and ACLs)"
                    }
                    if refused and failure is None
                    else {}
                ),
                **({} if failure is None else failure.fields()),
            )
            await self._sleep(delay, during_shutdown_limit=True)
            outbox = self._outbox()
            for send in retry:
                await outbox.add(send)
            await outbox.flush()
            pending = retry

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit; a commit refused because of a rebalance is logged, not fatal (nothing is lost)."""
        assert self.consumer is not None
        if not offsets:
            return
        backoff = Backoff(self.settings.retry_initial_seconds, self.settings.retry_max_seconds)
        while True:
            try:
                await self._within_grace(self.consumer.commit(offsets))
            except (CommitFailedError, IllegalStateError) as exc:
                self.metrics.commit_failures.inc()
                log.warning(
                    "commit.refused",
                    error=repr(exc),
                    detail="partitions were reassigned; their new owner reprocesses from the last commit",
                )
                return
            except KafkaError as exc:
                delay = backoff.next_delay()
                self.metrics.commit_failures.inc()
                self.metrics.retries["commit"].inc()
                log.warning("commit.retrying", error=repr(exc), retry_in=round(delay, 2))
                await self._sleep(delay, during_shutdown_limit=True)
                continue
            self.metrics.commits.inc()
            log.debug("commit.done", offsets={f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()})
            return

    async def drain(self, revoked: set[TopicPartition]) -> None:
        """Called before partitions are revoked: wait until the batch in hand is processed, then
        complete the batch waiting to be completed (acknowledged and committed). The loop is held in
        ``getmany`` meanwhile: aiokafka returns no records while the group rebalances."""
        if revoked:
            log.info("partitions.revoking", partitions=_names(revoked))
        await self._idle.wait()
        await self._complete_pending()

    def assigned(self, assigned: set[TopicPartition]) -> None:
        """Called after a rebalance: drop the lag of lost partitions; keep new ones paused if tripped."""
        self.metrics.keep_partitions((tp.topic, tp.partition) for tp in assigned)
        if self.paused and assigned and self.consumer is not None:
            self.consumer.pause(*assigned)
            log.warning("safety.still_paused", partitions=_names(assigned))

    # ----------------------------------------------------------------- operations

    def _pause_if_tripped(self) -> None:
        """After the batch is committed: pause every assigned partition if the switch has tripped."""
        safety = self.safety
        if safety is None:
            return
        self.metrics.safety_ratio.set(safety.window.ratio)
        trip = safety.tripped
        if trip is None or safety.paused_since is not None:
            return
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        self.consumer.pause(*assignment)
        safety.engage(time.monotonic())
        self.metrics.safety_trips.inc()
        policy = safety.policy
        log.error(
            "safety.tripped",
            ratio=round(trip.ratio, 4),
            window=trip.records,
            dead_letters=trip.dead_letters,
            threshold=trip.threshold,
            cooldown_seconds=policy.cooldown_seconds or None,
            partitions=_names(assignment),
            detail="consumption paused after committing the batch; SIGUSR1 resumes"
            + (f", as does the cool-down of {policy.cooldown_seconds:g}s" if policy.cooldown_seconds else ""),
        )

    def _resume_if_due(self) -> None:
        """Resume consumption paused by the safety switch on SIGUSR1 or at the end of the cool-down."""
        safety = self.safety
        if safety is None:
            return
        if safety.paused_since is None:
            self._resume_requested = False
            return
        now = time.monotonic()
        if self._resume_requested:
            reason = "signal"
        elif safety.resume_due(now):
            reason = "cooldown"
        else:
            return
        self._resume_requested = False
        paused_seconds = now - safety.paused_since
        safety.resume()
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        self.consumer.resume(*assignment)
        self.metrics.safety_ratio.set(0.0)
        log.warning(
            "safety.resumed",
            reason=reason,
            paused_seconds=round(paused_seconds, 1),
            partitions=_names(assignment),
        )

    async def _update_lag(self, offsets: dict[TopicPartition, int]) -> None:
        """Lag per assigned partition: the high watermark from fetch responses minus the position."""
        consumer = self.consumer
        assert consumer is not None
        known = [(tp, high) for tp in consumer.assignment() if (high := consumer.highwater(tp)) is not None]
        lags: list[tuple[TopicPartition, int]] = []
        for tp, high in known:
            position = offsets.get(tp)
            if position is None:
                try:
                    position = await consumer.position(tp)  # known once fetched: returns at once
                except IllegalStateError:
                    continue
            lags.append((tp, high - position))
        assignment = consumer.assignment()  # a rebalance may have run meanwhile
        for tp, lag in lags:
            if tp in assignment:
                self.metrics.set_lag(tp.topic, tp.partition, lag)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to take traffic, and why not (``plans.readiness`` over the current state)."""
        return readiness(self._state())

    def _state(self) -> ServiceState:
        consumer = self.consumer
        access = self._access_failure
        coordinator = getattr(consumer, "_coordinator", None)
        safety, trip = self.safety, None
        if safety is not None and safety.tripped is not None and safety.paused_since is not None:
            now = time.monotonic()
            trip = Trip(
                ratio=safety.tripped.ratio,
                window=safety.tripped.records,
                dead_letters=safety.tripped.dead_letters,
                threshold=safety.tripped.threshold,
                paused_seconds=now - safety.paused_since,
                resumes_in_seconds=safety.resumes_in(now),
            )
        return ServiceState(
            stopping=self.stopping or self._finished,
            access_refused=None
            if access is None
            else {"cause": access.kind.value, "setting": access.setting, "detail": access.line},
            connected=consumer is not None,
            fetch_error=self._fetch_error,
            send_error=self._send_error,
            coordinator_known=coordinator is None or getattr(coordinator, "coordinator_id", 0) is not None,
            trip=trip,
            assigned_partitions=0 if consumer is None else len(consumer.assignment()),
        )

    def _readyz(self) -> Response:
        ready, why = self.readiness()
        if ready:
            return Response.json(200, {"ready": True, "partitions": _names(self._assignment())})
        return Response.json(503, {"ready": False, **why})

    def _healthz(self) -> Response:
        stale = self._loop_watch.stale_seconds()
        if stale > HEALTH_STALE_LIMIT_SECONDS:
            return Response.json(503, {"status": "stalled", "loop_late_seconds": round(stale, 1)})
        return Response.json(200, {"status": "ok", "loop_late_seconds": round(stale, 3)})

    def _metrics_route(self) -> Response:
        return Response(200, self.metrics.render(), CONTENT_TYPE)

    async def _sleep(self, seconds: float, *, during_shutdown_limit: bool = False) -> None:
        """Sleep. Work that must finish before the service stops (``during_shutdown_limit``) sleeps
        at most until the end of the grace period, then raises ``GraceExpired``; other sleeps (a
        backoff before reconnecting) end as soon as a stop is requested."""
        if during_shutdown_limit:
            remaining = self._remaining()
            if remaining is not None:
                if remaining <= 0:
                    raise GraceExpired
                seconds = min(seconds, remaining)
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    async def _within_grace(self, work: Any) -> Any:
        """Await ``work``; once a stop was requested, only until the end of the grace period
        (``GraceExpired``: a frozen broker answers nothing, and the grace period is a promise)."""
        remaining = self._remaining()
        if remaining is None:
            return await work
        if remaining <= 0:
            work.close()
            raise GraceExpired
        try:
            return await asyncio.wait_for(work, remaining)
        except TimeoutError:
            raise GraceExpired from None


def _safety_switch(settings: Settings) -> SafetySwitch | None:
    if settings.safety_dlq_ratio is None:
        return None
    return SafetySwitch(
        SafetyPolicy(
            threshold=settings.safety_dlq_ratio,
            window_records=settings.safety_window_records,
            min_records=settings.safety_min_records,
            cooldown_seconds=settings.safety_cooldown_seconds,
        )
    )


def _names(partitions: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)


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
        log.info("partitions.assigned", partitions=_names(assigned))
        self._ingestor.assigned(assigned)


async def _stop_quietly(
    *clients: AIOKafkaConsumer | AIOKafkaProducer | None,
    limit_seconds: float = 10.0,
    budget: Any = None,
) -> None:
    """Stop each client, all of them within ``limit_seconds`` (or what ``budget()`` says is left)."""
    deadline = time.monotonic() + (limit_seconds if budget is None else budget())
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.stop(), max(0.1, deadline - time.monotonic()))
        except (KafkaError, TimeoutError) as exc:
            log.warning("client.stop_failed", client=type(client).__name__, error=repr(exc))
        except asyncio.CancelledError as exc:
            # aiokafka's fetcher re-raises the cancellation of its own fetch task when it is stopped
            # during a retry backoff (after a lost connection); only a cancellation of ours goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            log.warning("client.stop_failed", client=type(client).__name__, error=repr(exc))


async def serve(settings: Settings) -> int:
    """Run the service in the current event loop: SIGTERM or SIGINT stop it cleanly, SIGUSR1 resumes
    consumption paused by the safety switch."""
    ingestor = Ingestor(settings)
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
    await ingestor.wait_stop_requested()
    timer = threading.Timer(ingestor.settings.shutdown_grace_seconds + HARD_STOP_MARGIN_SECONDS, _hard_exit)
    timer.daemon = True
    timer.start()


def _hard_exit() -> None:
    with contextlib.suppress(Exception):
        os.write(2, b'{"event": "stop.hard_exit", "level": "error", "detail": "the grace period ran out"}\n')
    os._exit(1)


async def _run_with_grace(task: asyncio.Task[int], ingestor: Ingestor) -> int:
    """Await the service; once a stop is requested it gets the grace period, then it is cancelled."""
    stop_wait = asyncio.create_task(ingestor.wait_stop_requested())
    done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stop_wait.cancel()
        return task.result()
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(asyncio.shield(task), max(0.0, ingestor.grace_remaining()))
    # The grace period is over: cancel the loop wherever it waits (a frozen broker answers nothing);
    # it logs stop.grace_expired, and the clients get STOP_MARGIN_SECONDS to stop.
    task.cancel()
    try:
        return await asyncio.wait_for(task, STOP_MARGIN_SECONDS + 1)
    except (TimeoutError, asyncio.CancelledError):
        log.error("stop.forced", detail="the service did not stop within the grace period")
        return 1


def run_service(settings: Settings) -> int:
    """Entry point of ``marker-ingest run``."""
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(serve(settings))
    finally:
        flush_records()
