"""The shipped alerts in a real Prometheus scraping a running service: a dead-letter flood fires the
dead-letter alert and trips the safety switch, which fires its own; SIGUSR1 and good records resolve
both. A stop that cannot finish fires the stop alert, which outlives the process. The rules are
deploy/prometheus/alerts.yml with only their ``for:`` windows shortened."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from service.tools.broker import free_port
from tests.backends.fixtures import StartPrometheus
from tests.backends.prometheus import RULES, Prometheus, shortened
from tests.conftest import BrokerHandle
from tests.faults.harness import ServiceProcess, wait_until
from tests.support import Topics, feed, get_text, produce, service_env

pytestmark = [pytest.mark.integration, pytest.mark.backends, pytest.mark.timeout(300)]

FLOOD = 60
"""Flood messages, nine in ten of them dead letters: enough to trip the safety switch below."""


def _flood() -> list[bytes]:
    bad, good = feed(FLOOD, bad_every=1), feed(FLOOD, start_fn=10_000)
    return [good[i] if i % 10 == 0 else bad[i] for i in range(FLOOD)]


def _value(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


async def _state(prometheus: Prometheus, name: str, state: str, within: float) -> None:
    await asyncio.to_thread(prometheus.wait_for, name, state, within=within)


async def test_a_dead_letter_flood_fires_alerts_that_resolve_after_it(
    broker: BrokerHandle, start_prometheus: StartPrometheus, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("alerts").create(bootstrap, **broker.topic_kwargs)
    port = free_port()
    env = service_env(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        INGEST_HTTP_PORT=str(port),
        INGEST_HTTP_HOST="127.0.0.1",
        INGEST_SAFETY_DLQ_RATIO="0.5",
        INGEST_SAFETY_WINDOW_RECORDS="100",
        INGEST_SAFETY_MIN_RECORDS="50",
        INGEST_SAFETY_COOLDOWN_SECONDS="0",
        INGEST_BATCH_MAX_MESSAGES="20",
    )
    svc = ServiceProcess(env, tmp_path / "service.log").start()
    try:

        async def ready() -> bool:
            assert svc.alive, svc.tail()
            return (await asyncio.to_thread(get_text, port, "/readyz"))[0] == 200

        await wait_until(ready, within=90, what="/readyz 200", detail=svc.tail)

        rules = tmp_path / "alerts.yml"
        rules.write_text(shortened(RULES.read_text(), 60))
        since = time.time()
        prometheus = await asyncio.to_thread(
            start_prometheus, targets=[f"127.0.0.1:{port}"], rule_files=[rules]
        )

        # Scraped at least twice before the flood, so that its counters' increase is in the windows.
        async def scraped_twice() -> bool:
            expr = "count_over_time(marker_ingest_input_records_total[1m])"
            return (await asyncio.to_thread(_value, prometheus, expr) or 0) >= 2

        await wait_until(scraped_twice, within=60, what="two scrapes of the service")

        await produce(bootstrap, topics.input, _flood())
        await svc.wait_for("safety.tripped", within=60)
        await _state(prometheus, "MarkerIngestSafetySwitchTripped", "firing", within=60)
        await _state(prometheus, "MarkerIngestDeadLetterRate", "firing", within=90)
        for name in ("MarkerIngestSafetySwitchTripped", "MarkerIngestDeadLetterRate"):
            history = prometheus.alert_history(name, since)
            assert history.get("pending"), (name, history)
            assert history["pending"][0] < history["firing"][0], (name, history)
        [alert] = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "MarkerIngestDeadLetterRate"]
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["job"] == "marker-ingest"
        assert float(alert["value"]) > 0.5, "nine in ten records were dead letters"
        assert alert["annotations"]["runbook_url"] == "docs/operations.md#markeringestdeadletterrate"
        ratio = _value(prometheus, "job:marker_ingest_dead_letter_ratio:rate5m")
        assert ratio is not None
        assert ratio > 0.5

        # Resumed, the safety alert resolves; good records dilute the dead letters of the last
        # 10 minutes under 5 %, and the dead-letter alert resolves too.
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGUSR1)
        await svc.wait_for("safety.resumed", within=30)
        await _state(prometheus, "MarkerIngestSafetySwitchTripped", "inactive", within=60)
        await produce(bootstrap, topics.input, feed(25 * FLOOD, start_fn=20_000))
        await _state(prometheus, "MarkerIngestDeadLetterRate", "inactive", within=120)
        records = _value(prometheus, "marker_ingest_input_records_total")
        dead_letters = _value(prometheus, "sum(marker_ingest_dead_letters_total)")
        assert records is not None
        assert dead_letters is not None
        assert dead_letters == FLOOD - FLOOD // 10, "the flood's dead letters, every one counted"
        assert dead_letters / records <= 0.05, "resolved once good records diluted them under 5 %"

        # Paused means not ready, but the safety alert is the one that pages; and a service that
        # works through its input is not stalled (pending for a scrape at most: the first batch is
        # fetched, the lag seen, before any message is counted).
        for name in ("MarkerIngestNotReady", "MarkerIngestConsumerStalled"):
            assert "firing" not in prometheus.alert_history(name, since), name

        svc.terminate()
        assert await svc.wait_exit(within=40) == 0, svc.tail()
    finally:
        svc.kill()


@pytest.mark.kafka
@pytest.mark.timeout(420)
async def test_a_stop_that_cannot_finish_fires_an_alert_that_outlives_the_process(
    broker: BrokerHandle, start_prometheus: StartPrometheus, tmp_path: Path
) -> None:
    """A broker of its own, frozen (SIGSTOP) while a backlog is worked through; then SIGTERM: the
    stop cannot finish, the service exits 1 with ``stop.grace_expired``. Prometheus saw the stop use
    its grace period (``marker_ingest_stop_grace_used_ratio``) before the process went, and
    MarkerIngestStopStuck fires after it is gone; MarkerIngestDown too."""
    from tests.kafka.cluster import KafkaCluster

    grace = 8.0
    with KafkaCluster(tmp_path / "kafka") as own:
        bootstrap = own.bootstrap_servers
        topics = await Topics.unique("alert-stop").create(bootstrap)
        await produce(bootstrap, topics.input, feed(20000, body_bytes=400))
        port = free_port()
        env = service_env(
            bootstrap,
            topics,
            idempotence=True,
            INGEST_HTTP_PORT=str(port),
            INGEST_HTTP_HOST="127.0.0.1",
            INGEST_SHUTDOWN_GRACE_SECONDS=str(grace),
            INGEST_BATCH_MAX_MESSAGES="50",
        )
        rules = tmp_path / "alerts.yml"
        rules.write_text(shortened(RULES.read_text(), 60))
        svc = ServiceProcess(env, tmp_path / "service.log").start()
        try:
            since = time.time()
            prometheus = await asyncio.to_thread(
                start_prometheus, targets=[f"127.0.0.1:{port}"], rule_files=[rules]
            )
            await wait_until(lambda: svc.count("record") >= 500, within=90, interval=0.05, detail=svc.tail)
            # The service drains the backlog in a few seconds: hold it mid-stream (SIGSTOP) while the
            # broker is frozen under it, so what it has read can be neither acknowledged nor committed.
            svc.pause()
            own.nodes[0].pause()
            svc.resume()
            try:
                await wait_until(lambda: asyncio.to_thread(prometheus.targets_up), within=30, what="a scrape")
                assert _value(prometheus, "marker_ingest_stop_grace_used_ratio") == 0, "running: no stop"
                svc.terminate()
                assert await svc.wait_exit(within=grace + 15) == 1, svc.tail()
            finally:
                own.nodes[0].resume()
            assert svc.count("stop.grace_expired") == 1, svc.tail()

            # Down fires once the target has not answered for its window (5m / 60): by then the stop
            # is only in the range the alert looks back on, and it still fires.
            await _state(prometheus, "MarkerIngestDown", "firing", within=60)
            assert _value(prometheus, "up") == 0
            assert prometheus.alert_state("MarkerIngestStopStuck") == "firing"
            history = prometheus.alert_history("MarkerIngestStopStuck", since)
            assert history.get("pending"), history
            [alert] = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "MarkerIngestStopStuck"]
            assert float(alert["value"]) > 0.5, "the largest share of the grace period a scrape saw"
        finally:
            svc.kill()
