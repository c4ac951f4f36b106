"""Jaeger (OTLP native), run only where a built binary is cached; read back through its API v3.

Building ``github.com/jaegertracing/jaeger/cmd/jaeger`` takes about 9 minutes and 3 GB of Go caches,
so nothing builds it on its own (CI does not): ``python -m tests.backends build-jaeger`` does it once
(``go get -tool`` in a module of its own, then ``go build``, under ``nice``) and caches the binary
beside the Kafka jars; ``MARKER_INGEST_JAEGER`` names a binary of your own instead. Without one,
``binary`` raises ``BackendUnavailable`` and the tests that need Jaeger skip, saying so.

``Jaeger`` runs it with a configuration file that binds every port to loopback (its defaults listen
on all interfaces): the OTLP receivers (HTTP and gRPC), the query service (HTTP: ``/api/v3``; gRPC),
in-memory storage, and no telemetry of its own.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

from service.tools.broker import accepts_connections, free_port
from tests.backends.otlp import Span, decode_json
from tests.backends.process import BackendUnavailable, Server, answers, http_get
from tests.kafka.cluster import cache_dir

JAEGER_VERSION = "v1.75.0"
PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"


def cached_binary() -> Path:
    """Where ``build`` puts the binary."""
    return cache_dir() / f"jaeger-{JAEGER_VERSION}" / "jaeger"


def binary() -> Path:
    """The Jaeger binary to run: ``MARKER_INGEST_JAEGER`` or the cached build.

    Raises ``BackendUnavailable`` (with how to build it) when there is none.
    """
    given = os.environ.get("MARKER_INGEST_JAEGER")
    path = Path(given) if given else cached_binary()
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if given:
        raise BackendUnavailable(f"MARKER_INGEST_JAEGER={given} is not an executable file")
    raise BackendUnavailable(
        f"no Jaeger {JAEGER_VERSION} binary cached in {path}; build it once with "
        "`python -m tests.backends build-jaeger` (about 9 minutes and 3 GB of Go caches)"
    )


def build() -> Path:
    """Build the binary with Go (niced) in a module of its own and cache it; returns its path."""
    go = shutil.which("go")
    if go is None:
        raise BackendUnavailable("go is not installed: Jaeger cannot be built")
    target = cached_binary()
    module = target.parent / "module"
    module.mkdir(parents=True, exist_ok=True)
    nice = [shutil.which("nice") or "nice", "-n", "19"]
    steps = []
    if not (module / "go.mod").exists():
        steps.append([go, "mod", "init", "marker-ingest/jaeger"])
    steps.append([*nice, go, "get", "-tool", f"{PACKAGE}@{JAEGER_VERSION}"])
    steps.append([*nice, go, "build", "-trimpath", "-o", str(target.with_suffix(".tmp")), PACKAGE])
    for cmd in steps:
        done = subprocess.run(cmd, cwd=module, capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-10:]
            raise BackendUnavailable(f"{' '.join(cmd[-3:])} failed:\n" + "\n".join(tail))
    target.with_suffix(".tmp").replace(target)
    return target


def _config(otlp_http: int, otlp_grpc: int, query_http: int, query_grpc: int) -> str:
    return f"""\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp_http}
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class Jaeger(Server):
    """A Jaeger server on 127.0.0.1 with in-memory storage; a context manager that starts and stops it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.otlp_http_port, self.otlp_grpc_port = free_port(), free_port()
        self.query_port, self.query_grpc_port = free_port(), free_port()
        self.otlp_endpoint = f"http://127.0.0.1:{self.otlp_http_port}"
        """OTLP/HTTP base URL (``OTEL_EXPORTER_OTLP_ENDPOINT``); traces go to ``/v1/traces``."""
        self.otlp_grpc_endpoint = f"http://127.0.0.1:{self.otlp_grpc_port}"
        """OTLP/gRPC endpoint."""
        self.url = f"http://127.0.0.1:{self.query_port}"
        """The query service (UI and ``/api/v3``)."""

    def start(self, within: float = 60) -> Jaeger:
        """Start the server and wait until its query service and OTLP receiver answer."""
        path = binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "jaeger.yaml"
        config.write_text(
            _config(self.otlp_http_port, self.otlp_grpc_port, self.query_port, self.query_grpc_port)
        )
        cmd = [str(path), "--config", f"file:{config}"]
        self.launch(
            "jaeger",
            cmd,
            self.workdir / "jaeger.log",
            lambda: answers(f"{self.url}/api/v3/services") and accepts_connections(self.otlp_http_port),
            within=within,
            what="the query service and the OTLP receiver",
        )
        return self

    # ------------------------------------------------------------------ reading back (API v3)

    def _get(self, path: str) -> dict[str, Any] | None:
        """GET an API v3 path: its JSON, or None on 404 (Jaeger's "no traces found")."""
        status, body = http_get(f"{self.url}{path}")
        if status == 404:
            return None
        if status != 200:
            raise BackendUnavailable(f"{path} answered {status}: {body[:300]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace (``tests.backends.otlp.Span``), ``[]`` while Jaeger has none."""
        answer = self._get(f"/api/v3/traces/{trace_id}")
        return [] if answer is None else decode_json(answer["result"])

    def traces(
        self, service_name: str, *, lookback_seconds: float = 3600, limit: int = 100
    ) -> dict[str, list[Span]]:
        """The traces with spans of ``service_name`` started in the lookback: spans by trace id."""
        now = datetime.datetime.now(datetime.UTC)
        params = {
            "query.service_name": service_name,
            "query.start_time_min": (now - datetime.timedelta(seconds=lookback_seconds)).isoformat(),
            "query.start_time_max": (now + datetime.timedelta(seconds=60)).isoformat(),
            "query.num_traces": str(limit),
        }
        answer = self._get(f"/api/v3/traces?{urllib.parse.urlencode(params)}")
        by_trace: dict[str, list[Span]] = defaultdict(list)
        for span in [] if answer is None else decode_json(answer["result"]):
            by_trace[span.trace_id].append(span)
        return dict(by_trace)

    def services(self) -> list[str]:
        """The service names Jaeger has seen."""
        answer = self._get("/api/v3/services") or {}
        return list(answer.get("services", []))

    def wait_for_trace(self, trace_id: str, *, spans: int = 1, within: float = 30) -> list[Span]:
        """Poll until the trace holds at least ``spans`` spans; return them (``TimeoutError`` otherwise)."""
        deadline = time.monotonic() + within
        while True:
            found = self.trace(trace_id)
            if len(found) >= spans:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"trace {trace_id}: {len(found)} of {spans} spans within {within:g}s")
            time.sleep(0.2)
