"""The benchmark's report (scripts/bench/report.py): medians of rounds, ratios within a round, the
goals of the performance issue, the text and the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench import report  # noqa: E402
from bench.data import Dataset  # noqa: E402
from bench.impls import EXACTLY_ONCE, Impl  # noqa: E402
from bench.run import Sitting  # noqa: E402
from bench.runner import RunResult  # noqa: E402
from bench.stats import INF  # noqa: E402

# msgs/s and µs of CPU per message, per implementation, per round (1 input partition).
ROUNDS = {
    "passthrough": [(10_000, 40), (5_000, 45), (12_000, 41)],
    "marker-ingest": [(6_000, 80), (4_500, 70), (6_600, 90)],
    "marker-ingest-eos": [(5_400, 95), (3_000, 99), (6_600, 97)],
    "faststream": [(300, 1_900), (300, 1_800), (600, 2_000)],
}


def _drain(impl: str, rep: int, msgs: float, cpu: float, partitions: int = 1, rss: float = 90) -> RunResult:
    return RunResult(impl, "drain", "dl10", partitions, 1, rep, messages=12_000, ok=True,
                     msgs_per_s=msgs, mb_per_s=msgs * 5.5e-3, cpu_pct=cpu * msgs / 1e4,
                     cpu_us_per_msg=cpu, others_cpu_pct=10.0, peak_rss_mb=rss,
                     log_bytes=2_000_000)  # fmt: skip


def _latency(impl: str, rep: int, rate: float, p99: float) -> RunResult:
    e2e = {"p50": p99 / 3, "p90": p99 / 2, "p99": p99, "max": p99 * 2}
    return RunResult(impl, "latency", "dl10", 1, 1, rep, messages=int(rate * 10), ok=True, peak_rss_mb=120,
                     latency={"rate": rate, "achieved_rate": rate, "e2e_ms": e2e, "out_ts_ms": e2e,
                              "input_ack_ms": e2e, "missing": 0})  # fmt: skip


def _sitting(latency: list[RunResult] | None = None, four: bool = True) -> Sitting:
    runs = []
    for rep in (1, 2, 3):
        for impl, figures in ROUNDS.items():
            msgs, cpu = figures[rep - 1]
            runs.append(_drain(impl, rep, msgs, cpu))
    if four:  # 4 input partitions: exactly-once at 0.5x of at-least-once
        for rep in (1, 2, 3):
            runs.append(_drain("marker-ingest", rep, 8_000, 70, partitions=4))
            runs.append(_drain("marker-ingest-eos", rep, 4_000, 90, partitions=4, rss=150))
    impls = [
        Impl("passthrough", "passthrough", "passthrough"),
        Impl("marker-ingest", "marker-ingest", "marker-ingest"),
        Impl("marker-ingest-eos", "exactly-once", "marker-ingest", env=(EXACTLY_ONCE,)),
        Impl("faststream", "FastStream", "faststream"),
        Impl("confluent", "confluent-kafka", "confluent", available=False, why_not="not installed"),
    ]
    ds = Dataset("dl10", 0.1, "t", 1, [b"x" * 5500] * 10, [b"1"] * 10, [False] * 9 + [True])
    return Sitting(impls, [ds], {"t": 1.0}, runs, latency or [], [], 1)


def test_rows_hold_the_medians_of_the_rounds_and_ratios_within_a_round() -> None:
    cases = report.table(_sitting().runs)
    assert list(cases) == [("dl10", 1, 1), ("dl10", 4, 1)]
    rows = {row.impl: row for row in cases["dl10", 1, 1]}
    assert rows["marker-ingest"]["msgs_per_s"] == 6_000
    assert rows["marker-ingest"]["cpu_us_per_msg"] == 80
    # Per round: 0.6, 0.9, 0.55; the median of those, not 6,000 / 10,000.
    assert rows["marker-ingest"].vs_passthrough == pytest.approx(0.6)
    assert rows["passthrough"].vs_passthrough == pytest.approx(1.0)
    assert rows["marker-ingest"]["peak_rss_mb"] == 90
    assert rows["marker-ingest"]["log_mb"] == 2.0


def test_a_run_with_a_problem_is_left_out_of_the_medians_and_ratios() -> None:
    sitting = _sitting(four=False)
    bad = next(r for r in sitting.runs if r.impl == "marker-ingest" and r.repetition == 2)
    bad.ok, bad.problem, bad.msgs_per_s = False, "not drained within 180s", 10.0
    rows = {row.impl: row for row in report.table(sitting.runs)["dl10", 1, 1]}
    assert rows["marker-ingest"]["msgs_per_s"] == 6_300
    assert rows["marker-ingest"].vs_passthrough == pytest.approx((0.6 + 0.55) / 2)
    assert "!! not drained within 180s" in report.render(sitting, {"repeat": 3})


def _goals(sitting: Sitting) -> dict[str, dict[str, object]]:
    return {g["key"]: g for g in report.goals(sitting)}


def test_goals_are_checked_in_every_case() -> None:
    goals = _goals(_sitting())
    assert goals["cpu"]["verdict"] == "MISS"
    assert [v["value"] for v in goals["cpu"]["values"]] == [80, 70]
    assert goals["throughput"]["verdict"] == "MISS"
    eos = goals["exactly_once"]
    # 1 partition: 0.9, 0.667, 1.0 -> 0.9; 4 partitions: 0.5.
    assert [round(v["value"], 3) for v in eos["values"]] == [0.9, 0.5]
    assert eos["verdict"] == "MISS"
    assert goals["faststream"]["values"][0]["value"] == pytest.approx(15.0)
    assert goals["faststream"]["verdict"] == "PASS"
    assert goals["memory"]["values"][0]["value"] == 150
    assert goals["memory"]["verdict"] == "PASS"
    assert goals["latency"]["verdict"] == "----"
    assert goals["latency"]["values"] == []


def test_a_latency_below_the_goals_rate_proves_nothing() -> None:
    slow = [_latency("marker-ingest", rep, 2_000, 50) for rep in (1, 2, 3)]
    goals = _goals(_sitting(slow))
    assert goals["latency"]["values"] == [
        {"scope": "at 2,000 msgs/s", "value": 50, "note": "below the goal's rate"}
    ]
    assert goals["latency"]["verdict"] == "----"
    at_rate = [_latency("marker-ingest", rep, 4_000, p99) for rep, p99 in ((1, 80), (2, 200), (3, 90))]
    at_rate += [_latency("marker-ingest-eos", rep, 2_000, p99) for rep, p99 in ((1, 300), (2, 240), (3, INF))]
    goals = _goals(_sitting(at_rate))
    assert goals["latency"]["values"][0]["value"] == 90
    assert goals["latency"]["verdict"] == "PASS"
    assert goals["latency_eos"]["values"][0]["value"] == 300
    assert goals["latency_eos"]["verdict"] == "MISS"


def test_the_text_report() -> None:
    lat = [_latency("marker-ingest", rep, 4_000, p99) for rep, p99 in ((1, 80), (2, 200), (3, 90))]
    meta = {"python": "3.11", "cpus": 2, "broker": "local", "repeat": 3, "latency_seconds": 10,
            "instruments": "confluent-kafka", "load_average": [1.0, 2.0, 3.0]}  # fmt: skip
    text = report.render(_sitting(lat), meta)
    assert "medians of 3 alternating rounds" in text
    assert "skipped confluent: not installed" in text
    assert "drain of 10 messages (0.1 MB, mean 5,500 B): 10% dead letters, 1 input partition\n" in text
    assert "10% dead letters, 4 input partitions" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("marker-ingest ") and "6,000" in ln)
    assert line.split() == [
        "marker-ingest", "6,000", "33.0", "0.60x", "48", "80", "-", "10", "90", "2.0",
        "6,000", "/", "4,500", "/", "6,600",
    ]  # fmt: skip
    assert "80.0 ms / 200.0 ms / 90.0 ms" in text
    assert (
        "MISS  CPU per message, at-least-once <= 75.0 µs: 80.0 µs (10% dead letters, 1 input partition)"
        in text
    )
    assert (
        "PASS  p99 end-to-end, at-least-once, at 4,000 msgs/s <= 100.0 ms: 90.0 ms (at 4,000 msgs/s)" in text
    )
    assert "----  p99 end-to-end, exactly-once, at 2,000 msgs/s <= 250.0 ms: not measured" in text
    # The figures line up under their headings: the row's last column ends where the heading's does.
    width = len(report.columns(report.DRAIN_COLUMNS))
    assert line[:width].endswith(" 2.0")
    assert line[width : width + 2] == "  "


def test_the_profile_budget() -> None:
    run = _drain("marker-ingest", 1, 5_000, 100)
    run.phase = "profile"
    run.profile = {
        "file": "/tmp/p.txt", "rate": 200, "window_s": 2.4, "samples": 480, "other_thread_samples": 3,
        "stage_samples": {"core": 200, "idle: waiting in epoll": 80, "rest": 200},
        "stage_us_per_msg": {"core": 83.3, "idle: waiting in epoll": 33.3, "rest": 83.3},
        "stage_cpu_us_per_msg": {"core": 50.0, "idle: waiting in epoll": 0.0, "rest": 50.0},
        "cpu_us_per_msg": 100.0, "self_pct": [("article_from_values (service/core/validation.py)", 12.5)],
    }  # fmt: skip
    lines = report.render_profile(run, "marker-ingest")
    assert lines[3].split() == ["stage", "samples", "%", "us/msg", "cpu", "us/msg"]
    assert lines[5].split() == ["core", "200", "41.7", "83.3", "50.0"]
    assert "the busy stages' samples come to 166.6 us/msg" in "\n".join(lines)
    assert lines[-1].split() == ["12.5", "article_from_values", "(service/core/validation.py)"]


def test_the_json_document_has_no_infinity() -> None:
    lat = [_latency("marker-ingest", 1, 4_000, INF)]
    doc = report.document(_sitting(lat), {"repeat": 3})
    text = json.dumps(doc, allow_nan=False)
    back = json.loads(text)
    assert back["latency"][0]["latency"]["e2e_ms"]["p99"] is None
    assert back["medians"][1]["impl"] == "marker-ingest"
    assert back["medians"][1]["vs_passthrough"] == pytest.approx(0.6)
    assert {g["key"] for g in back["goals"]} == {g.key for g in report.GOALS}
