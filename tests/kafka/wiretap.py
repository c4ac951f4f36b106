"""Which Kafka requests, at which API versions, marker-ingest's clients really send.

    python -m tests.kafka.wiretap OUT.jsonl run --burst     # marker-ingest's CLI, tapped

``install(path)`` wraps aiokafka's ``Request.prepare``, the one place every request it sends gets
its version (the newest it knows within the range the broker announced in ApiVersions), and
appends each new (request, API key, version) to ``path`` as a JSON line, including a request for
which no version fitted (``version`` null). Nothing else changes: the real client talks to the real
broker. ``judge`` holds what was recorded against the broker's ranges and ``table`` prints it; the
guard is ``tests/integration/test_api_versions.py``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# Kafka's names (org.apache.kafka.common.protocol.ApiKeys) for the keys aiokafka 0.14 can send.
API_NAMES = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    15: "DescribeGroups",
    16: "ListGroups",
    17: "SaslHandshake",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    21: "DeleteRecords",
    22: "InitProducerId",
    23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
    29: "DescribeAcls",
    30: "CreateAcls",
    31: "DeleteAcls",
    32: "DescribeConfigs",
    33: "AlterConfigs",
    36: "SaslAuthenticate",
    37: "CreatePartitions",
    42: "DeleteGroups",
    45: "AlterPartitionReassignments",
    46: "ListPartitionReassignments",
    48: "DescribeClientQuotas",
}


@dataclass(frozen=True)
class Sent:
    """One kind of request as it went out: its API key and the version aiokafka chose (None: none
    fitted, and aiokafka raised instead of sending)."""

    api_key: int
    version: int | None
    client: str
    """What sent it: the label given to ``install`` (``run at-least-once``, ``produce``, ...)."""

    @property
    def name(self) -> str:
        """Kafka's name for the request."""
        return API_NAMES.get(self.api_key, f"ApiKey{self.api_key}")


def install(path: Path, label: str) -> None:
    """Record every kind of request this process sends from now on to ``path`` (appending)."""
    from aiokafka.protocol.api import Request

    original = Request.prepare
    seen: set[tuple[int, int | None]] = set()
    lock = threading.Lock()

    def note(api_key: int, version: int | None) -> None:
        with lock:
            if (api_key, version) in seen:
                return
            seen.add((api_key, version))
            line = orjson.dumps({"api_key": api_key, "version": version, "client": label}) + b"\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def prepare(self: Any, versions: dict[int, tuple[int, int]]) -> Any:
        try:
            struct = original(self, versions)
        except Exception:
            note(self.API_KEY, None)
            raise
        note(struct.API_KEY, struct.API_VERSION)
        return struct

    Request.prepare = prepare


def read(path: Path) -> list[Sent]:
    """What ``install`` recorded."""
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    sent = {Sent(**orjson.loads(line)) for line in lines if line.strip()}
    return sorted(sent, key=lambda s: (s.api_key, -1 if s.version is None else s.version, s.client))


@dataclass(frozen=True)
class Row:
    """One request: the versions marker-ingest's clients sent, the broker's range, and whether each fits."""

    api_key: int
    name: str
    versions: tuple[int | None, ...]
    clients: tuple[str, ...]
    broker_range: tuple[int, int] | None

    @property
    def ok(self) -> bool:
        """Every version sent lies in the broker's range."""
        if self.broker_range is None:
            return False
        low, high = self.broker_range
        return all(v is not None and low <= v <= high for v in self.versions)


def judge(sent: Iterable[Sent], ranges: dict[int, tuple[int, int]]) -> list[Row]:
    """One row per request kind, against the broker's ``ranges`` (API key → (min, max) from ApiVersions)."""
    by_key: dict[int, list[Sent]] = {}
    for s in sent:
        by_key.setdefault(s.api_key, []).append(s)
    rows = []
    for key, items in sorted(by_key.items()):
        versions = tuple(sorted({s.version for s in items}, key=lambda v: -1 if v is None else v))
        clients = tuple(sorted({s.client for s in items}))
        rows.append(Row(key, items[0].name, versions, clients, ranges.get(key)))
    return rows


def table(rows: Iterable[Row], broker: str) -> str:
    """The rows as a Markdown table: request, version sent, the broker's range, verdict, senders."""
    lines = [
        f"| request (API key) | version sent | {broker} accepts | | sent by |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        sent = ", ".join("none fits" if v is None else f"v{v}" for v in row.versions)
        accepts = "not at all" if row.broker_range is None else "v{}-v{}".format(*row.broker_range)
        verdict = "ok" if row.ok else "OUTSIDE"
        lines.append(
            f"| {row.name} ({row.api_key}) | {sent} | {accepts} | {verdict} | {', '.join(row.clients)} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``OUT LABEL ARGS...``: run ``marker-ingest ARGS...`` with every request kind recorded to OUT."""
    if len(argv) < 3:
        print("usage: python -m tests.kafka.wiretap OUT.jsonl LABEL MARKER-INGEST-ARGS...", file=sys.stderr)
        return 2
    install(Path(argv[0]), argv[1])
    from service.cli import main as marker_ingest

    return marker_ingest(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
