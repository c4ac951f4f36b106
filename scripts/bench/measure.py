"""What a run measures: CPU and peak RSS from /proc, and when the output topics reach their counts.

``Sampler`` reads the measured processes' CPU time and VmHWM, the brokers' CPU time and the whole
machine's busy time every 50 ms; ``Watermarks`` waits until output topics hold the expected events,
from the high watermarks of fetch responses (or, for transactional output, by reading it
``read_committed`` and counting).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.data import FETCH_PARTITION_BYTES

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_alive(pid: int) -> bool:
    """True while the process runs (a zombie does not count); never reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def proc_hwm_kb(pid: int) -> int | None:
    """VmHWM (peak resident set) of a process, in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / TICKS


class Sampler:
    """Every 50 ms: the CPU time of the measured processes (summed) and of the brokers, their peak RSS,
    and ``others``: the machine's busy CPU less the measured processes, the brokers, the helpers
    (``extra_pids``) and this process, i.e. whatever else runs on the machine (other people's work).

    A process's CPU time is kept at its last reading once it has exited, so that a sum over several
    processes never drops.
    """

    def __init__(self, pids: Iterable[int], broker_pids: Iterable[int] = (), extra_pids: Iterable[int] = ()):
        self.pids, self.broker_pids, self.extra_pids = list(pids), list(broker_pids), list(extra_pids)
        self.samples: list[tuple[float, float | None, float | None, float | None]] = []
        self.hwm_kb: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def _cpu(self, pids: Sequence[int]) -> float | None:
        for pid in pids:
            cpu = proc_cpu_seconds(pid)
            if cpu is not None:
                self._last[pid] = cpu
        known = [self._last[p] for p in pids if p in self._last]
        return sum(known) if known else None

    def sample(self) -> None:
        """Take one reading now."""
        cpu = self._cpu(self.pids)
        broker = self._cpu(self.broker_pids)
        helpers = self._cpu([*self.extra_pids, os.getpid()])
        busy = machine_busy_seconds()
        for pid in self.pids:
            hwm = proc_hwm_kb(pid)
            if hwm:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
        if cpu is not None:
            ours = cpu + (broker or 0.0) + (helpers or 0.0)
            self.samples.append((time.time(), cpu, broker, None if busy is None else busy - ours))

    @property
    def peak_rss_mb(self) -> float | None:
        """The largest peak RSS of the measured processes, in MB."""
        return max(self.hwm_kb.values()) / 1024 if self.hwm_kb else None

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _at(self, t: float, index: int) -> float | None:
        best = None
        for sample in self.samples:
            if sample[0] <= t:
                best = sample[index]
            else:
                if best is None:
                    best = sample[index]
                break
        return best

    def cpu_between(self, t0: float, t1: float) -> tuple[float | None, float | None, float | None]:
        """CPU seconds of the measured processes, of the brokers and of everything else between two
        wall-clock times."""
        out: list[float | None] = []
        for index in (1, 2, 3):
            a, b = self._at(t0, index), self._at(t1, index)
            out.append(None if a is None or b is None else b - a)
        return out[0], out[1], out[2]


class Watermarks:
    """Waits until output topics (one partition each) reach given message counts.

    The consumer is positioned on the last expected offset, so it reads (almost) nothing until the
    last event lands: a fetch past the end answers with no records and the high watermark.
    ``committed``: transactional output (exactly-once), whose offsets include commit markers, so
    the records are read ``read_committed`` and counted instead.
    """

    def __init__(self, bootstrap: str, *, committed: bool = False) -> None:
        self.bootstrap = bootstrap
        self.consumer: Any = None
        self.committed = committed
        self.counts: dict[str, int] = {}

    async def __aenter__(self) -> Watermarks:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            isolation_level="read_committed" if self.committed else "read_uncommitted",
        )
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def wait(
        self, targets: dict[str, int], deadline: float, alive: Callable[[], bool] | None = None
    ) -> float | None:
        """The wall time at which every topic reached its count; None at the deadline (monotonic) or
        once ``alive()`` turns false."""
        from aiokafka import TopicPartition

        c = self.consumer
        pending = {TopicPartition(t, 0): n for t, n in targets.items() if n > 0}
        if not pending:
            return time.time()
        await self._metadata([tp.topic for tp in pending])
        c.assign(list(pending))
        if self.committed:
            for tp in pending:
                c.seek(tp, 0)
                self.counts[tp.topic] = 0

            def arrived(tp: Any, records: Sequence[Any]) -> bool:
                self.counts[tp.topic] += len(records)
                return self.counts[tp.topic] >= pending[tp]
        else:
            for tp, n in pending.items():
                c.seek(tp, n - 1)

            def arrived(tp: Any, records: Sequence[Any]) -> bool:
                high = c.highwater(tp)
                got = any(m.offset >= pending[tp] - 1 for m in records)
                return got or (high is not None and high >= pending[tp])

        reached = time.time()
        last_looks = 3
        while pending:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                last_looks -= 1
                if last_looks < 0:
                    return None
            batch = await c.getmany(*pending, timeout_ms=100)
            now = time.time()
            for tp in list(pending):
                if arrived(tp, batch.get(tp, ())):
                    del pending[tp]
                    reached = now
                    c.pause(tp)
        return reached

    async def _metadata(self, topics: list[str]) -> None:
        for _ in range(50):
            if all(self.consumer.partitions_for_topic(t) for t in topics):
                return
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)

    async def inspect(self, topics: Sequence[str]) -> dict[str, dict[str, int | None]]:
        """For each topic: its high watermark and its first message's timestamp (ms) when readable;
        with ``committed``, every committed record is counted again (``counts``)."""
        from aiokafka import TopicPartition

        c = self.consumer
        await self._metadata(list(topics))
        out: dict[str, dict[str, int | None]] = {}
        for topic in topics:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            c.seek(tp, 0)
            first = await self._one(tp)
            out[topic] = {"high": c.highwater(tp) or 0, "first_ms": first.timestamp if first else None}
            if self.committed:
                c.seek(tp, 0)
                self.counts[topic], quiet = 0, 0
                while quiet < 3:
                    batch = await c.getmany(tp, timeout_ms=200)
                    self.counts[topic] += len(batch.get(tp, ()))
                    quiet = 0 if batch else quiet + 1
        return out

    async def _one(self, tp: Any) -> Any:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            batch = await self.consumer.getmany(tp, timeout_ms=200, max_records=1)
            if batch.get(tp):
                return batch[tp][0]
            high = self.consumer.highwater(tp)
            if high is not None and await self.consumer.position(tp) >= high:
                return None
        return None
