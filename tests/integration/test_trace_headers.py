"""W3C trace context through the service (always on, no tracing SDK): an input's valid
``traceparent``/``tracestate`` go on to its events, as headers and as the article's CloudEvents
``traceparent`` attribute; an invalid one goes nowhere and is never a dead letter."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.delivery.ingestor import Ingestor
from tests.conftest import BrokerHandle
from tests.support import Topics, read_all, record, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STATE = b"congo=t61rcWkgMzE"
INVALID = b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"  # an all-zero parent id


async def test_a_valid_context_goes_on_and_an_invalid_one_goes_nowhere(broker: BrokerHandle) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await Topics.unique("trace").create(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=broker.idempotence)
    await producer.start()
    try:
        traced = [("traceparent", PARENT), ("tracestate", STATE), ("feed", b"bbc")]
        await producer.send_and_wait(topics.input, record(1).encode(), key=b"1", headers=traced)
        await producer.send_and_wait(topics.input, b"no markers here", key=b"2", headers=traced)
        invalid = [("traceparent", INVALID), ("tracestate", STATE)]
        await producer.send_and_wait(topics.input, record(3).encode(), key=b"3", headers=invalid)
        await producer.send_and_wait(topics.input, b"no markers either", key=b"4", headers=invalid)
    finally:
        await producer.stop()

    settings = settings_for(bootstrap, topics, idempotence=broker.idempotence, burst=True)
    assert await asyncio.wait_for(Ingestor(settings).run(), 90) == 0

    articles = {orjson.loads(a.value)["data"]["fn"]: a for a in await read_all(bootstrap, topics.output)}
    assert sorted(articles) == [1, 3], "an invalid context is never a dead letter"
    first, third = articles[1], articles[3]
    assert first.headers[1:] == (("traceparent", PARENT), ("tracestate", STATE))
    assert orjson.loads(first.value)["traceparent"] == PARENT.decode()
    assert [name for name, _ in third.headers] == ["content-type"]
    assert "traceparent" not in orjson.loads(third.value)

    dead = {d.key: d for d in await read_all(bootstrap, topics.dlq)}
    assert [(n, v) for n, v in dead[b"2"].headers if n in ("traceparent", "tracestate", "feed")] == [
        ("feed", b"bbc"),
        ("traceparent", PARENT),
        ("tracestate", STATE),
    ]
    assert not [n for n, _ in dead[b"4"].headers if n in ("traceparent", "tracestate")]
