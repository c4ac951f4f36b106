"""Credentials rotated while the service runs, against the secured Kafka.

The service (a separate process) consumes as a SCRAM-SHA-512 user on the REAUTH listener, whose
sessions last ``REAUTH_MS``: aiokafka does not re-authenticate (KIP-368), so the broker closes its
connections at expiry and every reconnect after the password was changed is refused. Then: nothing
is committed past what was acknowledged, ``/readyz`` names authentication and the settings to check,
the service does not spin (its log lines and the broker's failed authentications over 10 s are
counted), it keeps running, and restoring the password resumes it without a restart.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import threading
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.tools.broker import free_port
from tests.faults.harness import wait_until
from tests.kafka.security import PREFIX, REAUTH_MS, SecuredKafka
from tests.support import (
    SERVICE_CMD,
    Ledger,
    Topics,
    expected_outcomes,
    feed,
    get_text,
    produce,
    service_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

USER = "rotating"
WINDOW_SECONDS = 10.0


async def _committed(kafka: SecuredKafka, topics: Topics) -> int | None:
    """The group's committed offset of the input partition (read as the super user)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.admin_bootstrap)
    await admin.start()
    try:
        for attempt in range(20):
            try:
                offsets = await admin.list_consumer_group_offsets(topics.group)
                break
            except KafkaError:  # the coordinator is still loading on a fresh node
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(topics.input, 0))
    return None if meta is None else int(meta.offset)


async def _delivered_prefix(kafka: SecuredKafka, topics: Topics) -> int:
    """How many input offsets, from 0 on, have their event in the output topics (read as the super user)."""
    ledger = await Ledger.read(kafka.admin_bootstrap, topics)
    done = {offset for partition, offset, _ in [*ledger.articles, *ledger.dead_letters] if partition == 0}
    n = 0
    while n in done:
        n += 1
    return n


def _failed_authentications(kafka: SecuredKafka) -> int:
    """How many connections the broker has refused for bad credentials (its log, INFO level)."""
    text = kafka.cluster.nodes[0].log_path.read_text(errors="replace")
    return text.count("Failed authentication with")


async def test_a_password_rotated_while_running_blocks_reports_and_resumes(secured: SecuredKafka) -> None:
    old, new = "rot-" + secrets.token_urlsafe(12), "new-" + secrets.token_urlsafe(12)
    await asyncio.to_thread(secured.set_scram_password, USER, old)
    for resource in ("topic", "group"):
        await secured.grant(f"User:{USER}", resource, PREFIX, ["all"], pattern="prefixed")
    topics = await Topics.unique("sec-rotate").create(secured.admin_bootstrap)
    sent = await produce(secured.admin_bootstrap, topics.input, feed(4))
    port = free_port()
    env = service_env(
        secured.bootstrap("REAUTH"),
        topics,
        idempotence=True,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME=USER,
        KAFKA_SASL_PASSWORD=old,
        INGEST_HTTP_PORT=str(port),
        INGEST_HTTP_HOST="127.0.0.1",
        INGEST_RETRY_INITIAL_SECONDS="0.2",
        INGEST_RETRY_MAX_SECONDS="2",
    )
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(  # noqa: ASYNC220 - the service under test, read by a thread
        SERVICE_CMD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    stream = proc.stdout
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in stream), daemon=True
    )
    reader.start()
    try:

        async def committed_is(n: int) -> bool:
            return await _committed(secured, topics) == n

        async def ready() -> bool:  # the coordinator may be re-found after a session expiry
            return get_text(port, "/readyz")[0] == 200

        await wait_until(lambda: committed_is(4), within=60, what="the first four messages to be committed")
        await wait_until(ready, within=30, what="/readyz to answer 200")

        await asyncio.to_thread(secured.set_scram_password, USER, new)

        async def refused() -> bool:
            return '"authentication_failed"' in get_text(port, "/readyz")[1]

        # The connections expire within REAUTH_MS; the reconnect is refused and probed.
        await wait_until(
            refused, within=REAUTH_MS / 1000 + 30, what="/readyz to report authentication_failed"
        )
        status, body = get_text(port, "/readyz")
        why = json.loads(body)
        assert status == 503
        assert why["cause"] == "authentication"
        assert "KAFKA_SASL_PASSWORD" in why["setting"]
        assert f"SASL authentication failed for user '{USER}'" in why["detail"]
        # Fed while refused: a connection that has not expired yet may still carry some of these
        # through, which is fine; what may never happen is a commit ahead of the events.
        sent += await produce(secured.admin_bootstrap, topics.input, feed(3, start_fn=100))

        # No spin: count over 10 s what the service writes and how often the broker refuses it.
        start, attempts_before = time.monotonic(), _failed_authentications(secured)
        await asyncio.sleep(WINDOW_SECONDS)
        attempts = _failed_authentications(secured) - attempts_before
        logged = [line for at, line in lines if start <= at < start + WINDOW_SECONDS]
        assert proc.poll() is None, "the service exited on refused credentials"
        assert len(logged) <= 25, f"{len(logged)} log lines in {WINDOW_SECONDS:g}s:\n" + "".join(logged)
        # aiokafka reconnects on its own every ~0.3 s; a busy loop would be thousands.
        # aiokafka's consumer and producer reconnect on their own, each every ~0.3 s (retry_backoff_ms,
        # 100 ms, plus the SCRAM exchange): ~60 in 10 s. A busy loop would be thousands.
        assert 0 < attempts <= 100, f"{attempts} refused connections in {WINDOW_SECONDS:g}s"
        committed = await _committed(secured, topics)
        delivered = await _delivered_prefix(secured, topics)
        assert committed is not None
        assert 4 <= committed <= delivered, (
            f"committed {committed}, but only offsets below {delivered} have their events"
        )
        print(f"in {WINDOW_SECONDS:g}s: {len(logged)} log lines, {attempts} refused connections")
        metrics = get_text(port, "/metrics")[1]
        assert "marker_ingest_ready 0.0" in metrics

        await asyncio.to_thread(secured.set_scram_password, USER, old)

        async def resumed() -> bool:
            return await ready() and await committed_is(7)

        await wait_until(resumed, within=60, what="the service to resume once the password is restored")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        stream.close()
        print("".join(line for _, line in lines[-60:]))
    output = "".join(line for _, line in lines)
    for secret in (old, new):
        assert secret not in output + metrics + body
    assert "Traceback" not in output
    events = [json.loads(line).get("event") for _, line in lines if line.startswith("{")]
    assert events.count("kafka.access_refused") == 1, output[-3000:]
    assert events.count("kafka.access_restored") == 1, output[-3000:]
    ledger = await Ledger.read(secured.admin_bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=False)
