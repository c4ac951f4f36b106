"""The running service's watch over its connection (``access.AccessWatch``), with a fake probe.

A refusal found while running makes ``/readyz`` name it and is logged once however often the probe
repeats it; the first probe that succeeds clears it. The secured-broker test of the same behaviour
is ``tests/security/test_rotation.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from service.delivery import access
from service.delivery.access import probe_due
from service.delivery.ingestor import Ingestor
from service.kafka import connection
from service.kafka.failures import Failure, Kind
from service.settings import Settings

REFUSED = Failure(
    Kind.AUTHENTICATION,
    "SASL authentication failed for user 'svc' with SCRAM-SHA-512: invalid credentials",
    "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD",
)
CLOSED = Failure(Kind.REFUSED_CONNECTION, "the broker closed the connection", "KAFKA_SECURITY_PROTOCOL")


@pytest.mark.parametrize(
    ("complained", "reason", "refused", "due"),
    [
        (False, None, False, False),
        (False, "no_partitions_assigned", False, False),
        (False, "safety_switch_tripped", False, False),
        (True, None, False, True),
        (False, "no_group_coordinator", False, True),
        (False, "fetch_failing", False, True),
        (False, "send_failing", False, True),
        (False, "authentication_failed", True, True),
    ],
)
def test_probe_due(complained: bool, reason: str | None, refused: bool, due: bool) -> None:
    assert probe_due(complained, reason, refused=refused) is due


class FakeProbe:
    """Stands for ``service.kafka.connection.diagnose``: answers from a script, then its last answer."""

    def __init__(self, answers: list[tuple[Failure | None, str | None]]) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self, _settings: Settings) -> tuple[Failure | None, str | None]:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def ingestor(monkeypatch: pytest.MonkeyPatch) -> Ingestor:
    monkeypatch.setattr(access, "ACCESS_CHECK_SECONDS", 0.01)
    return Ingestor(Settings(retry_initial_seconds=0.01, retry_max_seconds=0.02))


async def _until(predicate: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_refusal_is_reported_logged_once_and_cleared(
    ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = FakeProbe([(REFUSED, "SaslAuthenticationFailed('invalid credentials')")])
    monkeypatch.setattr(connection, "diagnose", probe)
    with capture_logs() as logs:
        watch = asyncio.create_task(ingestor.access.run())
        await asyncio.sleep(0.05)
        assert probe.calls == 0, "probed without a symptom"
        ingestor.access.library_line("aiokafka")
        await _until(lambda: ingestor.readiness()[1].get("reason") == "authentication_failed")
        ready, why = ingestor.readiness()
        assert not ready
        assert why["cause"] == "authentication"
        assert why["setting"] == "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD"
        assert "SASL authentication failed for user 'svc'" in why["detail"]
        await _until(lambda: probe.calls >= 4)
        probe.answers = [(None, None)]
        await _until(lambda: ingestor.access.failure is None)
        ingestor.request_stop()
        await asyncio.wait_for(watch, 2)
    events = [e["event"] for e in logs]
    assert events.count("kafka.access_refused") == 1
    assert events.count("kafka.access_restored") == 1
    [refused] = [e for e in logs if e["event"] == "kafka.access_refused"]
    assert refused["log_level"] == "error"
    assert refused["setting"] == REFUSED.setting


async def test_an_unreachable_broker_keeps_the_refusal_until_a_probe_succeeds(
    ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = FakeProbe([(REFUSED, "refused"), (None, "ConnectionRefusedError()"), (None, "TimeoutError()")])
    monkeypatch.setattr(connection, "diagnose", probe)
    watch = asyncio.create_task(ingestor.access.run())
    await asyncio.sleep(0.05)
    ingestor.access.library_line("aiokafka")
    await _until(lambda: probe.calls >= 3)
    assert ingestor.readiness()[1]["reason"] == "authentication_failed"
    ingestor.request_stop()
    await asyncio.wait_for(watch, 2)


@pytest.mark.parametrize("between", [(None, None), (None, "ConnectionRefusedError()")])
async def test_a_closed_connection_counts_after_three_probes_in_a_row(
    ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch, between: tuple[Failure | None, str | None]
) -> None:
    probe = FakeProbe([(CLOSED, "closed"), (CLOSED, "closed"), between, (CLOSED, "closed")])
    monkeypatch.setattr(connection, "diagnose", probe)
    seen_at: list[int] = []

    async def complain() -> None:  # the Kafka client logging a warning every few milliseconds
        while True:
            ingestor.access.library_line("aiokafka")
            if ingestor.access.failure is not None and not seen_at:
                seen_at.append(probe.calls)
            await asyncio.sleep(0.002)

    watch = asyncio.create_task(ingestor.access.run())
    complainer = asyncio.create_task(complain())
    await _until(lambda: bool(seen_at))
    complainer.cancel()
    # closed, closed, answered or unreachable (the count starts again), then closed three times
    assert seen_at == [6]
    assert ingestor.readiness()[1]["cause"] == "refused_connection"
    ingestor.request_stop()
    await asyncio.wait_for(watch, 2)
