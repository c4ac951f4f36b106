"""The canonical per-record log line of ``marker-ingest run`` (JSON mode), against a real broker."""

from __future__ import annotations

import asyncio
import re
import subprocess

import orjson
import pytest

from tests.conftest import BrokerHandle
from tests.support import SERVICE_CMD, Topics, expected_outcomes, feed, mixed_feed, produce, service_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


async def test_one_record_line_per_record_with_its_fields_written_before_its_commit(
    broker: BrokerHandle,
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("logs").create(bootstrap, partitions=2)
    values = [*feed(90, bad_every=9), *(v for v in mixed_feed().values() if v is not None)]
    sent = await produce(bootstrap, topics.input, values, partitions=2)
    expected = expected_outcomes(sent, topics.input)
    env = service_env(
        bootstrap,
        topics,
        idempotence=broker.idempotence,
        INGEST_BURST="true",
        INGEST_LOG_LEVEL="DEBUG",
        INGEST_BATCH_MAX_MESSAGES="20",
    )

    run = await asyncio.to_thread(subprocess.run, SERVICE_CMD, env=env, capture_output=True, timeout=180)

    assert run.returncode == 0, run.stderr.decode()[-3000:]
    lines = [orjson.loads(line) for line in run.stderr.splitlines() if line.startswith(b"{")]
    records = [e for e in lines if e["event"] == "record"]
    seen = {(e["partition"], e["offset"], e["record_index"]): e for e in records}
    assert len(records) == len(seen) == len(expected)
    for (partition, offset, index), code in expected.items():
        e = seen[(partition, offset, index)]
        assert e["topic"] == topics.input
        assert e["level"] == "info"
        assert ISO_UTC.fullmatch(e["timestamp"]), e["timestamp"]
        assert e["event_id"] == f"{topics.input}:{partition}:{offset}:{index}"
        assert e["outcome"] == ("article" if code is None else "dead_letter")
        assert e["error_code"] == code

    # The log keeps the order of events: a batch's record lines come before the commit of its offsets
    # (the next batch's may come before it too: it is processed while the previous one is completed).
    logged: dict[int, int] = {}
    commits = 0
    for e in lines:
        if e["event"] == "record":
            logged[e["partition"]] = max(logged.get(e["partition"], -1), e["offset"])
        elif e["event"] == "commit.done":
            commits += 1
            for name, committed in e["offsets"].items():
                partition = int(name.rsplit(":", 1)[1])
                assert logged.get(partition, -1) >= committed - 1, (name, committed, logged)
    assert commits >= len(values) // 20
    assert lines[-1]["event"] == "service.stopped"
