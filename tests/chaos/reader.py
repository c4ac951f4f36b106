"""The independent reader: ``ChaosReader.java`` (Kafka's own consumer and admin client), compiled
once against the cached Kafka jars and run after the chaos to dump the topics and committed offsets.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.kafka.cluster import cache_dir

SOURCE = Path(__file__).with_name("ChaosReader.java")
QUIET_LOG4J = """\
status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
"""


class ReaderFailed(RuntimeError):
    """Raised when the Java reader cannot be compiled or does not read to the end."""


def unavailable_reason() -> str | None:
    """Why the reader cannot be compiled here (no ``javac``: a JRE without the JDK), else None."""
    if shutil.which("javac") is None:
        return "javac is not installed (the chaos run compiles its Java reader: a JDK, not only a JRE)"
    return None


def compiled(lib: Path) -> Path:
    """The folder of the compiled reader (compiled on first use, kept beside the Kafka jars)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + str(lib).encode()).hexdigest()[:12]
    classes = cache_dir() / f"chaos-reader-{digest}"
    if (classes / "ChaosReader.class").exists():
        return classes
    classes.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="chaos-reader.", dir=classes.parent))
    cmd = ["javac", "-nowarn", "-cp", f"{lib}/*", "-d", str(staging), str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ReaderFailed(f"javac failed: {done.stdout}{done.stderr}")
    (staging / "log4j2.properties").write_text(QUIET_LOG4J)
    if classes.exists():  # another run compiled it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(classes)
    return classes


@dataclass(frozen=True)
class Rec:
    """One record as the Java consumer returned it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    value: bytes | None
    timestamp: int = -1
    """Its Kafka timestamp (ms; for events the producer's send time)."""

    def header(self, name: str) -> bytes | None:
        """The value of the first header called ``name``."""
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Dump:
    """What the reader saw: records and end offsets per (isolation level, topic), committed offsets."""

    records: dict[tuple[str, str], list[Rec]] = field(default_factory=lambda: defaultdict(list))
    ends: dict[tuple[str, str], dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    committed: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))


def _b64(text: str) -> bytes | None:
    return None if text == "-" else base64.b64decode(text)


def parse(text: str) -> Dump:
    """Parse the reader's output; raises ``ReaderFailed`` when it did not finish (no ``DONE``)."""
    dump = Dump()
    lines = text.split("\n")
    if "DONE" not in lines:
        raise ReaderFailed("the reader's output does not end with DONE")
    for line in lines:
        parts = line.split("\t")
        if parts[0] == "REC":
            _, iso, topic, partition, offset, timestamp, key, headers, value = parts
            pairs = tuple(
                ((_b64(k) or b"").decode(), _b64(v))
                for k, v in (h.split("=", 1) for h in headers.split(",") if h)
            )
            rec = Rec(topic, int(partition), int(offset), _b64(key), pairs, _b64(value), int(timestamp))
            dump.records[(iso, topic)].append(rec)
        elif parts[0] == "END":
            _, iso, topic, partition, offset = parts
            dump.ends[(iso, topic)][int(partition)] = int(offset)
        elif parts[0] == "COMMITTED":
            _, topic, partition, offset = parts
            dump.committed[topic][int(partition)] = int(offset)
    return dump


def read(
    lib: Path,
    bootstrap: str,
    reads: list[tuple[str, str]],
    *,
    committed: tuple[str, str] | None,
    workdir: Path,
    within: float = 300,
) -> Dump:
    """Run the reader: each (isolation level, topic) of ``reads`` to its end, then the committed
    offsets of ``committed`` (group, topic; needs a read_uncommitted read). Its output and log are
    kept in ``workdir`` (``reader.out``, ``reader.log``)."""
    classes = compiled(lib)
    out = workdir / "reader.out"
    java = shutil.which("java") or "java"
    cmd = [
        java,
        "-Xms64m",
        "-Xmx384m",
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={classes / 'log4j2.properties'}",
        "-cp",
        f"{classes}:{lib}/*",
        "ChaosReader",
        bootstrap,
        str(out),
        *(committed or ("-", "-")),
        str(int(within)),
        *(f"{iso}:{topic}" for iso, topic in reads),
    ]
    with (workdir / "reader.log").open("ab") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=within + 120, check=False)
    if done.returncode != 0:
        tail = (workdir / "reader.log").read_text(errors="replace")[-2000:]
        raise ReaderFailed(f"the Java reader exited {done.returncode}:\n{tail}")
    return parse(out.read_text())
