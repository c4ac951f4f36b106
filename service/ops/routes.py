"""What the HTTP endpoint answers, without the server: responses, routes, and the operator's routes
(``/metrics``, ``/healthz``, ``/readyz``) over callables that read the service's state.

``LoopWatch`` is the liveness signal: a task that ticks every ``interval`` seconds on the service's
loop, so a loop that is blocked (or starved) shows as a stale tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from service.ops.metrics import CONTENT_TYPE, Metrics

HEALTH_STALE_LIMIT_SECONDS = 10.0
"""``/healthz`` fails once the event loop has been this late to tick."""
METRICS_MAX_AGE_SECONDS = 1.0
"""``/metrics`` is rendered at most once per this interval; a scrape flood gets the same bytes."""


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


def route_request(method: str, path: str, routes: Mapping[str, Route]) -> Response:
    """The response to one request: the route's, or 404/405."""
    route = routes.get(path)
    if route is None:
        return Response.json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": sorted(routes)})
    if method not in ("GET", "HEAD"):
        return Response.json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET and HEAD"})
    return route()


def cached(route: Route, seconds: float, clock: Callable[[], float] = time.monotonic) -> Route:
    """``route``, answered again from its last response for ``seconds`` (a scrape flood renders once)."""
    lock = threading.Lock()
    last: list[tuple[float, Response]] = []

    def answer() -> Response:
        with lock:
            now = clock()
            if not last or now - last[0][0] >= seconds:
                last[:] = [(now, route())]
            return last[0][1]

    return answer


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
        """Seconds since the tick was due (0 while the loop keeps up; read from any thread)."""
        return max(0.0, time.monotonic() - self._last - self.interval)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._last = time.monotonic()


def operator_routes(
    metrics: Metrics,
    readiness: Callable[[], tuple[bool, dict[str, Any]]],
    partitions: Callable[[], list[str]],
    loop_watch: LoopWatch,
) -> dict[str, Route]:
    """``/metrics`` (cached), ``/healthz`` (the loop ticks) and ``/readyz`` (``readiness``)."""

    def readyz() -> Response:
        ready, why = readiness()
        if ready:
            return Response.json(200, {"ready": True, "partitions": partitions()})
        return Response.json(503, {"ready": False, **why})

    def healthz() -> Response:
        stale = loop_watch.stale_seconds()
        if stale > HEALTH_STALE_LIMIT_SECONDS:
            return Response.json(503, {"status": "stalled", "loop_late_seconds": round(stale, 1)})
        return Response.json(200, {"status": "ok", "loop_late_seconds": round(stale, 3)})

    return {
        "/metrics": cached(lambda: Response(200, metrics.render(), CONTENT_TYPE), METRICS_MAX_AGE_SECONDS),
        "/healthz": healthz,
        "/readyz": readyz,
    }
