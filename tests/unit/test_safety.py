"""The safety switch's pure logic: the sliding window, the latch, the cool-down; and its settings."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.ops.safety import DeadLetterWindow, SafetyPolicy, SafetySwitch
from service.settings import Settings


def _policy(**overrides: float) -> SafetyPolicy:
    values: dict[str, float] = {
        "threshold": 0.5,
        "window_records": 10,
        "min_records": 4,
        "cooldown_seconds": 30,
    }
    values.update(overrides)
    return SafetyPolicy(
        threshold=values["threshold"],
        window_records=int(values["window_records"]),
        min_records=int(values["min_records"]),
        cooldown_seconds=values["cooldown_seconds"],
    )


def test_the_window_keeps_only_the_latest_records() -> None:
    window = DeadLetterWindow(5)
    window.add(3, 3)
    assert (window.records, window.dead_letters, window.ratio) == (3, 3, 1.0)
    window.add(4, 0)  # pushes out two of the three dead letters
    assert (window.records, window.dead_letters) == (5, 1)
    assert window.ratio == pytest.approx(0.2)
    window.add(1, 0)
    assert (window.records, window.dead_letters) == (5, 0)


def test_a_message_larger_than_the_window_fills_it_with_its_latest_records() -> None:
    window = DeadLetterWindow(4)
    window.add(10, 3)  # articles first, then the dead letters
    assert (window.records, window.dead_letters) == (4, 3)


def test_an_empty_window_has_a_ratio_of_zero_and_clear_empties_it() -> None:
    window = DeadLetterWindow(3)
    assert window.ratio == 0.0
    window.add(2, 1)
    window.clear()
    assert (window.records, window.dead_letters, window.ratio) == (0, 0, 0.0)


@pytest.mark.parametrize(("records", "dead"), [(1, 2), (0, -1), (-1, 0)])
def test_the_window_refuses_impossible_counts(records: int, dead: int) -> None:
    with pytest.raises(ValueError, match="dead letters"):
        DeadLetterWindow(3).add(records, dead)


@given(
    size=st.integers(1, 40),
    messages=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=60),
)
def test_the_window_agrees_with_a_record_by_record_model(size: int, messages: list[tuple[int, int]]) -> None:
    window = DeadLetterWindow(size)
    model: deque[bool] = deque(maxlen=size)
    for articles, dead in messages:
        window.add(articles + dead, dead)
        model.extend([False] * articles + [True] * dead)
        assert window.records == len(model)
        assert window.dead_letters == sum(model)


def test_the_switch_does_not_trip_below_the_minimum_number_of_records() -> None:
    switch = SafetySwitch(_policy(min_records=4))
    assert switch.observe(3, 3) is None
    assert switch.tripped is None
    trip = switch.observe(1, 1)
    assert trip is not None
    assert (trip.records, trip.dead_letters, trip.ratio, trip.threshold) == (4, 4, 1.0, 0.5)


def test_the_switch_trips_when_the_ratio_reaches_the_threshold_and_stays_tripped() -> None:
    switch = SafetySwitch(_policy(threshold=0.5, min_records=4))
    assert switch.observe(3, 1) is None  # 1/3, below the minimum anyway
    assert switch.observe(1, 0) is None  # 1/4
    trip = switch.observe(2, 2)  # 3/6 = 0.5 reaches it
    assert trip is not None
    assert trip.ratio == 0.5
    assert switch.observe(10, 0) is None, "a latch: it reports the trip once"
    assert switch.tripped == trip


def test_the_cool_down_counts_from_the_pause_and_resume_resets_the_window() -> None:
    switch = SafetySwitch(_policy(cooldown_seconds=30))
    switch.observe(5, 5)
    assert switch.tripped is not None
    assert not switch.resume_due(1000.0), "tripped but not paused yet"
    assert switch.resumes_in(1000.0) is None
    switch.engage(100.0)
    switch.engage(110.0)  # engaging again keeps the first pause
    assert switch.resumes_in(110.0) == 20.0
    assert not switch.resume_due(129.9)
    assert switch.resume_due(130.0)
    trip = switch.resume()
    assert trip is not None
    assert trip.dead_letters == 5
    assert (switch.tripped, switch.paused_since, switch.window.records) == (None, None, 0)
    assert switch.observe(3, 3) is None, "the window starts again from empty"


def test_a_cool_down_of_zero_waits_for_the_signal() -> None:
    switch = SafetySwitch(_policy(cooldown_seconds=0))
    switch.observe(10, 10)
    switch.engage(0.0)
    assert not switch.resume_due(10**9)
    assert switch.resumes_in(10**9) is None
    assert switch.resume() is not None


def test_engaging_an_untripped_switch_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        SafetySwitch(_policy()).engage(0.0)


def test_resuming_an_untripped_switch_returns_nothing() -> None:
    assert SafetySwitch(_policy()).resume() is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"min_records": 11},
        {"min_records": 0},
        {"cooldown_seconds": -1},
    ],
)
def test_the_policy_refuses_nonsense(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        _policy(**overrides)


def test_the_switch_is_off_by_default_and_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().safety_dlq_ratio is None
    monkeypatch.setenv("INGEST_SAFETY_DLQ_RATIO", "0.25")
    monkeypatch.setenv("INGEST_SAFETY_WINDOW_RECORDS", "200")
    monkeypatch.setenv("INGEST_SAFETY_MIN_RECORDS", "50")
    monkeypatch.setenv("INGEST_SAFETY_COOLDOWN_SECONDS", "0")
    s = Settings()
    assert (s.safety_dlq_ratio, s.safety_window_records, s.safety_min_records) == (0.25, 200, 50)
    assert s.safety_cooldown_seconds == 0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"safety_dlq_ratio": 0}, "safety_dlq_ratio"),
        ({"safety_dlq_ratio": 1.01}, "safety_dlq_ratio"),
        ({"safety_cooldown_seconds": -1}, "safety_cooldown_seconds"),
        ({"safety_window_records": 50, "safety_min_records": 100}, "INGEST_SAFETY_MIN_RECORDS"),
    ],
)
def test_invalid_safety_settings_fail_at_start_up(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**values)  # type: ignore[arg-type]
    assert needle.lower() in str(info.value).lower()
