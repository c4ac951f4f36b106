"""Burst mode's question: has the group drained every partition of the input topic?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.settings import Settings


class DrainCheck:
    """Answers ``drained`` for the group; owns a group-less probe consumer once one is needed."""

    def __init__(self, settings: Settings, make_probe: Callable[[], Any] | None = None) -> None:
        self._settings = settings
        self._make_probe = make_probe or (
            lambda: AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, **settings.kafka_client_kwargs()
            )
        )
        self.probe: Any = None

    async def drained(self, consumer: AIOKafkaConsumer, idle_seconds: float) -> bool:
        """True when the group has drained every partition of the input topic.

        This instance's own partitions count by position; the others (held by a peer, or by a dead
        peer whose session has not expired yet) by the group's committed offsets. The end of a
        partition is its high watermark from fetch responses. A topic whose partitions stay unknown
        counts as drained after ``INGEST_BURST_IDLE_SECONDS``.
        """
        partitions = consumer.partitions_for_topic(self._settings.input_topic)
        if not partitions:
            return idle_seconds > self._settings.burst_idle_seconds
        assignment = consumer.assignment()
        for tp in assignment:
            high = consumer.highwater(tp)
            if high is None or await consumer.position(tp) < high:
                return False
        others = {TopicPartition(self._settings.input_topic, p) for p in partitions} - assignment
        return not others or await self._committed_to_the_end(consumer, others)

    async def _committed_to_the_end(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> bool:
        """True when the group's committed offset of each partition has reached its end."""
        committed = {tp: await consumer.committed(tp) or 0 for tp in tps}
        if self.probe is None:
            self.probe = self._make_probe()
            await self.probe.start()
        self.probe.assign(list(tps))
        for tp, offset in committed.items():
            self.probe.seek(tp, offset)
        await self.probe.getmany(timeout_ms=self._settings.batch_timeout_ms, max_records=1)
        for tp, offset in committed.items():
            high = self.probe.highwater(tp)
            if high is None or offset < high:
                return False
        return True
