"""Prometheus metrics of one service instance, on a registry of its own.

Each ``Metrics`` owns a ``CollectorRegistry`` (not the process-wide one), so several instances can
live in one process, as they do in the tests. The hot path stays cheap: the loop counts into local
tallies and hands them over once per batch; labelled children are looked up once and cached; gauges
that mirror state the shell already keeps (bytes in flight, assigned partitions, paused) are read
only when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from schemas.errors import ErrorCode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format that ``generate_latest`` writes."""

TRANSACTION_OUTCOMES = ("committed", "aborted", "fenced")
RETRY_CAUSES = ("send", "commit", "fetch", "connect")

_BATCH_MESSAGES_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)


class Metrics:
    """Every metric of one ``Ingestor``; names start with ``marker_ingest_``."""

    def __init__(self, version: str) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        Info("marker_ingest_build", "The running version.", registry=registry).info({"version": version})

        self.input_messages = Counter(
            "marker_ingest_input_messages",
            "Input Kafka messages processed (their events acknowledged).",
            registry=registry,
        )
        self.input_bytes = Counter(
            "marker_ingest_input_bytes",
            "Payload bytes of the input messages processed.",
            registry=registry,
        )
        self.input_records = Counter(
            "marker_ingest_input_records",
            "Marker-text records processed (article events plus dead letters).",
            registry=registry,
        )
        self.articles = Counter(
            "marker_ingest_articles",
            "Article events written and acknowledged.",
            registry=registry,
        )
        dead_letters = Counter(
            "marker_ingest_dead_letters",
            "Dead-letter events written and acknowledged, by error code.",
            ["code"],
            registry=registry,
        )
        self._dead_letters = {code: dead_letters.labels(code.value) for code in ErrorCode}
        self.batch_messages = Histogram(
            "marker_ingest_batch_messages",
            "Input messages per fetched batch.",
            buckets=_BATCH_MESSAGES_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "marker_ingest_batch_duration_seconds",
            "From the start of a batch's processing to its commit (overlaps the next batch's processing).",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "marker_ingest_end_to_end_latency_seconds",
            "Per input message: acknowledgement of its events minus its Kafka timestamp.",
            buckets=_END_TO_END_BUCKETS,
            registry=registry,
        )
        self.commits = Counter("marker_ingest_commits", "Offset commits that succeeded.", registry=registry)
        self.trace_spans_dropped = Counter(
            "marker_ingest_trace_spans_dropped",
            "Spans lost before the tracing backend had them (tracing on), by reason: queue_full "
            "(the export queue, OTEL_BSP_MAX_QUEUE_SIZE, was full) or export_failed.",
            ["reason"],
            registry=registry,
        )
        self.commit_failures = Counter(
            "marker_ingest_commit_failures",
            "Offset commits that failed (refused after a rebalance, or an error that is retried).",
            registry=registry,
        )
        retries = Counter(
            "marker_ingest_retries",
            "Retries after infrastructure errors, by cause (send, commit, fetch, connect).",
            ["cause"],
            registry=registry,
        )
        self.retries = {cause: retries.labels(cause) for cause in RETRY_CAUSES}
        transactions = Counter(
            "marker_ingest_transactions",
            "Kafka transactions (INGEST_DELIVERY=exactly-once), by outcome: committed, aborted, fenced.",
            ["outcome"],
            registry=registry,
        )
        self.transactions = {outcome: transactions.labels(outcome) for outcome in TRANSACTION_OUTCOMES}
        self.transaction_seconds = Histogram(
            "marker_ingest_transaction_duration_seconds",
            "From a transaction's first event to its commit (exactly-once delivery).",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self._lag = Gauge(
            "marker_ingest_consumer_lag_messages",
            "High watermark minus position, per assigned input partition (updated per batch).",
            ["topic", "partition"],
            registry=registry,
        )
        self._lag_children: dict[tuple[str, int], Gauge] = {}
        self.safety_trips = Counter(
            "marker_ingest_safety_trips",
            "Times the safety switch paused consumption.",
            registry=registry,
        )
        self.safety_ratio = Gauge(
            "marker_ingest_safety_window_dead_letter_ratio",
            "Share of dead letters in the safety switch's window (updated per batch).",
            registry=registry,
        )
        self._in_flight = Gauge(
            "marker_ingest_in_flight_bytes",
            "Input and output bytes awaiting acknowledgement.",
            registry=registry,
        )
        self._paused = Gauge(
            "marker_ingest_paused",
            "1 while the safety switch keeps consumption paused, else 0.",
            registry=registry,
        )
        self._assigned = Gauge(
            "marker_ingest_assigned_partitions",
            "Input partitions assigned to this instance.",
            registry=registry,
        )
        self._ready = Gauge(
            "marker_ingest_ready",
            "1 while /readyz would answer 200, else 0 (an outage shows here even while idle).",
            registry=registry,
        )
        self._log_write_errors = Gauge(
            "marker_ingest_log_write_errors",
            "Log lines dropped because stderr could not be written (a broken pipe), since start-up.",
            registry=registry,
        )
        self._stop_grace_used = Gauge(
            "marker_ingest_stop_grace_used_ratio",
            "Share of the grace period a stop in progress has used: 0 while running, 1 once it expired.",
            registry=registry,
        )
        kafka_client_lines = Counter(
            "marker_ingest_kafka_client_warnings",
            "Warnings and errors the Kafka client (aiokafka) logged, by logger, repeats held back included.",
            ["logger"],
            registry=registry,
        )
        self.kafka_client_lines = kafka_client_lines

    def watch(
        self,
        *,
        in_flight: Callable[[], float],
        paused: Callable[[], float],
        assigned: Callable[[], float],
        ready: Callable[[], float] | None = None,
        log_write_errors: Callable[[], float] | None = None,
        stop_remaining: Callable[[], float | None] | None = None,
        grace_seconds: float = 0.0,
    ) -> None:
        """Gauges read from the shell's own state when scraped, never updated on the hot path.
        ``stop_remaining`` gives the seconds left of the ``grace_seconds`` grace period once a stop
        was requested (else None)."""
        self._in_flight.set_function(in_flight)
        self._paused.set_function(paused)
        self._assigned.set_function(assigned)
        if ready is not None:
            self._ready.set_function(ready)
        if log_write_errors is not None:
            self._log_write_errors.set_function(log_write_errors)
        if stop_remaining is not None and grace_seconds > 0:
            remaining = stop_remaining
            self._stop_grace_used.set_function(
                lambda: 0.0 if (left := remaining()) is None else 1.0 - left / grace_seconds
            )

    def count_spans_dropped(self, reason: str, spans: int) -> None:
        """``spans`` were lost before the tracing backend had them (called from the export thread)."""
        self.trace_spans_dropped.labels(reason).inc(spans)

    def count_batch(
        self,
        *,
        messages: int,
        payload_bytes: int,
        records: int,
        dead_letters: Mapping[ErrorCode, int],
    ) -> None:
        """Count one acknowledged batch from the loop's tallies."""
        self.input_messages.inc(messages)
        self.input_bytes.inc(payload_bytes)
        self.input_records.inc(records)
        dead = 0
        for code, n in dead_letters.items():
            self._dead_letters[code].inc(n)
            dead += n
        self.articles.inc(records - dead)
        self.batch_messages.observe(messages)

    def observe_end_to_end(self, timestamps_ms: Iterable[int | None], now: float | None = None) -> None:
        """End-to-end latency of messages whose events were just acknowledged (now minus timestamp)."""
        now_ms = (time.time() if now is None else now) * 1000
        observe = self.end_to_end_seconds.observe
        for ts in timestamps_ms:
            if ts is not None and ts > 0:
                observe(max(0.0, now_ms - ts) / 1000)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """The consumer lag of one partition."""
        child = self._lag_children.get((topic, partition))
        if child is None:
            child = self._lag_children[(topic, partition)] = self._lag.labels(topic, str(partition))
        child.set(max(0, lag))

    def keep_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the lag series of every partition but these (the ones this instance now owns)."""
        keep = set(partitions)
        for topic, partition in [key for key in self._lag_children if key not in keep]:
            del self._lag_children[(topic, partition)]
            self._lag.remove(topic, str(partition))

    def render(self) -> bytes:
        """The exposition text (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
