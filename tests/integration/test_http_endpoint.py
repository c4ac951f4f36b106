"""The metrics and health endpoint over real sockets: limits, the connection cap, slow clients, and a
``/metrics`` flood that must not slow ingestion (issue 13, items 14 and 19)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from service.delivery.ingestor import Ingestor
from service.ops.http import HttpEndpoint
from service.ops.routes import Response
from service.tools.broker import free_port
from tests.conftest import BrokerHandle
from tests.support import Topics, feed, produce, settings_for

FLOOD = Path(__file__).parents[2] / "scripts" / "flood_http.py"


@pytest.fixture
async def endpoint() -> AsyncIterator[HttpEndpoint]:
    """An endpoint on a free loopback port: 2 connections at most, 1 s each."""
    http = HttpEndpoint(
        "127.0.0.1",
        0,
        {"/healthz": lambda: Response.json(200, {"status": "ok"})},
        max_connections=2,
        connection_seconds=1.0,
    )
    await http.start()
    try:
        yield http
    finally:
        await http.stop()


async def exchange(port: int, request: bytes, within: float = 5) -> bytes:
    """Send ``request`` over a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_a_one_megabyte_request_line_is_answered_414(endpoint: HttpEndpoint) -> None:
    answer = await exchange(endpoint.port, b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 414
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": "request line too long"}


async def test_a_100_kb_header_line_is_answered_431(endpoint: HttpEndpoint) -> None:
    answer = await exchange(endpoint.port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status_of(answer) == 431


async def test_a_connection_over_the_cap_closes_the_oldest_and_is_answered_at_once(
    endpoint: HttpEndpoint,
) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", endpoint.port) for _ in range(2)]
    try:
        await asyncio.sleep(0.2)  # both accepted: the first is the oldest
        started = time.monotonic()
        answer = await exchange(endpoint.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 200
        assert time.monotonic() - started < 0.5, "served without waiting for a slot"
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(idle[0][0].read(), 0.5) == b"", "the oldest was closed"
        assert not idle[1][0].at_eof(), "the younger one is still open"
    finally:
        for _, writer in idle:
            writer.close()


async def _hold(port: int, count: int, stop: asyncio.Event, opened: list[int]) -> None:
    """Keep ``count`` silent connections open to ``port``, reopening each as soon as it is closed."""

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            opened.append(1)
            try:
                reading = asyncio.create_task(reader.read())
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (reading, stopping):
                    task.cancel()
                await asyncio.gather(reading, stopping, return_exceptions=True)
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.parametrize("held", [20, 60, 120])
async def test_probes_answer_fast_while_silent_connections_are_held(held: int) -> None:
    # Issue 16, bug 7: with 16 slots of 5 s, 20 held connections failed 14 of 22 one-second probes.
    http = HttpEndpoint("127.0.0.1", 0, {"/healthz": lambda: Response.json(200, {"status": "ok"})})
    await http.start()
    stop, opened = asyncio.Event(), []
    holder = asyncio.create_task(_hold(http.port, held, stop, opened))
    try:
        deadline = time.monotonic() + 30
        while len(opened) < held:
            assert time.monotonic() < deadline, f"{len(opened)} of {held} connections opened in 30 s"
            await asyncio.sleep(0.05)
        latencies = []
        until = time.monotonic() + 12  # more than two 5 s connection deadlines: the holders reconnect
        while time.monotonic() < until:
            started = time.monotonic()
            answer = await exchange(http.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", within=1)
            latencies.append(time.monotonic() - started)
            assert status_of(answer) == 200
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(holder, 10)
        await http.stop()
    assert len(opened) > held, "the held connections were closed at their deadline and reopened"
    latencies.sort()
    print(
        f"{held} held: {len(latencies)} probes, median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert latencies[int(len(latencies) * 0.95)] < 0.1, f"p95 over 100 ms: {latencies}"
    assert latencies[-1] < 1.0, "every probe within Kubernetes' default timeout"


async def test_a_slow_client_is_cut_off_at_the_connection_deadline(endpoint: HttpEndpoint) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    started = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(20):  # a header byte every 0.2 s, never the end of the headers
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof():
                break
            await asyncio.sleep(0.2)
        assert await asyncio.wait_for(reader.read(), 2) == b""
    except ConnectionError:
        pass
    finally:
        writer.close()
    assert time.monotonic() - started < 2.5, "closed at the 1 s deadline, not after the 4 s dawdle"
    answer = await exchange(endpoint.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 200, "the slot is free again"


async def test_a_metrics_flood_does_not_delay_the_probes() -> None:
    routes = {
        "/healthz": lambda: Response.json(200, {"status": "ok"}),
        "/metrics": lambda: Response(200, b"# a metric\n" * 1000),
    }
    http = HttpEndpoint("127.0.0.1", 0, routes)
    await http.start()
    flooder = await asyncio.create_subprocess_exec(
        *(sys.executable, str(FLOOD), "--port", str(http.port), "--clients", "20", "--seconds", "60"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(1)  # the flood has used up the burst: /metrics answers wait their turn
        latencies = []
        for _ in range(40):
            started = time.monotonic()
            answer = await exchange(http.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", within=1)
            latencies.append(time.monotonic() - started)
            assert status_of(answer) == 200
            await asyncio.sleep(0.1)
    finally:
        flooder.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(flooder.communicate(), 30)
        await http.stop()
    statuses = orjson.loads(out)
    assert statuses.get("200", 0) >= 100, f"the flood was served: {statuses}"
    latencies.sort()
    assert latencies[int(len(latencies) * 0.95)] < 0.1, f"p95 over 100 ms: {latencies}"
    assert latencies[-1] < 1.0


async def test_get_and_head_keep_their_content_types_and_length(endpoint: HttpEndpoint) -> None:
    get = await exchange(endpoint.port, b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await exchange(endpoint.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for answer in (get, head):
        headers = answer.partition(b"\r\n\r\n")[0].decode().lower().split("\r\n")
        assert "content-type: application/json" in headers
        assert "content-length: 16" in headers
        assert "connection: close" in headers
    assert get.endswith(b'{"status":"ok"}\n')
    assert head.endswith(b"\r\n\r\n"), "HEAD: no body"


async def test_a_failing_route_is_answered_500_and_logged_on_the_service_loop() -> None:
    def broken() -> Response:
        raise ValueError("boom")

    http = HttpEndpoint("127.0.0.1", 0, {"/broken": broken})
    await http.start()
    try:
        with capture_logs() as logs:
            answer = await exchange(http.port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.1)  # the line is handed to this loop
    finally:
        await http.stop()
    assert status_of(answer) == 500
    [failed] = [line for line in logs if line["event"] == "http.route_failed"]
    assert failed["path"] == "/broken"
    assert "boom" in failed["error"]


# ----------------------------------------------------------------- a /metrics flood


async def _drain_rate(
    broker: BrokerHandle, topics: Topics, count: int, *, flood: bool
) -> tuple[float, dict[str, int]]:
    """Messages/s of one service (own group) draining the topic's ``count`` messages, measured from
    its first processed batch to its last; with ``flood``, 20 clients hit ``/metrics`` meanwhile."""
    port = free_port()
    group = f"{topics.group}-{'flood' if flood else 'quiet'}"
    settings = settings_for(
        broker.bootstrap_servers,
        topics,
        idempotence=broker.idempotence,
        group_id=group,
        http_port=port,
        http_host="127.0.0.1",
        batch_max_messages=100,
        max_messages=count,
    )
    ingestor = Ingestor(settings)
    flooder: asyncio.subprocess.Process | None = None
    task = asyncio.create_task(ingestor.run())
    try:
        await asyncio.sleep(0.3)  # the endpoint is up before the broker is reached
        if flood:
            flooder = await asyncio.create_subprocess_exec(
                *(sys.executable, str(FLOOD), "--port", str(port), "--clients", "20", "--seconds", "90"),
                stdout=asyncio.subprocess.PIPE,
            )
        first = None
        deadline = time.monotonic() + 120
        while ingestor.messages_done < count:
            if first is None and ingestor.messages_done > 0:
                first = (time.monotonic(), ingestor.messages_done)
            assert time.monotonic() < deadline, f"{ingestor.messages_done} of {count} in 120 s"
            await asyncio.sleep(0.01)
        last = time.monotonic()
        assert await asyncio.wait_for(task, 60) == 0
    finally:
        ingestor.request_stop()
        if flooder is not None:
            flooder.send_signal(signal.SIGTERM)
        if not task.done():
            await asyncio.wait_for(task, 60)
    statuses: dict[str, int] = {}
    if flooder is not None:
        out, _ = await asyncio.wait_for(flooder.communicate(), 30)
        statuses = orjson.loads(out) if out else {}
    assert first is not None
    return (count - first[1]) / (last - first[0]), statuses


# The service stops itself (INGEST_MAX_MESSAGES) while 20 clients still connect: a connection the
# kernel accepted as the endpoint's accept loop was cancelled can be left to the garbage collector
# (asyncio's sock_accept loses its result when cancelled after completing), which reports it as an
# unclosed socket. One socket at stop, known and left (closing notes); this test measures throughput.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_metrics_flood_does_not_slow_ingestion_materially(broker: BrokerHandle) -> None:
    count = 6000
    topics = await Topics.unique("flood").create(broker.bootstrap_servers)
    await produce(broker.bootstrap_servers, topics.input, feed(count))
    # The flooded run first: whatever warms up (the broker's cache) favours the quiet one.
    flooded, statuses = await _drain_rate(broker, topics, count, flood=True)
    quiet, _ = await _drain_rate(broker, topics, count, flood=False)
    print(f"quiet {quiet:.0f} msgs/s, flooded {flooded:.0f} msgs/s, flood answers {statuses}")
    # At most 50 connections are accepted a second, so a short drain sees only a few dozen answers.
    assert statuses.get("200", 0) >= 20, f"the flood was served: {statuses}"
    assert flooded >= 0.5 * quiet, f"flooded {flooded:.0f} msgs/s vs quiet {quiet:.0f} msgs/s"
