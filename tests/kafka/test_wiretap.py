"""The wire tap of the API-version guard (``tests/kafka/wiretap.py``): what it records and how it judges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.kafka import wiretap

ROOT = Path(__file__).resolve().parents[2]


def test_the_guard_fails_on_a_version_outside_the_range() -> None:
    """The judgement itself: a version above the range, one below, and a request with none that fits."""
    sent = [
        wiretap.Sent(0, 9, "run"),
        wiretap.Sent(1, 3, "run"),
        wiretap.Sent(22, None, "exactly-once"),
        wiretap.Sent(3, 13, "produce"),
    ]
    ranges = {0: (3, 12), 1: (4, 17), 22: (1, 5), 3: (0, 12)}
    rows = {row.name: row for row in wiretap.judge(sent, ranges)}
    assert rows["Produce"].ok
    assert not rows["Fetch"].ok
    assert not rows["InitProducerId"].ok
    assert not rows["Metadata"].ok
    report = wiretap.table(rows.values(), "Kafka 9.9.9")
    assert "| Fetch (1) | v3 | v4-v17 | OUTSIDE | run |" in report
    assert "| InitProducerId (22) | none fits | v1-v5 | OUTSIDE | exactly-once |" in report


def test_the_tap_records_what_a_request_would_be_sent_as(tmp_path: Path) -> None:
    """``install`` wraps aiokafka's version choice without changing it (here, in a child process)."""
    code = """
import sys
from pathlib import Path
from tests.kafka import wiretap
wiretap.install(Path(sys.argv[1]), "probe")
from aiokafka.protocol.metadata import MetadataRequest
print(MetadataRequest([]).prepare({3: (0, 5)}).API_VERSION)
try:
    MetadataRequest([]).prepare({3: (90, 99)})
except Exception as exc:
    print(type(exc).__name__)
"""
    wire = tmp_path / "wire.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", code, str(wire)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    version, error = done.stdout.split()
    assert error == "NotImplementedError"
    assert wiretap.read(wire) == [wiretap.Sent(3, None, "probe"), wiretap.Sent(3, int(version), "probe")]
