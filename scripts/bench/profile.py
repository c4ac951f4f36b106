"""The profile of a drain (py-spy) filed under the per-stage budget of the service's CPU per message.

``STAGES`` is the one table of headings. Each heading lists where its time is spent as qualified
names of real code, resolved by import (``resolve``; ``tests/unit/test_bench_profile_stages.py``
fails when one names nothing): a package or module (every function in it), a class (its methods) or a
function. A sample is filed under the stage of its innermost frame that any heading names (a
function outranks its class, a class its module, a module its package); a sample no heading names
is "rest". Only the main thread is counted: the service's loop. C code (the Cython record builder,
orjson, hashlib, the C scanner) has no frame of its own and counts with its Python caller.

µs per message of a stage = its samples x the sampling interval / the drain's messages; the sum of
the stages without the idle one is checked against the process's CPU time over the same window. On a
busy machine the samples count time spent waiting for a CPU too, so the budget also gives the
process's CPU time split over the busy stages in proportion to their samples (``cpu_shares``).
"""

from __future__ import annotations

import importlib
import re
import shutil
import signal
import subprocess
import sys
from asyncio import selector_events
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

RATE = 200
"""py-spy samples per second."""
REST = "rest"
IDLE = "idle: waiting in epoll"

# The transport's write-when-ready callback: ``_write_ready`` up to Python 3.11; from 3.12 an
# instance attribute bound to ``_write_send`` or ``_write_sendmsg``, the methods that hold the code.
_WRITE_READY = tuple(
    f"asyncio.selector_events._SelectorSocketTransport.{name}"
    for name in ("_write_ready", "_write_send", "_write_sendmsg")
    if name in vars(selector_events._SelectorSocketTransport)
)


@dataclass(frozen=True)
class Stage:
    """A heading of the budget: its name, what it holds, and where (qualified names)."""

    name: str
    what: str
    where: tuple[str, ...]


# The headings name the service's code where it is; when it moves, the heading test says which.
STAGES: tuple[Stage, ...] = (
    Stage(
        "fetch and unpack",
        "getmany, the fetcher, reading and decoding responses (most bytes read are fetch responses)",
        (
            "aiokafka.consumer.consumer.AIOKafkaConsumer.getmany",
            "aiokafka.consumer.fetcher",
            "aiokafka.conn.AIOKafkaConnection._read",
            "aiokafka.conn.AIOKafkaConnection._handle_frame",
            "asyncio.selector_events._SelectorSocketTransport._read_ready",
            "asyncio.selector_events._SelectorSocketTransport._read_ready__data_received",
            "asyncio.selector_events._SelectorSocketTransport._read_ready__get_buffer",
            "asyncio.streams.StreamReader",
            "asyncio.streams.StreamReaderProtocol",
        ),
    ),
    Stage(
        "core",
        "process_payload and below: decode, scan, checks, pydantic, SHA-256, the event's JSON",
        ("service.core",),
    ),
    Stage(
        "routing and outbox",
        "route, Send, Batch.add, Outbox.add and flush (the C record builder's append included), the "
        "loop's own per-message work in Pipeline._process",
        (
            "service.delivery.routing",
            "service.delivery.outbox",
            "service.delivery.batch",
            "service.delivery.pipeline.Pipeline._process",
            "service.delivery.pipeline._send",
        ),
    ),
    Stage(
        "producer append and request build",
        "send_batch, the accumulator, the sender, produce requests encoded and framed",
        (
            "aiokafka.producer.producer.AIOKafkaProducer.create_batch",
            "aiokafka.producer.producer.AIOKafkaProducer.send_batch",
            "aiokafka.producer.producer.AIOKafkaProducer.send",
            "aiokafka.producer.message_accumulator",
            "aiokafka.producer.sender",
            "aiokafka.client.AIOKafkaClient.send",
            "aiokafka.conn.AIOKafkaConnection.send",
        ),
    ),
    Stage(
        "socket writes",
        "requests written through asyncio's transport (the send system call)",
        (
            "asyncio.selector_events._SelectorSocketTransport.write",
            *_WRITE_READY,
            "asyncio.streams.StreamWriter",
        ),
    ),
    Stage(
        "logging",
        "the canonical record line and every other log line: structlog, the project's sink",
        ("service.ops.logs", "structlog", "logging"),
    ),
    Stage(
        "metrics",
        "Prometheus metrics, consumer lag, the safety switch's counts",
        (
            "service.ops.metrics",
            "service.ops.safety",
            "service.delivery.safety_gate",
            "service.delivery.lag",
            "prometheus_client",
        ),
    ),
    Stage(
        "completion and commit",
        "acknowledgements awaited, resend plans, offset commits, transactions, the group coordinator",
        (
            "service.delivery.modes",
            "service.delivery.resend",
            "service.delivery.retry",
            "service.delivery.grace",
            "aiokafka.consumer.consumer.AIOKafkaConsumer.commit",
            "aiokafka.consumer.group_coordinator",
            "aiokafka.producer.transaction_manager",
            "aiokafka.producer.producer.AIOKafkaProducer.begin_transaction",
            "aiokafka.producer.producer.AIOKafkaProducer.send_offsets_to_transaction",
            "aiokafka.producer.producer.AIOKafkaProducer.commit_transaction",
        ),
    ),
    Stage(
        "event loop",
        "asyncio's scheduling: handles, tasks and futures, events processed after a select",
        (
            "asyncio.base_events",
            "asyncio.events",
            "asyncio.futures",
            "asyncio.tasks",
            "asyncio.selector_events.BaseSelectorEventLoop",
        ),
    ),
    Stage(
        IDLE,
        "the loop with nothing to do: waiting for acks, a commit, a fetch",
        ("selectors.EpollSelector.select",),
    ),
)

_SPECIFICITY = {"package": 0, "module": 1, "class": 2, "function": 3}


@dataclass(frozen=True)
class Target:
    """Where a qualified name's code lives, as py-spy names a frame: a file path and a qualname."""

    name: str
    kind: str  # package | module | class | function
    path: str
    """The module's file relative to its sys.path entry (``service/core/events.py``), or the
    package's folder (``service/core/``)."""
    qualname: str = ""

    def matches(self, function: str, file: str) -> bool:
        """True when py-spy's frame ``function (file:line)`` runs code this name covers."""
        if self.kind == "package":
            return file.startswith(self.path) or f"/{self.path}" in file
        if file != self.path and not file.endswith(f"/{self.path}"):
            return False
        if self.kind == "module":
            return True
        if self.kind == "class":
            return function == self.qualname or function.startswith(f"{self.qualname}.")
        return function == self.qualname or function.startswith(f"{self.qualname}.<locals>.")


def resolve(name: str) -> Target:
    """The code ``name`` (a dotted path) stands for, found by importing it.

    Raises ``LookupError`` when nothing by that name exists, or when it names a class or function
    through a module that only imports it (py-spy names the module that defines it).
    """
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
        rest = parts[cut:]
        break
    else:
        raise LookupError(f"{name}: no such module")
    if not rest:
        if hasattr(module, "__path__"):
            return Target(name, "package", module_name.replace(".", "/") + "/")
        return Target(name, "module", module_name.replace(".", "/") + ".py")
    obj: object = module
    for i, attr in enumerate(rest):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise LookupError(f"{name}: {'.'.join([module_name, *rest[:i]])} has no {attr!r}") from None
    qualname = ".".join(rest)
    defined_in = getattr(obj, "__module__", None)
    if defined_in != module_name or getattr(obj, "__qualname__", None) != qualname:
        where = f"{defined_in}.{getattr(obj, '__qualname__', '?')}"
        raise LookupError(f"{name}: not defined there (it is {where})")
    kind = "class" if isinstance(obj, type) else "function"
    return Target(name, kind, module_name.replace(".", "/") + ".py", qualname)


class Filing:
    """Files frames under stages: ``stage_of(frames)`` for a sample's stack, innermost frame last."""

    def __init__(self, stages: Iterable[Stage] = STAGES) -> None:
        targets = [(stage.name, resolve(name)) for stage in stages for name in stage.where]
        targets.sort(key=lambda st: -_SPECIFICITY[st[1].kind])
        self._targets = targets
        self._cache: dict[str, str | None] = {}

    def frame_stage(self, frame: str) -> str | None:
        """The stage of one py-spy frame ``function (file:line)``, None when no heading names it."""
        if frame in self._cache:
            return self._cache[frame]
        function, file = split_frame(frame)
        stage = next((name for name, target in self._targets if target.matches(function, file)), None)
        self._cache[frame] = stage
        return stage

    def stage_of(self, frames: list[str]) -> str:
        for frame in reversed(frames):
            stage = self.frame_stage(frame)
            if stage is not None:
                return stage
        return REST


_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def split_frame(frame: str) -> tuple[str, str]:
    """``"Outbox.add (service/delivery/outbox.py:61)"``: ``("Outbox.add", "service/delivery/outbox.py")``."""
    m = _FRAME.match(frame.strip())
    return (m.group(1), m.group(2)) if m else (frame.strip(), "")


@dataclass
class Samples:
    """py-spy's collapsed stacks of one process, split by thread."""

    main: list[tuple[list[str], int]] = field(default_factory=list)
    other_threads: int = 0

    @property
    def total(self) -> int:
        return sum(n for _, n in self.main)


_THREAD = re.compile(r"^thread \((\d+)\)")


def parse_collapsed(text: str, main_thread: int | None) -> Samples:
    """py-spy's ``--format raw`` output: one ``frame;frame;... count`` line per distinct stack.

    With ``--threads`` each stack starts with ``thread (TID)[: name]``; only ``main_thread``'s
    samples (on Linux the main thread's id is the process id) are kept, the others are counted.
    """
    out = Samples()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f.strip()]
        if frames and (m := _THREAD.match(frames[0])):
            frames = frames[1:]
            if main_thread is not None and int(m.group(1)) != main_thread:
                out.other_threads += int(count)
                continue
        out.main.append((frames, int(count)))
    return out


def by_stage(samples: Samples, filing: Filing) -> dict[str, int]:
    """Samples per stage, in the table's order, ``rest`` last."""
    counts = {stage.name: 0 for stage in STAGES} | {REST: 0}
    for frames, n in samples.main:
        stage = filing.stage_of(frames)
        counts[stage] = counts.get(stage, 0) + n
    return counts


def us_per_message(counts: Mapping[str, int], messages: int, rate: float = RATE) -> dict[str, float]:
    """Each stage's samples as µs of the process's time per message."""
    return {name: n / rate * 1e6 / messages for name, n in counts.items()} if messages else {}


def cpu_shares(counts: Mapping[str, int], cpu_us_per_msg: float | None) -> dict[str, float]:
    """The process's CPU time per message split over the busy stages by their samples (idle: none).

    On a machine where the process waits for a CPU, py-spy samples it all the same (it is runnable,
    not idle), so samples x interval is wall time; this split is what each stage costs in CPU.
    """
    busy = sum(n for name, n in counts.items() if name != IDLE)
    if cpu_us_per_msg is None or not busy:
        return {}
    return {name: 0.0 if name == IDLE else cpu_us_per_msg * n / busy for name, n in counts.items()}


def hottest(samples: Samples, top: int = 20) -> dict[str, list[tuple[str, float]]]:
    """The functions with the most samples, inclusive and self, in % of the main thread's samples."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for frames, n in samples.main:
        names = [re.sub(r":\d+\)$", ")", f.strip()) for f in frames] or ["(no Python frame)"]
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + n
        own[names[-1]] = own.get(names[-1], 0) + n
    total = samples.total or 1

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"inclusive_pct": ranked(inclusive), "self_pct": ranked(own)}


def start_profiler(pid: int, out: Path, rate: int = RATE) -> subprocess.Popen[bytes] | None:
    """py-spy recording every thread of ``pid`` (idle included) into ``out``; None without py-spy."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("bench: py-spy is not installed (pip install -e '.[bench]'); no profile", file=sys.stderr)
        return None
    cmd = [pyspy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    cmd += ["--nonblocking", "--idle", "--threads", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(spy: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop recording (SIGINT: py-spy writes its file), reap it."""
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
