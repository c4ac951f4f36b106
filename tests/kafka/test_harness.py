"""The test broker harness itself (``tests/kafka``): what made it flaky, and how it is run."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CHOICE
from tests.kafka.cluster import (
    PORT_FLOOR,
    VERSION_ENV,
    KafkaUnavailable,
    ensure_jars,
    ephemeral_ports,
    find_class,
    free_port,
    kafka_version,
    new_cluster_id,
    pinned_version,
)

ROOT = Path(__file__).resolve().parents[2]


def _b64(value: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(value.bytes).decode().rstrip("=")


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """One random UUID in 64 encodes to an id starting with ``-``, which ``StorageTool format -t``
    reads as an option (about one CI run in a dozen failed for it); Kafka's ``Uuid.randomUuid()``
    draws again, as do the two ids it reserves."""
    dash = uuid.UUID(bytes=b"\xf8" + bytes(15))
    assert _b64(dash).startswith("-")
    good = uuid.UUID(bytes=b"\x10" * 16)
    drawn = iter([dash, uuid.UUID(int=0), uuid.UUID(int=1), good])
    assert new_cluster_id(lambda: next(drawn)) == _b64(good)


def test_random_cluster_ids_are_distinct_and_safe() -> None:
    ids = [new_cluster_id() for _ in range(5000)]  # plain base64: ~78 start with "-"
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22}
    assert len(set(ids)) == len(ids)


def test_listener_ports_are_distinct_and_out_of_the_way_of_outgoing_connections() -> None:
    """A port from ``bind(0)`` lies in the ephemeral range, where any outgoing connection may take it
    before the JVM binds it; the harness picks below it, and never hands a port out twice."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    ephemeral = ephemeral_ports()
    if ephemeral.start - PORT_FLOOR > 1000:
        assert all(PORT_FLOOR <= p < ephemeral.start for p in ports), ephemeral


def test_the_version_is_the_environments_else_the_poms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VERSION_ENV, raising=False)
    assert kafka_version() == pinned_version()
    monkeypatch.setenv(VERSION_ENV, " 3.9.1 ")
    assert kafka_version() == "3.9.1"
    monkeypatch.setenv(VERSION_ENV, "4.1")
    with pytest.raises(KafkaUnavailable, match=f"{VERSION_ENV}: '4.1' is not a Kafka release"):
        kafka_version()


def test_a_tool_is_found_where_this_version_keeps_it(tmp_path: Path) -> None:
    """``ConfigCommand`` left ``kafka.admin`` (core) for ``org.apache.kafka.tools`` (kafka-tools) in 4.4."""
    candidates = ("org.apache.kafka.tools.ConfigCommand", "kafka.admin.ConfigCommand")
    with zipfile.ZipFile(tmp_path / "kafka_2.13-4.1.1.jar", "w") as jar:
        jar.writestr("kafka/admin/ConfigCommand.class", b"")
    assert find_class(tmp_path, *candidates) == "kafka.admin.ConfigCommand"
    with zipfile.ZipFile(tmp_path / "kafka-tools-4.4.0.jar", "w") as jar:
        jar.writestr("org/apache/kafka/tools/ConfigCommand.class", b"")
    assert find_class(tmp_path, *candidates) == "org.apache.kafka.tools.ConfigCommand"
    with pytest.raises(KafkaUnavailable, match=r"none of kafka\.tools\.Nothing"):
        find_class(tmp_path, "kafka.tools.Nothing")


def test_the_command_runs_from_anywhere_by_path(tmp_path: Path) -> None:
    """``python -m tests.kafka`` needs the checkout's root as the working directory; the folder's
    path works from anywhere (here a directory outside the checkout)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kafka"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--kafka-version" in done.stdout


def test_a_wrong_version_is_one_line_naming_the_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.kafka", "--kafka-version", "4.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "cannot start Apache Kafka: --kafka-version: '4.1' is not a Kafka release such as 4.1.1"
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie still answers kill(pid, 0)
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def _wait(condition: object, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return bool(condition())  # type: ignore[operator]


@pytest.fixture
def java_kafka() -> None:
    """Skips (or, with ``MARKER_INGEST_TEST_BROKER=kafka``, fails) where Apache Kafka cannot run."""
    if CHOICE == "tansu":
        pytest.skip("needs Apache Kafka; MARKER_INGEST_TEST_BROKER=tansu")
    try:
        ensure_jars()
    except KafkaUnavailable as exc:
        if CHOICE == "kafka":
            pytest.fail(f"MARKER_INGEST_TEST_BROKER=kafka, but Apache Kafka cannot run: {exc}")
        pytest.skip(f"needs Apache Kafka, which cannot run here: {exc}")


SCRIPT = """
import signal, sys
from pathlib import Path
from tests.kafka.cluster import KafkaCluster
cluster = KafkaCluster(Path(sys.argv[1])).start()
print(*(node.pid for node in cluster.nodes), flush=True)
signal.pause()
"""


@pytest.mark.timeout(420)
def test_sigterm_to_the_test_process_stops_its_brokers(tmp_path: Path, java_kafka: None) -> None:
    """The nodes run in sessions of their own, so they outlive their Python process unless it stops
    them; a SIGTERM (a CI timeout, ``kill``) used to end it at once and leave them running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the script prints once its node is up (or dies)
        assert line.strip(), f"the node did not start: {proc.communicate(timeout=60)[1][-3000:]}"
        pids = [int(p) for p in line.split()]
        assert pids
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        assert _wait(lambda: not any(_alive(p) for p in pids), within=60), f"left running: {pids}"
    finally:
        proc.kill()
        proc.communicate(timeout=60)  # and closes the pipes
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
