"""The delivery loop's decisions, as pure functions over plain data (no I/O, no Kafka client).

The loop in ``service.delivery.app`` only does what these say: which sends to hand to the producer again
after a failure (``resend_plan``), and so which offsets may be committed (none of a batch until
every event derived from it is acknowledged); and whether the service is ready, and why not
(``readiness``, what ``/readyz`` answers).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar


class Attempt(Protocol):
    """One event handed to the producer: its input partition and, once it failed, the error."""

    @property
    def tp(self) -> Hashable: ...

    @property
    def error(self) -> BaseException | None: ...


A = TypeVar("A", bound=Attempt)


def resend_plan(pending: Sequence[A]) -> tuple[list[A], A | None]:
    """What to send again after the acknowledgements of ``pending`` (in input order) came back.

    For each input partition with a failed send, everything from its first failure onward is sent
    again, in input order, acknowledged or not: the last copy of every event then keeps the input
    order of its partition (consumers that keep the last copy see the input order). Partitions
    without a failure are left alone. Returns the sends to repeat and the first failure (to log),
    or ``([], None)`` when everything was acknowledged.
    """
    failed_from: dict[Hashable, int] = {}
    for i, attempt in enumerate(pending):
        if attempt.error is not None and attempt.tp not in failed_from:
            failed_from[attempt.tp] = i
    if not failed_from:
        return [], None
    retry = [a for i, a in enumerate(pending) if a.tp in failed_from and i >= failed_from[a.tp]]
    return retry, pending[min(failed_from.values())]


@dataclass(frozen=True, slots=True)
class Trip:
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
    send_error: str | None = None
    coordinator_known: bool = True
    trip: Trip | None = None
    assigned_partitions: int = 0


def readiness(state: ServiceState) -> tuple[bool, dict[str, Any]]:
    """Whether to take traffic: connected, partitions assigned, not paused; else the first reason,
    in this order: stopping, authentication_failed, connecting, fetch_failing, send_failing,
    no_group_coordinator, safety_switch_tripped, no_partitions_assigned."""
    if state.stopping:
        return False, {"reason": "stopping", "detail": "the service is shutting down"}
    if state.access_refused is not None:
        return False, {"reason": "authentication_failed", **state.access_refused}
    if not state.connected:
        return False, {"reason": "connecting", "detail": "the broker has not answered yet"}
    if state.fetch_error is not None:
        return False, {"reason": "fetch_failing", "detail": state.fetch_error}
    if state.send_error is not None:
        return False, {"reason": "send_failing", "detail": state.send_error}
    if not state.coordinator_known:
        return False, {"reason": "no_group_coordinator", "detail": "looking for the group coordinator"}
    trip = state.trip
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
