"""Whether the service should take traffic, and why not: what ``/readyz`` answers, decided by a
pure function over plain data that the shell reads at one moment (no I/O, no Kafka client)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FETCH_SILENCE_SECONDS = 5.0
"""A broker silent this long to the consumer's fetches makes the service not ready."""


@dataclass(frozen=True, slots=True)
class SafetyPause:
    """The safety switch, while it keeps consumption paused."""

    ratio: float
    window: int
    dead_letters: int
    threshold: float
    paused_seconds: float
    resumes_in_seconds: float | None


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What readiness depends on, read from the shell at one moment."""

    stopping: bool = False
    access_refused: dict[str, str] | None = None
    """``cause``, ``setting`` and ``detail`` while the broker refuses the service's credentials."""
    connected: bool = False
    fetch_error: str | None = None
    fetch_silent_seconds: float = 0.0
    """Since the broker last answered a fetch of an assigned, unpaused partition (an idle topic is
    fetched every 50 ms; a frozen broker answers nothing)."""
    send_error: str | None = None
    coordinator_error: str | None = None
    """Why the group coordinator does not answer (a commit failed for it); None while it does."""
    safety_pause: SafetyPause | None = None
    assigned_partitions: int = 0


def readiness(state: ServiceState) -> tuple[bool, dict[str, Any]]:
    """Whether to take traffic: connected, partitions assigned, not paused; else the first reason,
    in this order: stopping, authentication_failed, connecting, fetch_failing (a fetch error),
    send_failing, fetch_failing (the broker silent to fetches), no_group_coordinator,
    safety_switch_tripped, no_partitions_assigned."""
    if state.stopping:
        return False, {"reason": "stopping", "detail": "the service is shutting down"}
    if state.access_refused is not None:
        return False, {"reason": "authentication_failed", **state.access_refused}
    if not state.connected:
        return False, {"reason": "connecting", "detail": "the broker has not answered yet"}
    if state.fetch_error is not None:
        return False, {"reason": "fetch_failing", "detail": state.fetch_error}
    # A send that fails explains a fetch silence (the loop stops taking records while it waits for
    # acknowledgements, and the consumer stops fetching once its buffer is full): the cause first.
    if state.send_error is not None:
        return False, {"reason": "send_failing", "detail": state.send_error}
    if state.fetch_silent_seconds > FETCH_SILENCE_SECONDS:
        return False, {
            "reason": "fetch_failing",
            "detail": f"the broker has answered no fetch for {state.fetch_silent_seconds:.0f}s",
        }
    if state.coordinator_error is not None:
        return False, {"reason": "no_group_coordinator", "detail": state.coordinator_error}
    trip = state.safety_pause
    if trip is not None:
        return False, {
            "reason": "safety_switch_tripped",
            "detail": "consumption paused after a flood of dead letters; SIGUSR1 resumes",
            "ratio": round(trip.ratio, 4),
            "window": trip.window,
            "dead_letters": trip.dead_letters,
            "threshold": trip.threshold,
            "paused_seconds": round(trip.paused_seconds, 1),
            "resumes_in_seconds": None
            if trip.resumes_in_seconds is None
            else round(trip.resumes_in_seconds, 1),
        }
    if state.assigned_partitions == 0:
        return False, {"reason": "no_partitions_assigned", "detail": "waiting for the consumer group"}
    return True, {}
