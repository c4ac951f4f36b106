"""The safety switch at work on the consumer: pause the assigned partitions once it trips (after
the batch in flight is committed), resume them on SIGUSR1 or at the end of the cool-down."""

from __future__ import annotations

import time

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.kafka.topics import partition_names
from service.ops.metrics import Metrics
from service.ops.readiness import SafetyPause
from service.ops.safety import SafetyPolicy, SafetySwitch
from service.settings import Settings

log = structlog.get_logger("marker_ingest")


def safety_switch(settings: Settings) -> SafetySwitch | None:
    """The switch the settings ask for (None when ``INGEST_SAFETY_DLQ_RATIO`` is unset)."""
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


class SafetyGate:
    """Pauses and resumes the consumer as the safety switch says."""

    def __init__(self, switch: SafetySwitch | None, metrics: Metrics) -> None:
        self.switch, self._metrics = switch, metrics
        self._resume_requested = False

    @property
    def paused(self) -> bool:
        """True while the safety switch keeps consumption paused."""
        return self.switch is not None and self.switch.paused_since is not None

    @property
    def tripped(self) -> bool:
        """True once the switch has tripped (paused or about to be)."""
        return self.switch is not None and self.switch.tripped is not None

    def pause_state(self) -> SafetyPause | None:
        """The switch's pause as readiness sees it (None unless it keeps consumption paused)."""
        switch = self.switch
        if switch is None or switch.tripped is None or switch.paused_since is None:
            return None
        now = time.monotonic()
        return SafetyPause(
            ratio=switch.tripped.ratio,
            window=switch.tripped.records,
            dead_letters=switch.tripped.dead_letters,
            threshold=switch.tripped.threshold,
            paused_seconds=now - switch.paused_since,
            resumes_in_seconds=switch.resumes_in(now),
        )

    def request_resume(self) -> None:
        """Resume consumption paused by the safety switch (SIGUSR1); ignored when it is not tripped."""
        if self.switch is None or self.switch.tripped is None:
            log.info("safety.resume_ignored", detail="the safety switch has not tripped")
            return
        self._resume_requested = True

    def pause_if_tripped(self, consumer: AIOKafkaConsumer) -> None:
        """After the batch is committed: pause every assigned partition if the switch has tripped."""
        safety = self.switch
        if safety is None:
            return
        self._metrics.safety_ratio.set(safety.window.ratio)
        trip = safety.tripped
        if trip is None or safety.paused_since is not None:
            return
        assignment = consumer.assignment()
        consumer.pause(*assignment)
        safety.engage(time.monotonic())
        self._metrics.safety_trips.inc()
        policy = safety.policy
        log.error(
            "safety.tripped",
            ratio=round(trip.ratio, 4),
            window=trip.records,
            dead_letters=trip.dead_letters,
            threshold=trip.threshold,
            cooldown_seconds=policy.cooldown_seconds or None,
            partitions=partition_names(assignment),
            detail="consumption paused after committing the batch; SIGUSR1 resumes"
            + (f", as does the cool-down of {policy.cooldown_seconds:g}s" if policy.cooldown_seconds else ""),
        )

    def resume_if_due(self, consumer: AIOKafkaConsumer) -> None:
        """Resume consumption paused by the safety switch on SIGUSR1 or at the end of the cool-down."""
        safety = self.switch
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
        assignment = consumer.assignment()
        consumer.resume(*assignment)
        self._metrics.safety_ratio.set(0.0)
        log.warning(
            "safety.resumed",
            reason=reason,
            paused_seconds=round(paused_seconds, 1),
            partitions=partition_names(assignment),
        )

    def keep_paused(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """After a rebalance: newly assigned partitions stay paused while the switch is tripped."""
        if self.paused and assigned:
            consumer.pause(*assigned)
            log.warning("safety.still_paused", partitions=partition_names(assigned))
