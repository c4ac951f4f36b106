"""The benchmark's arithmetic and option parsing (scripts/bench/stats.py, impls.py, run.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench.impls import EXACTLY_ONCE, parse_variant  # noqa: E402
from bench.run import parse_rates  # noqa: E402
from bench.stats import INF, median, median_ratio, percentiles, ratio  # noqa: E402


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100, shuffled order must not matter
    got = percentiles(list(reversed(values)))
    assert got == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    thousand = percentiles([float(v) for v in range(1, 1001)])
    assert thousand["p99"] == 990.0
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7.0}


def test_missing_events_count_as_infinitely_late() -> None:
    got = percentiles([float(v) for v in range(1, 99)], missing=2)  # 98 arrived of 100
    assert got["p50"] == 50.0
    assert got["p99"] == INF
    assert got["max"] == INF
    assert percentiles([], missing=0) == {"p50": None, "p90": None, "p99": None, "max": None}
    assert percentiles([], missing=3)["p50"] == INF


def test_median_leaves_out_unknowns() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0]) == 2.5
    assert median([None, None]) is None
    assert median([]) is None
    assert median([1.0, INF, INF]) == INF


def test_ratios() -> None:
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None
    assert ratio(3.0, 0.0) is None
    # Per round first, then the median: a round where both sides were slow stays a fair pair.
    assert median_ratio([(50.0, 100.0), (80.0, 100.0), (10.0, 40.0)]) == 0.5
    assert median_ratio([(None, 100.0)]) is None


def test_latency_rates() -> None:
    assert parse_rates(None) == (None, {})
    assert parse_rates("4000") == (4000.0, {})
    assert parse_rates("4000,marker-ingest-eos=2000") == (4000.0, {"marker-ingest-eos": 2000.0})
    assert parse_rates("passthrough=8000") == (None, {"passthrough": 8000.0})
    with pytest.raises(ValueError, match="positive"):
        parse_rates("0")
    with pytest.raises(ValueError, match="could not convert"):
        parse_rates("fast")


def test_variants() -> None:
    off = parse_variant("tracing-off:INGEST_TRACING=false")
    assert (off.name, off.kind, off.env, off.service_path) == (
        "tracing-off",
        "marker-ingest",
        (("INGEST_TRACING", "false"),),
        None,
    )
    eos = parse_variant("eos-big:INGEST_DELIVERY=exactly-once, INGEST_BATCH_MAX_MESSAGES=2000")
    assert eos.transactional
    assert eos.env == (EXACTLY_ONCE, ("INGEST_BATCH_MAX_MESSAGES", "2000"))
    before = parse_variant("before@/tmp/mi-old")
    assert before.service_path == Path("/tmp/mi-old")
    assert before.env == ()
    assert not before.transactional
    assert parse_variant("url:KAFKA_X=a=b:c").env == (("KAFKA_X", "a=b:c"),)


@pytest.mark.parametrize("spec", ["", ":INGEST_X=1", "name:INGEST_X", "name@:INGEST_X=1", "name:=1"])
def test_a_malformed_variant_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--variant"):
        parse_variant(spec)
