"""Burst mode's question: has the group drained every partition of the input topic?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from service.delivery.modes.base import Offsets
from service.kafka.clients import Kafka


def end_of(consumer: Any, tp: TopicPartition) -> int | None:
    """Where ``tp`` ends for a read_committed consumer: its last stable offset (records of open
    transactions past it are not readable yet), as the last fetch response reported it."""
    end: int | None = consumer.last_stable_offset(tp)
    return end


class DrainCheck:
    """Answers ``drained`` for the group; owns a group-less probe consumer once one is needed."""

    def __init__(self, kafka: Kafka, offsets: Offsets, make_probe: Callable[[], Any] | None = None) -> None:
        self._settings, self._offsets = kafka.settings, offsets
        self._make_probe = make_probe or (lambda: AIOKafkaConsumer(**kafka.probe_config()))
        self.probe: Any = None

    async def drained(self, consumer: AIOKafkaConsumer, idle_seconds: float) -> bool:
        """True when the group has drained every partition of the input topic.

        This instance's own partitions count by position; the others (held by a live peer, or by a
        dead one whose session has not expired yet) by where a probe reading from the group's
        committed offset stands. The end of a partition is its last stable offset from fetch
        responses (the input is read read_committed: transaction markers and aborted records are
        skipped, records of an open transaction wait for it). A topic whose partitions stay unknown
        counts as drained after ``INGEST_BURST_IDLE_SECONDS``.
        """
        partitions = consumer.partitions_for_topic(self._settings.input_topic)
        if not partitions:
            return idle_seconds > self._settings.burst_idle_seconds
        assignment = consumer.assignment()
        for tp in assignment:
            end = end_of(consumer, tp)
            if end is None or await consumer.position(tp) < end:
                return False
        others = {TopicPartition(self._settings.input_topic, p) for p in partitions} - assignment
        return not others or await self._committed_to_the_end(consumer, others)

    async def _committed_to_the_end(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> bool:
        """True when nothing readable lies past the group's committed offset of each partition.

        The probe keeps its assignment from one call to the next (assigning again would forget the
        partition ends its fetches learned), seeks to the committed offsets and fetches once: a
        record means work is left; otherwise its position, past any transaction markers, must have
        reached the end.
        """
        try:
            committed = {tp: offset or 0 for tp, offset in (await self._offsets.fetch(tps)).items()}
        except KafkaError:
            return False  # the group coordinator cannot say now: ask again at the next idle fetch
        if self.probe is None:
            self.probe = self._make_probe()
            await self.probe.start()
        probe = self.probe
        if set(probe.assignment()) != tps:
            probe.assign(list(tps))
        for tp, offset in committed.items():
            probe.seek(tp, offset)
        fetched = await probe.getmany(timeout_ms=self._settings.batch_timeout_ms, max_records=1)
        if any(fetched.values()):
            return False
        for tp in tps:
            end = end_of(probe, tp)
            if end is None or await probe.position(tp) < end:
                return False
        return True
