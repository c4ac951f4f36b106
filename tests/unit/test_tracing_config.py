"""Tracing's switch and configuration (``service.ops.tracing``, ``service.ops.otel``): off unless
``OTEL_TRACES_EXPORTER`` is set, with no SDK imported; without the SDK the command refuses to start
in one line naming the extra; the exporters, resource, sampler and limits the ``OTEL_*`` variables
ask for."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.errors import ExitStatus, TracingUnavailable, UsageError
from service.ops import otel
from service.ops.otel import exporter_names, load_exporter, tracer_from_environment
from service.ops.tracing import EXTRA, Upstream, start_tracing, tracing_requested

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: none of the service's or the SDK's variables but ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_", "OTEL_"))}
    env.update(extra)
    return env


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- off: no SDK --------------------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "  "}, {"OTEL_TRACES_EXPORTER": ""}])
def test_without_an_exporter_tracing_is_off(environ: dict[str, str]) -> None:
    assert tracing_requested(environ) is False
    assert start_tracing(environ, max_links=10) is None


def test_tracing_off_imports_no_opentelemetry_module() -> None:
    done = _python(
        """
        import sys
        import service.cli, service.delivery.app, service.delivery.ingestor, service.delivery.pipeline
        import service.delivery.tracing, service.ops.tracing, service.tools.redrive
        from service.ops.tracing import start_tracing
        assert start_tracing({}, max_links=10) is None
        print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_the_seam_refuses_in_one_line_naming_the_extra_without_the_sdk() -> None:
    done = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the tracing extra were not installed
        from service.errors import TracingUnavailable
        from service.ops.tracing import start_tracing
        try:
            start_tracing({"OTEL_TRACES_EXPORTER": "otlp"}, max_links=10)
        except TracingUnavailable as exc:
            print(exc.exit_status)
            print(exc)
        else:
            print("no error")
        """
    )
    assert done.returncode == 0, done.stderr
    status, line = done.stdout.splitlines()
    assert status == "2"
    assert EXTRA == "marker-ingest[tracing]"
    assert "marker-ingest[tracing]" in line
    assert "OTEL_TRACES_EXPORTER" in line


def test_run_without_the_sdk_exits_2_with_one_line_before_connecting() -> None:
    # Nothing listens on port 1: had the service tried to connect, it would fail differently.
    done = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None
        from service.cli import main
        raise SystemExit(main(["run"]))
        """,
        OTEL_TRACES_EXPORTER="otlp",
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("marker-ingest: OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK")
    assert "pip install 'marker-ingest[tracing]'" in line
    assert "Traceback" not in done.stderr


def test_tracing_unavailable_is_a_usage_error() -> None:
    exc = TracingUnavailable("x")
    assert isinstance(exc, UsageError)
    assert exc.exit_status == 2
    assert exc.exit_status == ExitStatus.USAGE


# --- exporters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": " otlp "}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ["otlp_proto_http"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            ["otlp_proto_grpc"],
        ),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": " none "}, []),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "zipkin_json, console"}, ["zipkin_json", "console"]),
    ],
    ids=[
        "otlp-http-by-default",
        "spaces",
        "general-grpc",
        "general-http",
        "traces-http-wins",
        "traces-grpc-wins",
        "none",
        "none-spaces",
        "two",
        "two-spaced",
    ],
)
def test_exporter_names(environ: dict[str, str], names: list[str]) -> None:
    assert exporter_names(environ) == names


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "none,otlp"}, "'none' stands alone"),
        ({"OTEL_TRACES_EXPORTER": "otlp,none"}, "'none' stands alone"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=thrift",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=thrift",
        ),
    ],
    ids=["none-first", "none-last", "general-protocol", "traces-protocol"],
)
def test_invalid_exporter_settings_are_refused(environ: dict[str, str], named: str) -> None:
    with pytest.raises(TracingUnavailable) as caught:
        exporter_names(environ)
    assert named in str(caught.value)
    assert caught.value.exit_status == 2


def test_the_otlp_http_exporter_is_loaded_by_its_entry_point_name() -> None:
    exporter = load_exporter("otlp_proto_http")
    try:
        assert isinstance(exporter, OTLPSpanExporter)
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def test_a_missing_grpc_exporter_names_its_package() -> None:
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None:
        pytest.skip("opentelemetry-exporter-otlp-proto-grpc is installed here: nothing is missing")
    with pytest.raises(TracingUnavailable) as caught:
        load_exporter("otlp_proto_grpc")
    assert "pip install opentelemetry-exporter-otlp-proto-grpc" in str(caught.value)
    assert "'otlp_proto_grpc'" in str(caught.value)


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(TracingUnavailable) as caught:
        load_exporter("nope")
    line = str(caught.value)
    assert line.startswith("OTEL_TRACES_EXPORTER: no trace exporter named 'nope' is installed")
    assert EXTRA in line
    assert "\n" not in line


def test_start_tracing_refuses_an_unknown_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "nope")
    with pytest.raises(TracingUnavailable, match="'nope'"):
        start_tracing(os.environ, max_links=10)


# --- the provider the variables describe ---------------------------------------------------------------


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``OTEL_*`` variable but ``OTEL_TRACES_EXPORTER=none`` (a provider without exporters: no
    thread, no connection). The SDK reads ``os.environ`` itself: tests set variables there."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    return monkeypatch


def _with_memory(tracer: otel.OtelTracer) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    tracer.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_the_service_name_defaults_to_marker_ingest(otel_env: pytest.MonkeyPatch) -> None:
    tracer = tracer_from_environment(os.environ, max_links=10)
    try:
        attributes = tracer.provider.resource.attributes
        assert attributes["service.name"] == "marker-ingest"
        assert attributes["service.version"]
    finally:
        tracer.provider.shutdown()


def test_otel_service_name_names_the_service(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_SERVICE_NAME", "ingest-eu-1")
    tracer = tracer_from_environment(os.environ, max_links=10)
    try:
        assert tracer.provider.resource.attributes["service.name"] == "ingest-eu-1"
    finally:
        tracer.provider.shutdown()


def test_a_zero_ratio_sampler_makes_process_spans_non_recording(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracer = tracer_from_environment(os.environ, max_links=10)
    exporter = _with_memory(tracer)
    try:
        span = tracer.process("news.raw", 0, "g")
        assert span.recording is False
        assert span.traceparent.endswith("-00")
        span.end(0, 0, 1)
        assert exporter.get_finished_spans() == ()
    finally:
        tracer.provider.shutdown()


def test_by_default_process_spans_are_recorded(otel_env: pytest.MonkeyPatch) -> None:
    tracer = tracer_from_environment(os.environ, max_links=10)
    exporter = _with_memory(tracer)
    try:
        span = tracer.process("news.raw", 0, "g")
        assert span.recording is True
        assert span.traceparent.endswith("-01")
        span.end(0, 0, 1)
        assert len(exporter.get_finished_spans()) == 1
    finally:
        tracer.provider.shutdown()


def _links_kept(tracer: otel.OtelTracer, added: int) -> int:
    exporter = _with_memory(tracer)
    span = tracer.process("news.raw", 0, "g")
    for i in range(added):
        span.link(Upstream(i + 1, i + 1, True))
    span.end(0, 0, added)
    [finished] = exporter.get_finished_spans()
    return len(finished.links)


def test_max_links_caps_the_links_of_a_process_span(otel_env: pytest.MonkeyPatch) -> None:
    tracer = tracer_from_environment(os.environ, max_links=3)
    try:
        assert _links_kept(tracer, 5) == 3
    finally:
        tracer.provider.shutdown()


def test_otel_span_link_count_limit_overrides_max_links(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "4")
    tracer = tracer_from_environment(os.environ, max_links=2)
    try:
        assert _links_kept(tracer, 6) == 4
    finally:
        tracer.provider.shutdown()


def test_the_events_of_a_process_span_are_not_capped_below_its_links(otel_env: pytest.MonkeyPatch) -> None:
    tracer = tracer_from_environment(os.environ, max_links=300)
    exporter = _with_memory(tracer)
    try:
        span = tracer.process("news.raw", 0, "g")
        for i in range(300):
            span.dead_letter("no_markers", i, 0)
        span.end(0, 299, 300)
        [finished] = exporter.get_finished_spans()
        assert len(finished.events) == 300, "the SDK's default is 128"
    finally:
        tracer.provider.shutdown()


def test_an_exporter_gets_a_counting_batch_processor(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    tracer = tracer_from_environment(os.environ, max_links=10)
    try:
        processors = tracer.provider._active_span_processor._span_processors
        assert [type(p) for p in processors] == [otel.CountingProcessor]
    finally:
        tracer.provider.shutdown()


def test_an_export_queue_smaller_than_its_batch_is_refused_as_a_usage_error(
    otel_env: pytest.MonkeyPatch,
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100")
    with pytest.raises(TracingUnavailable, match="OTEL_BSP_"):
        tracer_from_environment(os.environ, max_links=10)


class _Slow(SpanExporter):
    """An exporter that holds every export until ``release`` (a collector that does not answer)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.names: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        self.names.extend(span.name for span in spans)
        return SpanExportResult.SUCCESS


def test_shutdown_exports_what_is_queued(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    tracer = tracer_from_environment(os.environ, max_links=10)
    slow = _Slow()
    slow.release.set()
    tracer.provider.add_span_processor(otel.CountingProcessor(slow, tracer))
    tracer.process("news.raw", 0, "g").end(0, 0, 1)
    assert slow.names == [], "queued, not exported yet"
    tracer.shutdown(30.0)
    assert slow.names == ["process news.raw"]


def test_shutdown_gives_up_on_an_export_that_does_not_end(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    tracer = tracer_from_environment(os.environ, max_links=10)
    slow = _Slow()
    tracer.provider.add_span_processor(otel.CountingProcessor(slow, tracer))
    tracer.process("news.raw", 0, "g").end(0, 0, 1)
    started = time.monotonic()
    try:
        tracer.shutdown(0.2)
        assert time.monotonic() - started < 10, "the export holds for 30 s: shutdown must not wait"
        assert slow.names == []
    finally:
        slow.release.set()
