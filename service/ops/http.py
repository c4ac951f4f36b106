"""The HTTP endpoint for metrics and health probes: aiohttp's server, on a thread of its own.

Enough HTTP for Prometheus, Kubernetes probes and ``curl``: ``GET`` and ``HEAD``, one request per
connection (``Connection: close``), bodies never read. Routes are plain callables that return a
``Response``; the endpoint knows nothing about Kafka.

Scrape and probe traffic must not slow ingestion, so the endpoint runs its own event loop in a
daemon thread, and its cost is bounded whatever its clients do: each connection is accepted at
once (a probe never queues behind connections that send nothing), at most ``max_connections`` are
open at a time (one more closes the oldest, at most ``evictions_per_second`` a second), requests are
answered at most ``requests_per_second`` a second for the probes (``/healthz``, ``/readyz``) and as
many again for the other paths (a ``/metrics`` flood does not delay the probes), and a connection
lasts at most ``connection_seconds`` (slowloris). A request line longer than
``MAX_REQUEST_LINE`` is answered 414, a header field longer than ``MAX_HEADER_FIELD`` 431. Routes
run on that thread: they must only read state the service keeps (prometheus-client is thread-safe)
and never log directly; the endpoint hands its log lines to the service's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from service.ops.routes import Response, Route, route_request

log = structlog.get_logger("marker_ingest")

MAX_REQUEST_LINE = 4 * 1024
MAX_HEADER_FIELD = 8 * 1024
MAX_CONNECTIONS = 512
EVICTIONS_PER_SECOND = 50.0
REQUESTS_PER_SECOND = 50.0
BURST = 10
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
CONNECTION_SECONDS = 5.0
LINGER_SECONDS = 2.0
LISTEN_BACKLOG = 512
STOP_SECONDS = 3.0


def refusal(status: int, exc: BaseException | None) -> Response:
    """The answer to a request aiohttp could not parse (or a failure aiohttp itself answers).

    A line over a limit is 414 when it is the request line and 431 when it is a header field (the
    two limits differ, and aiohttp's ``LineTooLong`` names the one exceeded); other unparsable
    requests keep aiohttp's status (400).
    """
    if isinstance(exc, LineTooLong):
        if len(exc.args) > 1 and exc.args[1] == MAX_REQUEST_LINE:
            return Response.json(HTTPStatus.REQUEST_URI_TOO_LONG, {"error": "request line too long"})
        return Response.json(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, {"error": "header field too large"})
    if isinstance(exc, BadHttpMessage):
        return Response.json(HTTPStatus.BAD_REQUEST, {"error": "bad request"})
    return Response.json(status, {"error": HTTPStatus(status).phrase.lower()})


@dataclass(slots=True)
class Budget:
    """A token bucket: ``rate`` per second on average, ``burst`` at once."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    at: float | None = None

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """Take one token at ``now``; returns the seconds to wait before using it (0 when one is at hand)."""
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def _to_web(response: Response) -> web.Response:
    answer = web.Response(
        status=response.status,
        body=response.body,
        headers={"Content-Type": response.content_type, "Cache-Control": "no-store"},
    )
    answer.force_close()
    return answer


def _made(handler: _Connection) -> Callable[[], _Connection]:
    """A protocol factory answering a protocol made beforehand (to know whether it was used)."""
    return lambda: handler


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on the first address ``host`` resolves to. Raises ``OSError``."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class GracefulClose:
    """A transport whose ``close`` flushes the response, sends a FIN and then reads and drops what
    the client still sends until it closes its end (or ``linger`` seconds pass).

    A plain close with input left unread (the rest of a 1 MB request line) makes the kernel send a
    reset, which can destroy the response before the client has read it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, linger: float):
        self.wire, self._loop, self._linger, self._closing = transport, loop, linger, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wire, name)

    def is_closing(self) -> bool:
        """True once ``close`` was called."""
        return self._closing or self.wire.is_closing()

    def close(self) -> None:
        """Half-close now; close for good when the client does, or after the linger time."""
        if self._closing or self.wire.is_closing():
            return
        self._closing = True
        if self.wire.can_write_eof():
            self.wire.write_eof()
        self._loop.call_later(self._linger, self.wire.close)


class _Connection(web.RequestHandler):
    """aiohttp's protocol for one connection, within the endpoint's limits."""

    def __init__(
        self,
        manager: web.Server,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        *,
        seconds: float,
        opened: Callable[[GracefulClose], None],
        closed: Callable[[GracefulClose], None],
    ) -> None:
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=seconds,
            logger=logger,
            access_log=None,  # type: ignore[arg-type]  # documented: None turns the access log off
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
            lingering_time=0,
        )
        self._event_loop, self._seconds, self._opened, self._closed = loop, seconds, opened, closed
        self._graceful: GracefulClose | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wrap the transport for a graceful close, and end the connection at its deadline."""
        wire = cast(asyncio.Transport, transport)
        self._graceful = GracefulClose(wire, self._event_loop, LINGER_SECONDS)
        self._deadline = self._event_loop.call_later(self._seconds, wire.abort)
        self.opened = True
        self._opened(self._graceful)
        super().connection_made(cast(asyncio.Transport, self._graceful))

    def connection_lost(self, exc: BaseException | None) -> None:
        """Free the connection's slot."""
        super().connection_lost(exc)
        if self._deadline is not None:
            self._deadline.cancel()
        if self._graceful is not None:
            self._closed(self._graceful)
            self._graceful = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Our JSON answer instead of aiohttp's text, and no traceback in the log for junk."""
        return _to_web(refusal(status, exc))


class _ToLoop(logging.Handler):
    """Hands aiohttp's log records from the endpoint's thread to the service's loop, which owns the
    log stream (its buffer is not thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(RuntimeError):  # the service's loop is closed
            self._loop.call_soon_threadsafe(logging.getLogger("aiohttp.server").handle, record)


class HttpEndpoint:
    """The endpoint answering ``routes``; ``start`` binds and starts its thread, ``stop`` ends it."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route],
        *,
        max_connections: int = MAX_CONNECTIONS,
        evictions_per_second: float = EVICTIONS_PER_SECOND,
        requests_per_second: float = REQUESTS_PER_SECOND,
        connection_seconds: float = CONNECTION_SECONDS,
    ) -> None:
        self.host, self.requested_port, self.routes = host, port, routes
        self.max_connections = max_connections
        self.evictions_per_second = evictions_per_second
        self.connection_seconds = connection_seconds
        self._probes = Budget(requests_per_second, BURST)
        self._others = Budget(requests_per_second, BURST)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._open: dict[GracefulClose, None] = {}  # oldest first
        self._slots: asyncio.Semaphore | None = None

    @property
    def port(self) -> int:
        """The port actually bound (differs from the requested one when that was 0).

        Raises ``RuntimeError`` before ``start``.
        """
        if self._sock is None:
            raise RuntimeError("the endpoint is not listening")
        port: int = self._sock.getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind, listen and start serving. Raises ``OSError`` when the address is taken or not ours."""
        self._owner = asyncio.get_running_loop()
        self._sock = await asyncio.to_thread(_listen, self.host, self.requested_port)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(self._sock, started), name="http", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(started)

    async def stop(self) -> None:
        """Stop accepting connections and close them; answers being written get a moment to finish."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop ended already
            loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join, STOP_SECONDS)
        self._thread = self._loop = self._stopping = self._sock = None

    def _run(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        """The thread: serve until stopped; a failure before serving is raised by ``start``."""
        try:
            asyncio.run(self._serve(sock, started))
        except BaseException as exc:
            sock.close()
            if started.done():
                raise
            started.set_exception(exc)

    async def _serve(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        assert self._owner is not None
        logger = logging.Logger("marker_ingest.http", logging.WARNING)  # outside the hierarchy
        logger.addHandler(_ToLoop(self._owner))
        server = web.Server(self._respond, loop=loop)
        self._loop, self._stopping = loop, asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_connections)
        accepting = loop.create_task(
            self._accept(
                sock,
                lambda: _Connection(
                    server,
                    loop,
                    logger,
                    seconds=self.connection_seconds,
                    opened=self._opened,
                    closed=self._closed,
                ),
            )
        )
        started.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
            sock.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.shutdown(1.0), 2.0)
            for graceful in list(self._open):
                graceful.wire.abort()
            await asyncio.sleep(0)

    async def _accept(self, sock: socket.socket, connection: Callable[[], _Connection]) -> None:
        """Accept each connection at once; over the cap, close the oldest to make room (paced, so
        that clients reconnecting as fast as they are closed cannot spin this thread)."""
        loop = asyncio.get_running_loop()
        evictions = Budget(self.evictions_per_second, BURST)
        slots = self._slots
        assert slots is not None
        while True:
            try:
                conn = await _accepted(loop, sock)
            except OSError as exc:  # out of file descriptors
                self._log("warning", "http.accept_failed", error=repr(exc))
                await asyncio.sleep(0.1)
                continue
            handler = connection()
            try:
                if slots.locked():
                    await asyncio.sleep(evictions.take(loop.time()))
                    self._evict_oldest()
                await slots.acquire()
            except BaseException:  # stopped while waiting for a slot: the socket is not served
                conn.close()
                raise
            try:
                await loop.connect_accepted_socket(_made(handler), conn)
            except BaseException as exc:  # the client hung up at once, or the endpoint stops
                conn.close()
                if not handler.opened:  # else its connection_lost frees the slot
                    slots.release()
                if not isinstance(exc, OSError):
                    raise
                self._log("warning", "http.accept_failed", error=repr(exc))

    def _evict_oldest(self) -> None:
        """Close the connection open the longest: an idle or dawdling client, most likely, since an
        answer takes milliseconds."""
        oldest = next(iter(self._open), None)
        if oldest is not None:
            oldest.wire.abort()

    def _opened(self, graceful: GracefulClose) -> None:
        self._open[graceful] = None

    def _closed(self, graceful: GracefulClose) -> None:
        if graceful in self._open:
            del self._open[graceful]
            assert self._slots is not None
            self._slots.release()

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        budget = self._probes if request.path in PROBE_PATHS else self._others
        if wait := budget.take(asyncio.get_running_loop().time()):
            await asyncio.sleep(wait)
        try:
            response = route_request(request.method, request.path, self.routes)
        except Exception as exc:
            self._log("error", "http.route_failed", path=request.path, error=repr(exc), exc_info=exc)
            response = Response.json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
        return _to_web(response)

    def _log(self, level: str, event: str, **fields: Any) -> None:
        """Log on the service's loop, which owns the log stream."""
        if self._owner is not None:
            with contextlib.suppress(RuntimeError):
                self._owner.call_soon_threadsafe(functools.partial(getattr(log, level), event, **fields))


async def _accepted(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> socket.socket:
    """The next connection on ``sock``. Cancelled (the endpoint stops) just after the connection was
    accepted, it closes that connection: a plain ``sock_accept`` would leave it to the collector."""
    accept = asyncio.ensure_future(loop.sock_accept(sock))
    try:
        conn, _ = await asyncio.shield(accept)
    except asyncio.CancelledError:
        if accept.done() and not accept.cancelled() and accept.exception() is None:
            accept.result()[0].close()
        else:
            accept.cancel()
        raise
    return conn
