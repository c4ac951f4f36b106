"""The metrics (own registry, names, tallies); no I/O."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.errors import ErrorCode
from service.ops.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_instance_has_its_own_registry() -> None:
    a, b = Metrics("1.0"), Metrics("1.0")
    a.count_batch(messages=3, payload_bytes=30, records=4, dead_letters={})
    assert _samples(a)[("marker_ingest_input_messages_total", ())] == 3
    assert _samples(b)[("marker_ingest_input_messages_total", ())] == 0


def test_a_batch_is_counted_from_its_tallies() -> None:
    m = Metrics("1.2.3")
    m.count_batch(
        messages=5,
        payload_bytes=1234,
        records=7,
        dead_letters={ErrorCode.INVALID_FIELD: 2, ErrorCode.EMPTY_PAYLOAD: 1},
    )
    s = _samples(m)
    assert s[("marker_ingest_input_messages_total", ())] == 5
    assert s[("marker_ingest_input_bytes_total", ())] == 1234
    assert s[("marker_ingest_input_records_total", ())] == 7
    assert s[("marker_ingest_articles_total", ())] == 4
    assert s[("marker_ingest_dead_letters_total", (("code", "invalid_field"),))] == 2
    assert s[("marker_ingest_dead_letters_total", (("code", "empty_payload"),))] == 1
    assert s[("marker_ingest_batch_messages_count", ())] == 1
    assert s[("marker_ingest_batch_messages_sum", ())] == 5
    assert s[("marker_ingest_build_info", (("version", "1.2.3"),))] == 1


def test_every_error_code_and_retry_cause_is_exposed_from_the_start() -> None:
    s = _samples(Metrics("1"))
    for code in ErrorCode:
        assert s[("marker_ingest_dead_letters_total", (("code", code.value),))] == 0
    for cause in ("send", "commit", "fetch", "connect"):
        assert s[("marker_ingest_retries_total", (("cause", cause),))] == 0


def test_metric_names_carry_the_prefix_and_units() -> None:
    names = {f.name for f in text_string_to_metric_families(Metrics("1").render().decode())}
    assert all(n.startswith("marker_ingest_") for n in names), names
    assert {
        "marker_ingest_batch_duration_seconds",
        "marker_ingest_end_to_end_latency_seconds",
        "marker_ingest_in_flight_bytes",
        "marker_ingest_input_bytes",
        "marker_ingest_commits",
        "marker_ingest_commit_failures",
        "marker_ingest_paused",
        "marker_ingest_assigned_partitions",
    } <= names


def test_end_to_end_latency_skips_messages_without_a_timestamp() -> None:
    m = Metrics("1")
    m.observe_end_to_end([1_000, None, -1, 0, 2_500], now=3.0)
    s = _samples(m)
    assert s[("marker_ingest_end_to_end_latency_seconds_count", ())] == 2
    assert s[("marker_ingest_end_to_end_latency_seconds_sum", ())] == pytest.approx(2.0 + 0.5)


def test_gauges_read_the_state_they_watch_when_scraped() -> None:
    m = Metrics("1")
    state = {"in_flight": 10.0, "paused": 0.0}
    m.watch(in_flight=lambda: state["in_flight"], paused=lambda: state["paused"], assigned=lambda: 3)
    state.update(in_flight=2048.0, paused=1.0)
    s = _samples(m)
    assert s[("marker_ingest_in_flight_bytes", ())] == 2048
    assert s[("marker_ingest_paused", ())] == 1
    assert s[("marker_ingest_assigned_partitions", ())] == 3


def test_lag_is_per_partition_and_lost_partitions_are_dropped() -> None:
    m = Metrics("1")
    m.set_lag("in", 0, 5)
    m.set_lag("in", 1, -2)  # a stale high watermark never shows as negative lag
    m.set_lag("in", 0, 4)
    s = _samples(m)
    assert s[("marker_ingest_consumer_lag_messages", (("partition", "0"), ("topic", "in")))] == 4
    assert s[("marker_ingest_consumer_lag_messages", (("partition", "1"), ("topic", "in")))] == 0
    m.keep_partitions([("in", 1)])
    s = _samples(m)
    assert ("marker_ingest_consumer_lag_messages", (("partition", "0"), ("topic", "in"))) not in s
    assert ("marker_ingest_consumer_lag_messages", (("partition", "1"), ("topic", "in"))) in s


def test_the_stop_gauge_shows_how_much_of_the_grace_period_a_stop_has_used() -> None:
    m = Metrics("1.0")
    left: list[float | None] = [None]
    m.watch(
        in_flight=lambda: 0,
        paused=lambda: 0,
        assigned=lambda: 0,
        stop_remaining=lambda: left[0],
        grace_seconds=20,
    )
    assert _samples(m)[("marker_ingest_stop_grace_used_ratio", ())] == 0, "running: no stop in progress"
    left[0] = 15.0
    assert _samples(m)[("marker_ingest_stop_grace_used_ratio", ())] == 0.25
    left[0] = -1.0
    assert _samples(m)[("marker_ingest_stop_grace_used_ratio", ())] == 1.05, "past the deadline"
