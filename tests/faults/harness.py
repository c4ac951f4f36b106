"""The fault-injection harness: service processes, a background feeder, polling, committed offsets.

Every helper polls with a deadline instead of sleeping a fixed time, and every process started
through ``Fleet`` is killed by the ``fleet`` fixture when a test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support import SERVICE_CMD, Coord, Ledger, Sent, Topics, expected_outcomes, produce, record


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float,
    interval: float = 0.2,
    what: str = "the condition",
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"{what} did not happen within {within:.0f}s{extra}")
        await asyncio.sleep(interval)


class ServiceProcess:
    """One ``python -m service run`` process, its stderr (JSON log lines) in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.peak_rss_kib = 0
        self._read_to = 0
        self._lines: list[dict[str, Any]] = []
        self._counts: Counter[str | None] = Counter()

    def start(self) -> ServiceProcess:
        """Start the process (stdout discarded, stderr to the log file)."""
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(SERVICE_CMD, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process freezes (a zombie-to-be)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """Send SIGTERM (the graceful stop)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float) -> int:
        """Wait until the process exits; return its status (fails the test after ``within``)."""
        await wait_until(
            lambda: not self.alive, within=within, interval=0.1, what="the service's exit", detail=self.tail
        )
        code = self.returncode
        assert code is not None
        return code

    def text(self) -> str:
        """The whole log."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        """The end of the log, for failure messages."""
        return f"--- {self.log.name} ---\n{self.text()[-chars:]}"

    def _refresh(self) -> None:
        """Parse the log lines written since the last call (complete lines only)."""
        if not self.log.exists():
            return
        with self.log.open("rb") as f:
            f.seek(self._read_to)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._read_to += end + 1
        for raw in chunk[: end + 1].splitlines():
            event: Any = None
            if raw.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(raw)
            if not isinstance(event, dict):
                event = {"event": None, "raw": raw.decode(errors="replace")}
            self._lines.append(event)
            self._counts[event.get("event")] += 1

    def lines(self) -> list[dict[str, Any]]:
        """Every log line so far, parsed (lines that are not JSON as ``{"event": None, "raw": ...}``)."""
        self._refresh()
        return self._lines

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The log's JSON lines (optionally only those with ``event == name``)."""
        return [e for e in self.lines() if name is None or e.get("event") == name]

    def count(self, name: str) -> int:
        """How many log lines carry ``"event": name`` so far."""
        self._refresh()
        return self._counts[name]

    async def wait_for(self, name: str, *, within: float, count: int = 1) -> None:
        """Wait until the log has ``count`` events called ``name``; fail early if the process died."""

        def seen() -> bool:
            if self.count(name) >= count:
                return True
            assert self.alive, f"the service exited ({self.returncode}) before logging {name}\n{self.tail()}"
            return False

        await wait_until(seen, within=within, what=f"{count} x {name} in {self.log.name}", detail=self.tail)

    def sample_rss(self) -> int:
        """Read VmHWM (peak resident set size, KiB) from /proc; keep the largest seen."""
        if self.alive:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        return self.peak_rss_kib


class Fleet:
    """Starts service processes for one test and kills the ones still running at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServiceProcess] = []

    def start(self, env: dict[str, str], label: str) -> ServiceProcess:
        """Start one service process whose log is ``<label>.log`` in the test's directory."""
        svc = ServiceProcess(env, self.tmp_path / f"{label}.log").start()
        self.started.append(svc)
        return svc

    def cleanup(self) -> None:
        """Kill every process still running."""
        for svc in self.started:
            with contextlib.suppress(Exception):
                svc.kill()


class Feeder:
    """Produces one-record payloads in the background at a steady rate (load during a fault)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int,
        rate: float,
        start_fn: int,
        bad_every: int = 9,
        body_bytes: int = 400,
    ) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.rate, self.next_fn, self.bad_every = rate, start_fn, bad_every
        self._filler = ("lorem ipsum dolor sit amet " * (body_bytes // 27 + 1))[:body_bytes]
        self.sent: list[Sent] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Feeder:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=False, max_request_size=4 << 20
        )
        await producer.start()
        self._task = asyncio.create_task(self._run(producer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _payload(self, n: int) -> bytes:
        date = "2024-02-30" if self.bad_every and n % self.bad_every == 0 else "2024-01-24"
        return record(n, date=date, text=self._filler + f" #{n}").encode()

    async def _run(self, producer: AIOKafkaProducer) -> None:
        tick = 0.1
        per_tick = max(1, round(self.rate * tick))
        try:
            while not self._stop.is_set():
                batch = []
                for n in range(self.next_fn, self.next_fn + per_tick):
                    value = self._payload(n)
                    key = f"f{n}".encode()
                    fut = await producer.send(self.topic, value, key=key, partition=n % self.partitions)
                    batch.append((fut, key, value))
                for fut, key, value in batch:
                    meta = await fut
                    self.sent.append(Sent(meta.partition, meta.offset, key, value))
                self.next_fn += per_tick
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), tick)
        finally:
            await producer.stop()

    async def stop(self) -> list[Sent]:
        """Stop producing (after the messages in flight are acknowledged); return everything sent."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        return self.sent


async def committed(
    bootstrap: str, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int | None]:
    """The group's committed offsets (the admin client's list_consumer_group_offsets fails on Tansu)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


async def wait_accounted(
    bootstrap: str,
    topics: Topics,
    expected: dict[Coord, str | None],
    *,
    within: float,
    services: Iterable[ServiceProcess] = (),
    interval: float = 1.5,
    committed: bool = False,
) -> Ledger:
    """Poll both output topics until every expected record has an event; return the ledger."""
    services = list(services)
    ledger = Ledger()

    async def done() -> bool:
        nonlocal ledger
        ledger = await Ledger.read(bootstrap, topics, committed=committed)
        return set(expected) <= (set(ledger.articles) | set(ledger.dead_letters))

    def detail() -> str:
        seen = set(ledger.articles) | set(ledger.dead_letters)
        missing = sorted(set(expected) - seen)
        logs = "\n".join(s.tail(1500) for s in services)
        return f"{len(missing)} of {len(expected)} records unaccounted for, e.g. {missing[:5]}\n{logs}"

    await wait_until(done, within=within, interval=interval, what="full accounting", detail=detail)
    return ledger


async def account_and_stop(
    bootstrap: str,
    topics: Topics,
    sent: Iterable[Sent],
    svc: ServiceProcess,
    *,
    exactly_once: bool,
    within: float = 120,
    exit_within: float = 40,
    committed: bool = False,
) -> Ledger:
    """The end of a fault test: wait until every record of ``sent`` is accounted for, SIGTERM the
    service (it must exit 0), and check the accounting invariant."""
    expected = expected_outcomes(sent, topics.input)
    ledger = await wait_accounted(
        bootstrap, topics, expected, within=within, services=[svc], committed=committed
    )
    svc.terminate()
    assert await svc.wait_exit(within=exit_within) == 0, svc.tail()
    ledger.check(expected, exactly_once=exactly_once)
    return ledger


def processed_again(services: Iterable[ServiceProcess]) -> int:
    """How many input messages a service processed that a later one (in start order) processed
    again: the batches in flight when each was killed."""
    runs = [{(e["partition"], e["offset"]) for e in svc.events("record")} for svc in services]
    return sum(len(runs[i] & set().union(*runs[i + 1 :])) for i in range(len(runs) - 1))


async def wait_records(svc: ServiceProcess, target: int, *, within: float = 90, what: str = "") -> None:
    """Until ``svc`` has logged ``target`` record lines (polled every 10 ms, to stop it right then)."""
    await wait_until(
        lambda: svc.count("record") >= target,
        within=within,
        interval=0.01,
        what=what or f"{target} records",
        detail=svc.tail,
    )


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (e.g. FAULTS_SEED to replay a random run)."""
    value = os.environ.get(name)
    return int(value) if value else default


async def produce_at(
    bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, int | None]]
) -> list[Sent]:
    """Send (value, CreateTime in ms) pairs to partition 0, in order; return where they landed."""
    values, timestamps = zip(*items, strict=True)
    return await produce(bootstrap, topic, values, timestamps=timestamps)
