"""A minimal HTTP/1.1 endpoint for metrics and health probes, served from the service's own loop.

Enough HTTP for Prometheus, Kubernetes probes and ``curl``: ``GET`` and ``HEAD``, one request per
connection (``Connection: close``), bodies never read. No dependency beyond asyncio. Routes are
plain callables that return a ``Response``; the endpoint knows nothing about Kafka.

``LoopWatch`` is the liveness signal: a task that ticks every ``interval`` seconds, so a loop that is
blocked (or starved) shows as a stale tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import orjson
import structlog

log = structlog.get_logger("marker_ingest")

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_LINES = 100
READ_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Response:
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: object) -> Response:
        """A JSON response."""
        return cls(status, orjson.dumps(payload) + b"\n")


Route = Callable[[], Response]


def parse_request_line(line: bytes) -> tuple[str, str] | None:
    """``(method, path)`` of an HTTP/1.x request line (query string dropped); None when malformed."""
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    return parts[0], parts[1].split("?", 1)[0]


def route_request(method: str, path: str, routes: Mapping[str, Route]) -> Response:
    """The response to one request: the route's, or 404/405."""
    route = routes.get(path)
    if route is None:
        return Response.json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": sorted(routes)})
    if method not in ("GET", "HEAD"):
        return Response.json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET and HEAD"})
    return route()


def render_response(response: Response, *, head: bool = False) -> bytes:
    """The bytes on the wire: status line, headers, and the body unless ``head``."""
    status = HTTPStatus(response.status)
    header = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return header if head else header + response.body


class HttpEndpoint:
    """An asyncio TCP server answering ``routes``; ``start`` binds, ``stop`` closes."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self.host, self.requested_port, self.routes = host, port, routes
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually bound (differs from the requested one when that was 0).

        Raises ``RuntimeError`` before ``start``.
        """
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the endpoint is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and listen. Raises ``OSError`` when the address is taken or not ours."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.requested_port, reuse_address=True, limit=MAX_REQUEST_LINE
        )

    async def stop(self) -> None:
        """Stop accepting connections; requests being answered get a moment to finish."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(self._read_request(reader), READ_TIMEOUT_SECONDS)
            if request is None:
                writer.write(render_response(Response.json(HTTPStatus.BAD_REQUEST, {"error": "bad request"})))
            else:
                method, path = request
                try:
                    response = route_request(method, path, self.routes)
                except Exception as exc:
                    log.exception("http.route_failed", path=path, error=repr(exc))
                    response = Response.json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
                writer.write(render_response(response, head=method == "HEAD"))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that hung up, dawdled or sent junk gets nothing more
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
        request = parse_request_line(await reader.readline())
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                return request
        return None


class LoopWatch:
    """Ticks every ``interval`` seconds on the running loop; ``stale_seconds`` says how late it is."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._last = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stale_seconds(self) -> float:
        """Seconds since the tick was due (0 while the loop keeps up)."""
        return max(0.0, time.monotonic() - self._last - self.interval)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._last = time.monotonic()
