"""Readiness without a broker: whether ``/readyz`` answers 200, and the reason when it does not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.ops.readiness import FETCH_SILENCE_SECONDS, SafetyPause, ServiceState, readiness

READY = ServiceState(connected=True, assigned_partitions=2)


def test_connected_with_partitions_is_ready() -> None:
    assert readiness(READY) == (True, {})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"stopping": True}, "stopping"),
        ({"connected": False}, "connecting"),
        ({"fetch_error": "GroupAuthorizationFailedError"}, "fetch_failing"),
        ({"fetch_silent_seconds": FETCH_SILENCE_SECONDS + 0.1}, "fetch_failing"),
        ({"send_error": "events to t not acknowledged for 30s"}, "send_failing"),
        ({"coordinator_error": "committing offsets failed: NotCoordinatorError()"}, "no_group_coordinator"),
        ({"assigned_partitions": 0}, "no_partitions_assigned"),
    ],
)
def test_each_cause_of_not_ready_is_named(change: dict[str, object], reason: str) -> None:
    ready, why = readiness(replace(READY, **change))  # type: ignore[arg-type]
    assert not ready
    assert why["reason"] == reason
    assert why["detail"]


def test_a_failing_send_is_named_before_the_fetch_silence_it_causes() -> None:
    """Events that are not acknowledged stop the loop taking records, and the consumer then stops
    fetching: the silence is the consequence, the send the cause (two brokers of three down)."""
    stalled = replace(READY, send_error="events to t not acknowledged for 10s", fetch_silent_seconds=30.0)
    assert readiness(stalled)[1]["reason"] == "send_failing"
    failing = replace(stalled, fetch_error="GroupAuthorizationFailedError")
    assert readiness(failing)[1]["reason"] == "fetch_failing"


def test_a_refused_login_says_which_setting_to_check() -> None:
    refused = {"cause": "authentication", "setting": "KAFKA_SASL_PASSWORD", "detail": "refused"}
    ready, why = readiness(replace(READY, access_refused=refused, send_error="x"))
    assert (ready, why) == (False, {"reason": "authentication_failed", **refused})


def test_a_tripped_safety_switch_reports_its_window() -> None:
    trip = SafetyPause(
        ratio=0.51234,
        window=200,
        dead_letters=102,
        threshold=0.5,
        paused_seconds=3.04,
        resumes_in_seconds=None,
    )
    ready, why = readiness(replace(READY, safety_pause=trip))
    assert not ready
    assert why == {
        "reason": "safety_switch_tripped",
        "detail": "consumption paused after a flood of dead letters; SIGUSR1 resumes",
        "ratio": 0.5123,
        "window": 200,
        "dead_letters": 102,
        "threshold": 0.5,
        "paused_seconds": 3.0,
        "resumes_in_seconds": None,
    }


def test_stopping_wins_over_every_other_reason() -> None:
    everything = ServiceState(stopping=True, fetch_error="f", send_error="s", coordinator_error="c")
    assert readiness(everything)[1]["reason"] == "stopping"


def test_a_broker_answering_fetches_within_the_silence_limit_keeps_it_ready() -> None:
    assert readiness(replace(READY, fetch_silent_seconds=FETCH_SILENCE_SECONDS - 0.1)) == (True, {})
