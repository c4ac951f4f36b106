"""Every security mode end to end (``produce``, ``run``, ``redrive``) against the secured Kafka, and
the wrong-access cases: one line naming the cause and the setting, exit status 2, fast, no traceback.

Everything the commands write (at DEBUG) is searched for the password, and so are the HTTP endpoints
of a running service and its effective-settings line (``--help``: ``tests/unit``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.errors import ExitStatus
from service.tools.broker import free_port
from tests.kafka.security import SecuredKafka
from tests.security.conftest import MODES, mode_env
from tests.support import SERVICE_CMD, Ledger, Topics, get_text, record, service_env

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

CLI = [sys.executable, "-m", "service"]
REDRIVE_KEY = "redrive-key-searched-for-in-every-output"


def _run(args: list[str], env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _clean(text: str, secret: str) -> None:
    assert secret not in text, "a secret appears in the output"
    assert "Traceback" not in text


@pytest.mark.parametrize("mode", MODES)
async def test_every_command_works_in_every_mode(secured: SecuredKafka, mode: str, tmp_path: Path) -> None:
    topics = await Topics.unique(f"sec-{mode}").create(secured.admin_bootstrap)
    env = service_env(
        "unused:1",
        topics,
        idempotence=True,
        INGEST_LOG_LEVEL="DEBUG",
        INGEST_BURST="true",
        INGEST_BURST_IDLE_SECONDS="3",
        INGEST_REDRIVE_KEY=REDRIVE_KEY,
        **mode_env(secured, mode),
    )
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "good.txt").write_text(record(1))
    (feed / "bad.txt").write_text(record(2, date="2024-02-30"))
    outputs = []

    produced = _run(["produce", str(feed)], env)
    outputs.append(produced.stdout + produced.stderr)
    assert produced.returncode == 0, produced.stderr

    ran = _run(["run"], env)
    outputs.append(ran.stdout + ran.stderr)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ledger = await Ledger.read(secured.admin_bootstrap, topics)
    assert len(ledger.articles) == 1
    assert len(ledger.dead_letters) == 1
    dead_letter = next(iter(ledger.dead_letters.values()))[0]

    redriven = _run(["redrive", "--json"], env)
    outputs.append(redriven.stdout + redriven.stderr)
    assert redriven.returncode == 0, redriven.stderr
    assert '"redriven": 1' in redriven.stdout or '"redriven":1' in redriven.stdout

    for text in [*outputs, str(dead_letter)]:
        _clean(text, secured.password)
        _clean(text, REDRIVE_KEY)


def _refusals(kafka: SecuredKafka) -> dict[str, tuple[dict[str, str], str, str]]:
    """Case → (environment, words the line must hold, the setting it must name)."""
    files = kafka.files
    return {
        "bad_password": (
            mode_env(kafka, "sasl_scram512", KAFKA_SASL_PASSWORD="wrong-password"),
            "SASL authentication failed for user 'svc'",
            "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD",
        ),
        "unknown_user": (
            mode_env(kafka, "sasl_plain", KAFKA_SASL_USERNAME="nobody"),
            "SASL authentication failed for user 'nobody'",
            "KAFKA_SASL_PASSWORD",
        ),
        "mechanism_mismatch": (
            mode_env(kafka, "sasl_ssl", KAFKA_SASL_MECHANISM="SCRAM-SHA-512"),
            "does not support SASL mechanism SCRAM-SHA-512",
            "KAFKA_SASL_MECHANISM",
        ),
        "untrusted_ca": (
            mode_env(kafka, "ssl", KAFKA_SSL_CAFILE=str(files.other_ca)),
            "not signed by the CAs in",
            "KAFKA_SSL_CAFILE",
        ),
        "wrong_host": (
            mode_env(kafka, "ssl", KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap("WRONGHOST")),
            "not valid for the address",
            "KAFKA_SSL_CHECK_HOSTNAME",
        ),
        "expired_server_cert": (
            mode_env(kafka, "ssl", KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap("EXPIRED")),
            "certificate is not valid now",
            "KAFKA_SSL_CAFILE",
        ),
        "no_client_cert": (
            mode_env(kafka, "ssl", KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap("MTLS")),
            "requires a client certificate",
            "KAFKA_SSL_CERTFILE",
        ),
        "expired_client_cert": (
            mode_env(
                kafka,
                "mtls",
                KAFKA_SSL_CERTFILE=str(files.expired_client_cert),
                KAFKA_SSL_KEYFILE=str(files.expired_client_key),
            ),
            "refuses the client certificate",
            "KAFKA_SSL_CERTFILE",
        ),
        "plaintext_on_sasl_listener": (
            {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap("SASL")},
            "may require SASL",
            "KAFKA_SECURITY_PROTOCOL",
        ),
        "sasl_on_plaintext_listener": (
            mode_env(kafka, "sasl_plain", KAFKA_BOOTSTRAP_SERVERS=kafka.admin_bootstrap),
            "this listener does not use SASL",
            "KAFKA_SECURITY_PROTOCOL",
        ),
        "tls_on_plaintext_listener": (
            mode_env(kafka, "ssl", KAFKA_BOOTSTRAP_SERVERS=kafka.admin_bootstrap),
            "this listener may not speak TLS",
            "KAFKA_SECURITY_PROTOCOL",
        ),
    }


CASES = [
    "bad_password",
    "unknown_user",
    "mechanism_mismatch",
    "untrusted_ca",
    "wrong_host",
    "expired_server_cert",
    "no_client_cert",
    "expired_client_cert",
    "plaintext_on_sasl_listener",
    "sasl_on_plaintext_listener",
    "tls_on_plaintext_listener",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["produce", "run", "redrive"])
async def test_wrong_access_fails_fast_with_one_line(
    secured: SecuredKafka, case: str, command: str, tmp_path: Path
) -> None:
    sampled = ("bad_password", "untrusted_ca", "expired_client_cert", "sasl_on_plaintext_listener")
    if command != "produce" and case not in (*sampled, "tls_on_plaintext_listener"):
        pytest.skip("every case runs through produce; run and redrive take a sample")
    topics = Topics.unique("sec-refused")
    extra, words, setting = _refusals(secured)[case]
    env = service_env(
        "unused:1",
        topics,
        idempotence=True,
        INGEST_LOG_LEVEL="DEBUG",
        INGEST_REDRIVE_KEY=REDRIVE_KEY,
        **extra,
    )
    (tmp_path / "one.txt").write_text(record(1))
    args = {"produce": ["produce", str(tmp_path)], "run": ["run"], "redrive": ["redrive"]}[command]
    started = time.monotonic()
    done = _run(args, env, timeout=60)
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    _clean(output, secured.password)
    assert done.returncode == ExitStatus.USAGE, output[-2000:]
    assert took < 20, f"{command} took {took:.0f}s to give up"
    lines = [line for line in output.splitlines() if words in line]
    assert len(lines) == 1, output[-2000:]
    assert setting in lines[0]
    if command == "run":
        assert '"kafka.misconfigured"' in lines[0]
        # A connection closed at once is retried twice (it may be a broker shutting down); the rest
        # is final the first time.
        closed = "client_cert" in case or case == "tls_on_plaintext_listener"
        assert output.count("broker.unreachable") == (2 if closed else 0)


async def test_hostname_check_off_is_explicit_and_warned(secured: SecuredKafka, tmp_path: Path) -> None:
    topics = await Topics.unique("sec-nohost").create(secured.admin_bootstrap)
    env = service_env(
        "unused:1",
        topics,
        idempotence=True,
        **mode_env(
            secured,
            "ssl",
            KAFKA_BOOTSTRAP_SERVERS=secured.bootstrap("WRONGHOST"),
            KAFKA_SSL_CHECK_HOSTNAME="false",
        ),
    )
    (tmp_path / "one.txt").write_text(record(1))
    done = _run(["produce", str(tmp_path)], env)
    assert done.returncode == 0, done.stderr
    assert "warning: KAFKA_SSL_CHECK_HOSTNAME=false" in done.stderr
    assert os.environ.get("KAFKA_SSL_CHECK_HOSTNAME") is None


@pytest.mark.parametrize("mode", ["sasl_plain", "sasl_scram512"])
async def test_no_secret_in_the_endpoints_or_the_settings_line(secured: SecuredKafka, mode: str) -> None:
    topics = await Topics.unique(f"sec-http-{mode}").create(secured.admin_bootstrap)
    port = free_port()
    env = service_env(
        "unused:1",
        topics,
        idempotence=True,
        INGEST_LOG_LEVEL="DEBUG",
        INGEST_HTTP_PORT=str(port),
        INGEST_HTTP_HOST="127.0.0.1",
        INGEST_REDRIVE_KEY=REDRIVE_KEY,
        **mode_env(secured, mode),
    )
    proc = subprocess.Popen(SERVICE_CMD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    bodies: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 60
        while get_text(port, "/readyz")[0] != 200:
            assert proc.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "the service did not become ready"
            await asyncio.sleep(0.25)
        for path in ("/metrics", "/readyz", "/healthz", "/nothing"):
            status, bodies[path] = get_text(port, path)
            assert status in (200, 404), path
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output[-3000:]
    assert "marker_ingest_ready 1.0" in bodies["/metrics"]
    starting = [json.loads(line) for line in output.splitlines() if '"service.starting"' in line]
    assert len(starting) == 1
    assert starting[0]["settings"]["kafka_sasl_password"] == "**********"
    assert starting[0]["settings"]["kafka_sasl_username"] == "svc"
    assert starting[0]["settings"]["redrive_key"] == "**********"
    for text in [output, *bodies.values()]:
        _clean(text, secured.password)
        _clean(text, REDRIVE_KEY)
