"""At-least-once delivery's decision after a failed send, as a pure function over plain data.

``resend_plan`` says which sends to hand to the producer again after a failure, in input order, and
so which offsets may be committed: none of a batch until every event derived from it is
acknowledged (``service.delivery.modes.at_least_once`` does what it says).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, TypeVar


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
