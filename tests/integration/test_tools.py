"""The demo and the operator tools as a user runs them: piped output, bad paths, no broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.tools.broker import free_port
from tests.support import record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_the_demo_with_piped_output_exits_0_without_colour_codes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "demo", "--verbose"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=200,
        check=False,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "\x1b[" not in out + err, "ANSI colour codes in output that is not a terminal"
    assert "article event(s) on demo.news.articles" in out
    assert "dead letter(s) on demo.news.dead-letters" in out
    assert "service.started" in err, "--verbose shows the service's log lines"


def test_the_demo_with_a_folder_of_nothing_to_push_exits_2(tmp_path: Path) -> None:
    (tmp_path / "feed" / ".hidden").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "service", "demo", str(tmp_path / "feed")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        f"marker-ingest demo: nothing to push under {tmp_path / 'feed'} (no files; hidden ones are skipped)\n"
    )
    assert proc.stdout == b"", "no broker is started for nothing"


@pytest.mark.parametrize("command", [["produce", "PATH"], ["redrive"], ["demo", "PATH"]])
def test_an_unreachable_broker_is_one_line_without_a_traceback_or_unclosed_clients(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "1.txt").write_text(record(1), encoding="utf-8")
    argv = [str(tmp_path) if arg == "PATH" else arg for arg in command]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "service", *argv, "--bootstrap-servers", f"127.0.0.1:{free_port()}"],
        env=dict(env, KAFKA_REQUEST_TIMEOUT_MS="3000", INGEST_REDRIVE_KEY="k" * 32),
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "Unclosed" not in err
    ours = [line for line in err.splitlines() if line.startswith("marker-ingest")]
    assert len(ours) == 1, err
    assert "KafkaConnectionError" in ours[0]
    if command[0] == "demo":  # the Kafka client's own line is not repeated before the demo's
        assert err == ours[0] + "\n"
