"""Zipkin: the server's executable jar from Maven Central, run on Java 17, read through its API.

``ensure_jar`` fetches ``io.zipkin:zipkin-server:<version>:exec`` (about 131 MB) with Maven once and
keeps it in the cache the Kafka jars use (``~/.cache/marker-ingest`` or ``$MARKER_INGEST_CACHE``).
``Zipkin`` runs it with in-memory storage on a free loopback port (answering in about 5 to 10 s on
a quiet machine, about 160 MB resident) and reads spans back through ``/api/v2/traces`` and
``/api/v2/trace/{id}``; spans arrive at ``/api/v2/spans`` (Zipkin JSON v2: the SDK's
``opentelemetry-exporter-zipkin-json``). Zipkin's model has no span links, and that exporter drops
them: a test of a batch's links to its records' upstream spans reads them from the OTLP receiver or
Jaeger.

Standard library only: ``python3 -m tests.backends fetch`` (CI's install step) imports it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from service.tools.broker import free_port
from tests.backends.process import BackendUnavailable, Server, answers, http_get, http_json
from tests.kafka.cluster import cache_dir

ZIPKIN_VERSION = "3.5.1"
ARTIFACT = f"io.zipkin:zipkin-server:{ZIPKIN_VERSION}:jar:exec"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# A small heap, the client compiler only and the serial collector: a quicker start and half the
# memory of the defaults, which is all a test needs.
JAVA_OPTIONS = (
    "-Xms32m",
    "-Xmx256m",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
)


def jar_path() -> Path:
    """Where the jar is cached."""
    return cache_dir() / f"zipkin-{ZIPKIN_VERSION}" / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"


def ensure_jar() -> Path:
    """The cached jar; fetched with Maven (checksums enforced) the first time.

    Raises ``BackendUnavailable`` when java or mvn is missing or the download fails.
    """
    if shutil.which("java") is None:
        raise BackendUnavailable("java is not installed (Zipkin needs Java 17 or newer)")
    jar = jar_path()
    if jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BackendUnavailable(f"mvn is not installed, and the Zipkin jar is not cached in {jar}")
    jar.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="fetch.", dir=jar.parent))
    try:
        cmd = [mvn, "-q", "-B", "-C", f"{DEPENDENCY_PLUGIN}:copy", f"-Dartifact={ARTIFACT}"]
        cmd.append(f"-DoutputDirectory={staging}")
        done = subprocess.run(cmd, cwd=staging, capture_output=True, text=True, timeout=900, check=False)
        fetched = staging / jar.name
        if done.returncode != 0 or not fetched.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise BackendUnavailable(f"mvn could not fetch {ARTIFACT}: " + " / ".join(tail))
        fetched.replace(jar)  # atomic: a concurrent fetch of the same jar is harmless
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return jar


class Zipkin(Server):
    """A Zipkin server on 127.0.0.1 with in-memory storage; a context manager that starts and stops it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def spans_endpoint(self) -> str:
        """Where exporters send spans (Zipkin JSON v2)."""
        return f"{self.url}/api/v2/spans"

    def start(self, within: float = 180) -> Zipkin:
        """Start the server and wait until ``/health`` answers."""
        jar = ensure_jar()
        java = shutil.which("java") or "java"
        cmd = [
            java,
            *JAVA_OPTIONS,
            "-jar",
            str(jar),
            # The IP alone would bind a random port: the port and protocol are given with it.
            "--armeria.ports[0].ip=127.0.0.1",
            f"--armeria.ports[0].port={self.port}",
            "--armeria.ports[0].protocols[0]=http",
            "--logging.level.root=WARN",
        ]
        self.launch(
            "zipkin",
            cmd,
            self.workdir / "zipkin.log",
            lambda: answers(f"{self.url}/health"),
            within=within,
            what="/health",
        )
        return self

    # ------------------------------------------------------------------ reading back

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of one trace (Zipkin JSON v2), ``[]`` while Zipkin knows none of them."""
        status, body = http_get(f"{self.url}/api/v2/trace/{trace_id}")
        if status == 404:
            return []
        if status != 200:
            raise BackendUnavailable(f"/api/v2/trace/{trace_id} answered {status}: {body[:300]!r}")
        return list(json.loads(body))

    def traces(
        self,
        *,
        service_name: str | None = None,
        span_name: str | None = None,
        annotation_query: str | None = None,
        lookback_seconds: float = 3600,
        limit: int = 100,
    ) -> list[list[dict[str, Any]]]:
        """Traces matching a search (``/api/v2/traces``): each a list of spans."""
        params: dict[str, str] = {"lookback": str(int(lookback_seconds * 1000)), "limit": str(limit)}
        params["endTs"] = str(int(time.time() * 1000))
        if service_name:
            params["serviceName"] = service_name
        if span_name:
            params["spanName"] = span_name
        if annotation_query:
            params["annotationQuery"] = annotation_query
        traces: list[list[dict[str, Any]]] = http_json(
            f"{self.url}/api/v2/traces?{urllib.parse.urlencode(params)}"
        )
        return traces

    def services(self) -> list[str]:
        """The service names Zipkin has seen."""
        names: list[str] = http_json(f"{self.url}/api/v2/services")
        return names

    def wait_for_trace(self, trace_id: str, *, spans: int = 1, within: float = 30) -> list[dict[str, Any]]:
        """Poll until the trace holds at least ``spans`` spans; return them (``TimeoutError`` otherwise)."""
        deadline = time.monotonic() + within
        while True:
            found = self.trace(trace_id)
            if len(found) >= spans:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"trace {trace_id}: {len(found)} of {spans} spans within {within:g}s")
            time.sleep(0.2)
