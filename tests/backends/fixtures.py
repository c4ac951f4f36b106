"""Pytest fixtures for the backends (a plugin: ``tests/conftest.py`` loads it for every suite).

A backend that cannot run here skips its tests with the reason; where CI asks for the real thing
(``MARKER_INGEST_TEST_BROKER=kafka``) Prometheus, promtool and Zipkin fail instead. Jaeger always
skips without a cached binary: CI does not build it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.backends.jaeger import Jaeger, binary
from tests.backends.otlp import OtlpReceiver
from tests.backends.process import BackendUnavailable
from tests.backends.prometheus import Prometheus, tool
from tests.backends.zipkin import Zipkin

StartPrometheus = Callable[..., Prometheus]


def required() -> bool:
    """True where a missing backend is a failure (CI), not a skip."""
    return os.environ.get("MARKER_INGEST_TEST_BROKER") == "kafka"


def unavailable(exc: BackendUnavailable) -> NoReturn:
    """Fail (in CI) or skip the test, with the reason."""
    if required():
        pytest.fail(f"MARKER_INGEST_TEST_BROKER=kafka, but {exc}", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture
def promtool_path() -> str:
    """The ``promtool`` binary."""
    try:
        return tool("promtool")
    except BackendUnavailable as exc:
        unavailable(exc)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    """Starts Prometheus servers (``Prometheus``'s arguments but the work folder); stops them after."""
    started: list[Prometheus] = []

    def start(
        *, targets: list[str], rule_files: list[Path] | None = None, interval: float = 1.0
    ) -> Prometheus:
        try:
            server = Prometheus(
                tmp_path / f"prometheus-{len(started)}",
                targets=targets,
                rule_files=rule_files,
                interval=interval,
            )
            started.append(server)
            return server.start()
        except BackendUnavailable as exc:
            unavailable(exc)

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def zipkin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zipkin]:
    """A Zipkin server for the session (traces are told apart by their ids)."""
    try:
        server = Zipkin(tmp_path_factory.mktemp("zipkin")).start()
    except BackendUnavailable as exc:
        unavailable(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """A Jaeger server for the session, where a built binary is cached; else the test skips (a
    binary that does not start fails it)."""
    try:
        binary()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server = Jaeger(tmp_path_factory.mktemp("jaeger")).start()
    except BackendUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver of the test's own."""
    with OtlpReceiver() as receiver:
        yield receiver
