"""A real Prometheus (Debian's package) scrapes a service's metrics registry and evaluates the shipped
rules (their ``for:`` windows shortened): an alert goes pending, fires and resolves through its API.
No broker: the metrics are served from the test (the service itself: tests/integration/test_alerts.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from service.ops.metrics import Metrics
from tests.backends.fixtures import StartPrometheus
from tests.backends.process import listening_addresses
from tests.backends.prometheus import RULES, Prometheus, shortened

pytestmark = [pytest.mark.backends, pytest.mark.timeout(180)]


class Served:
    """A ``Metrics`` registry served over HTTP, its gauges set by the test."""

    def __init__(self) -> None:
        self.paused = 1.0
        self.ready = 0.0
        self.metrics = Metrics("0.0.0")
        self.metrics.watch(
            in_flight=lambda: 0, paused=lambda: self.paused, assigned=lambda: 1, ready=lambda: self.ready
        )
        self.httpd, self._thread = start_http_server(0, addr="127.0.0.1", registry=self.metrics.registry)
        self.target = f"127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


@pytest.fixture
def served() -> Iterator[Served]:
    server = Served()
    try:
        yield server
    finally:
        server.close()


def _wait_rules_evaluated(prometheus: Prometheus, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        rules = prometheus.rules()
        if rules and all(r["health"] == "ok" for r in rules):
            return
        bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not any(health == "err" for _, health, _ in bad), bad
        assert time.monotonic() < deadline, f"rules not evaluated within {within}s: {bad}"
        time.sleep(0.25)


def test_prometheus_fires_and_resolves_a_shipped_alert(
    start_prometheus: StartPrometheus, served: Served, tmp_path: Path
) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text(shortened(RULES.read_text(), 30))
    since = time.time()
    prometheus = start_prometheus(targets=[served.target], rule_files=[rules])
    assert prometheus.process is not None
    assert prometheus.process.pid is not None
    assert listening_addresses(prometheus.process.pid) == [("127.0.0.1", prometheus.port)]

    # Every shipped rule evaluates without error against what the service exposes.
    _wait_rules_evaluated(prometheus)

    # Paused (the safety switch tripped): pending for its window (1m / 30), then firing.
    prometheus.wait_for("MarkerIngestSafetySwitchTripped", "firing", within=60)
    [alert] = [
        a for a in prometheus.alerts() if a["labels"]["alertname"] == "MarkerIngestSafetySwitchTripped"
    ]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["instance"] == served.target
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#markeringestsafetyswitchtripped"
    history = prometheus.alert_history("MarkerIngestSafetySwitchTripped", since)
    assert history["pending"], history
    assert history["pending"][0] < history["firing"][0], history
    # Not ready too, but a paused instance does not page twice.
    assert prometheus.alert_history("MarkerIngestNotReady", since) == {}

    # Resumed but still not ready: the one resolves, the other takes over.
    served.paused = 0.0
    prometheus.wait_for("MarkerIngestSafetySwitchTripped", "inactive", within=60)
    prometheus.wait_for("MarkerIngestNotReady", "firing", within=60)
    served.ready = 1.0
    prometheus.wait_for("MarkerIngestNotReady", "inactive", within=60)
