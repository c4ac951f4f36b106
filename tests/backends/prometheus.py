"""A real Prometheus server, and ``promtool``, from Debian's ``prometheus`` package (2.42).

``Prometheus`` runs the server by hand on a free loopback port with its own data folder, scraping
the given targets every second and evaluating the given rule files every second; its HTTP API
(``/api/v1/alerts``, ``/api/v1/rules``, ``/api/v1/query``...) is what the tests read. Nothing of the
package's own service is used (CI installs it so that no service starts: see ``.ci/run``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from service.tools.broker import free_port
from tests.backends.process import BackendUnavailable, Server, answers, http_json

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"
"""The shipped rules."""

INSTALL_HINT = (
    "install Debian's prometheus package (apt-get install --no-install-recommends prometheus; "
    "see .ci/run) or put prometheus and promtool on PATH"
)

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; ``BackendUnavailable`` when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise BackendUnavailable(f"{name} is not installed: {INSTALL_HINT}")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` with ``args`` (not checked: the caller reads the status and output)."""
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def duration_seconds(text: str) -> float:
    """A Prometheus duration (``1h30m``, ``10m``, ``500ms``) in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def shortened(rules_text: str, factor: float) -> str:
    """The rules with every alert's ``for:`` divided by ``factor`` (at least 1 s); the expressions,
    labels and annotations unchanged. For a test that cannot wait minutes."""
    doc = yaml.safe_load(rules_text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, round(duration_seconds(rule['for']) / factor))}s"
    return str(yaml.safe_dump(doc, sort_keys=False))


class Prometheus(Server):
    """A Prometheus server on 127.0.0.1; a context manager that starts and stops it.

    ``targets`` are ``host:port`` addresses scraped (``/metrics``) as job ``job`` every
    ``interval`` seconds, which is also the rule evaluation interval.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        targets: list[str],
        rule_files: list[Path] | None = None,
        job: str = "marker-ingest",
        interval: float = 1.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.targets = targets
        self.rule_files = list(rule_files or [])
        self.job = job
        self.interval = interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        every = f"{max(1, round(self.interval * 1000))}ms"
        return {
            "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }

    def start(self, within: float = 60) -> Prometheus:
        """Write the configuration, start the server and wait until it is ready."""
        binary = tool("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        checked = promtool("check", "config", str(config))
        if checked.returncode != 0:
            raise BackendUnavailable(f"promtool check config failed:\n{checked.stdout}{checked.stderr}")
        cmd = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]
        self.launch(
            "prometheus",
            cmd,
            self.workdir / "prometheus.log",
            lambda: answers(f"{self.url}/-/ready"),
            within=within,
            what="/-/ready",
        )
        return self

    # ------------------------------------------------------------------ the HTTP API

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``: its ``data`` (``BackendUnavailable`` unless the status is success)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = http_json(f"{self.url}/api/v1/{path}{query}")
        if answer.get("status") != "success":
            raise BackendUnavailable(f"/api/v1/{path}: {answer}")
        return answer["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """The pending and firing alerts (``/api/v1/alerts``)."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def alert_state(self, name: str) -> str:
        """``firing``, ``pending`` or ``inactive``: the state of alert ``name`` (the most advanced of
        its instances)."""
        states = {a["state"] for a in self.alerts() if a["labels"].get("alertname") == name}
        return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group, with its state and health (``/api/v1/rules``)."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """A range query's result matrix (``start`` and ``end`` in Unix seconds)."""
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )["result"]
        return result

    def alert_history(self, name: str, since: float) -> dict[str, list[float]]:
        """When alert ``name`` was pending and firing since ``since`` (Unix seconds), from the
        ``ALERTS`` series Prometheus writes: state → the evaluation times (1 s steps) it was in it."""
        # One step past now, so that the latest evaluation is in (each step reads the sample before it).
        series = self.query_range(f'ALERTS{{alertname="{name}"}}', since, time.time() + 1, step=1.0)
        history: dict[str, list[float]] = {}
        for s in series:
            history.setdefault(s["metric"]["alertstate"], []).extend(float(ts) for ts, _ in s["values"])
        return {state: sorted(times) for state, times in history.items()}

    def targets_up(self) -> bool:
        """True when every target's latest scrape succeeded."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for(self, name: str, state: str, *, within: float) -> float:
        """Wait until alert ``name`` is in ``state`` (``pending``, ``firing`` or ``inactive``); the
        time.time() it was seen. ``TimeoutError`` with the alerts at the end otherwise."""
        deadline = time.monotonic() + within
        while True:
            if self.alert_state(name) == state:
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not {state} within {within:g}s; alerts: {self.alerts()}")
            time.sleep(0.25)
