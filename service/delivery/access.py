"""While running: notice when the broker starts refusing the service (credentials rotated).

The Kafka client only logs a refused reconnect; the service probes its connection as start-up does
once there is a symptom, and names the refusal in ``/readyz`` until a probe succeeds again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from service.delivery.grace import Grace
from service.delivery.retry import Retry
from service.kafka import connection
from service.kafka.clients import Kafka
from service.kafka.failures import Failure, fatal_at_startup
from service.ops.metrics import Metrics

log = structlog.get_logger("marker_ingest")

ACCESS_CHECK_SECONDS = 1.0
"""While running, how often the service looks for signs that the broker refuses its connections."""
TROUBLED = frozenset({"fetch_failing", "send_failing", "no_group_coordinator"})
"""Readiness reasons after which the connection is probed (as are the Kafka client's warnings)."""


def probe_due(client_complained: bool, reason: str | None, *, refused: bool) -> bool:
    """Whether the running service should probe its connection: the Kafka client has logged a
    warning since the last look, ``/readyz`` fails for a broker-side ``reason``, or a refusal is
    already known (to find out when it ends)."""
    return client_complained or refused or reason in TROUBLED


class AccessWatch:
    """Probes the connection when there are symptoms; ``failure`` is the refusal while it lasts.

    ``reason`` answers why the service is not ready (None when it is); ``library_line`` is the hook
    the logs call for each warning of the Kafka client.
    """

    def __init__(
        self, kafka: Kafka, grace: Grace, metrics: Metrics, retry: Retry, reason: Callable[[], str | None]
    ):
        self._kafka, self._grace, self._metrics, self._reason = kafka, grace, metrics, reason
        self._retry = retry
        self.failure: Failure | None = None
        self.library_lines = 0

    def library_line(self, name: str) -> None:
        """A warning or error line of the Kafka client (``name`` is its logger)."""
        self.library_lines += 1
        self._metrics.kafka_client_lines.labels(name).inc()

    async def run(self) -> None:
        """Until a stop: probe on symptoms, with capped backoff while refused.

        A refusal (the password rotated, a certificate expired; a connection closed at once: three
        probes in a row) makes ``/readyz`` answer ``authentication_failed`` and is logged once as
        ``kafka.access_refused``. The probe repeats with capped backoff, and the first one that
        succeeds clears it (``kafka.access_restored``). The clients keep reconnecting on their own
        meanwhile, and nothing is committed that was not acknowledged, so fixing the credentials
        resumes the service without a restart.
        """
        grace, retry = self._grace, self._retry
        seen, closed, since = self.library_lines, 0, 0.0
        delay = ACCESS_CHECK_SECONDS
        while not grace.requested:
            await grace.sleep(delay)
            lines, reason = self.library_lines, self._reason()
            troubled = probe_due(lines != seen, reason, refused=self.failure is not None)
            seen = lines
            if not troubled or grace.requested:
                delay, closed = ACCESS_CHECK_SECONDS, 0
                retry.succeeded()
                continue
            done, diagnosed = await grace.unless_stopped(connection.diagnose(self._kafka))
            if not done:
                return
            failure, cause = diagnosed
            delay = max(ACCESS_CHECK_SECONDS, retry.delay())
            if failure is not None:
                closed += 1
                if not fatal_at_startup(failure, closed):
                    continue
                retry.count()
                previous, self.failure = self.failure, failure
                if previous is None:
                    since = time.monotonic()
                if previous is None or previous.line != failure.line:
                    log.error(
                        "kafka.access_refused",
                        **failure.fields(),
                        error=cause,
                        retry="probed with backoff until the broker accepts the connection again; "
                        "nothing is committed meanwhile",
                    )
                continue
            closed = 0
            if cause is None and self.failure is not None:
                self.failure = None
                log.warning("kafka.access_restored", refused_seconds=round(time.monotonic() - since, 1))
