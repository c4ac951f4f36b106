"""The one way the shell retries: capped exponential backoff with jitter, a retry counted in the
metrics by its cause, one log line per retry, and a sleep the grace period has its say over.

Every loop that retries (the fetch, start-up, the access watch, sends, commits, transactions, the
transactional producers' start) holds a ``Retry`` and calls ``after`` when an attempt failed and
``succeeded`` when one went through; the loop decides only whether to try again (aiokafka's sender
has the same shape: one retry template, each handler only says its backoff).
"""

from __future__ import annotations

import random
from typing import Any

import structlog

from service.delivery.grace import Grace
from service.ops.metrics import Metrics

log = structlog.get_logger("marker_ingest")


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next_delay(self) -> float:
        """The next sleep, in seconds; grows until the cap."""
        ceiling = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


class Retry:
    """One retrying loop's backoff, metric and log line.

    ``cause`` is the label of ``marker_ingest_retries`` (send, commit, fetch, connect). Work that
    must finish before the service stops (``before_stop``: acknowledgements, commits) sleeps at
    most to the end of the grace period and then raises ``GraceExpired``; other sleeps end as soon
    as a stop is requested.
    """

    def __init__(
        self,
        grace: Grace,
        metrics: Metrics,
        cause: str,
        backoff: tuple[float, float],
        *,
        before_stop: bool = False,
    ) -> None:
        self._grace, self._counter = grace, metrics.retries[cause]
        self._backoff = Backoff(*backoff)
        self._before_stop = before_stop

    @property
    def attempt(self) -> int:
        """Retries since the last success."""
        return self._backoff.attempt

    def succeeded(self) -> None:
        """An attempt went through: the next failure starts the backoff over."""
        self._backoff.attempt = 0

    def delay(self) -> float:
        """The next delay of the backoff, for a caller that waits in its own way."""
        return self._backoff.next_delay()

    def count(self) -> None:
        """Count a retry in ``marker_ingest_retries``."""
        self._counter.inc()

    async def after(self, event: str | None, *, level: str = "warning", **fields: Any) -> float:
        """An attempt failed: count the retry, log ``event`` (with ``retry_in`` and ``attempt``;
        None logs nothing, for a caller that logs in its own way) and sleep; returns the delay."""
        self.count()
        delay = self.delay()
        if event is not None:
            getattr(log, level)(event, **fields, retry_in=round(delay, 2), attempt=self.attempt)
        await self._grace.sleep(delay, before_stop=self._before_stop)
        return delay


class Retries:
    """Makes the ``Retry`` of each loop with the settings' backoff (``INGEST_RETRY_*_SECONDS``)."""

    def __init__(self, grace: Grace, metrics: Metrics, backoff: tuple[float, float]) -> None:
        self.grace, self.metrics, self.backoff = grace, metrics, backoff

    def new(self, cause: str, *, before_stop: bool = False) -> Retry:
        """A fresh ``Retry`` counted under ``cause``."""
        return Retry(self.grace, self.metrics, cause, self.backoff, before_stop=before_stop)
