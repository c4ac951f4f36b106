"""Stopping on time: the stop request, the grace period, and waits that respect both.

A stop (SIGTERM, SIGINT) sets a deadline ``INGEST_SHUTDOWN_GRACE_SECONDS`` away. Waits for the
broker that must finish before the service stops (acknowledgements, commits, their backoff) end at
that deadline with ``GraceExpired``: a frozen broker answers nothing, and the grace period is a
promise. Other waits (start-up, a backoff before reconnecting) end as soon as the stop is requested.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from service.errors import GraceExpired

T = TypeVar("T")

STOP_MARGIN_SECONDS = 2.0
"""After the grace period, the Kafka clients get this long to stop (leave the group, close)."""


class Grace:
    """The stop request and the grace period that follows it."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._requested = asyncio.Event()
        self._deadline: float | None = None
        self.expired = False
        """Set by whoever cancels the run because the grace period is over (``serve``): the
        cancellation is then the grace period's end, not a clock reading that may come a hair
        early (the event loop fires timers up to its clock resolution ahead)."""

    def request(self) -> bool:
        """Request the stop; True the first time (nothing is logged here: a signal handler calls it,
        and a failing log stream must not keep the service from stopping)."""
        if self._requested.is_set():
            return False
        self._deadline = time.monotonic() + self.grace_seconds
        self._requested.set()
        return True

    @property
    def requested(self) -> bool:
        """True once a stop was requested."""
        return self._requested.is_set()

    async def wait(self) -> None:
        """Return once a stop was requested."""
        await self._requested.wait()

    def remaining(self) -> float | None:
        """Seconds left of the grace period once a stop was requested, else None."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def left(self) -> float:
        """Seconds left of the grace period (the whole of it before a stop is requested)."""
        remaining = self.remaining()
        return self.grace_seconds if remaining is None else remaining

    def stop_budget(self) -> float:
        """How long the clients may take to stop: what is left of the grace period plus
        ``STOP_MARGIN_SECONDS`` once a stop was requested, else the grace period."""
        if self._deadline is None:
            return self.grace_seconds
        return max(0.1, self._deadline + STOP_MARGIN_SECONDS - time.monotonic())

    async def sleep(self, seconds: float, *, before_stop: bool = False) -> None:
        """Sleep. Work that must finish before the service stops (``before_stop``) sleeps at most
        until the end of the grace period, then raises ``GraceExpired``; other sleeps end as soon as
        a stop is requested."""
        if before_stop:
            remaining = self.remaining()
            if remaining is not None:
                if remaining <= 0:
                    raise GraceExpired
                seconds = min(seconds, remaining)
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._requested.wait(), seconds)

    async def within(self, work: Awaitable[T]) -> T:
        """Await ``work``; once a stop was requested, only until the end of the grace period."""
        remaining = self.remaining()
        if remaining is None:
            return await work
        if remaining <= 0:
            if asyncio.iscoroutine(work):
                work.close()
            raise GraceExpired
        try:
            return await asyncio.wait_for(work, remaining)
        except TimeoutError:
            raise GraceExpired from None

    async def unless_stopped(self, work: Awaitable[Any]) -> tuple[bool, Any]:
        """Await ``work``, unless a stop is requested first (then it is cancelled): ``(True, its
        result)`` when it ran to the end, else ``(False, None)``. Start-up waits on the broker (up
        to the request timeout); a stop must not."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False, None
