"""The HTTP endpoint's decisions: routes, refusals, the metrics cache, the accept budget; no I/O."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from service.ops.http import MAX_HEADER_FIELD, MAX_REQUEST_LINE, Budget, GracefulClose, refusal
from service.ops.routes import Response, cached, route_request


def test_routes_answer_and_unknown_paths_and_methods_do_not() -> None:
    routes = {"/healthz": lambda: Response.json(200, {"status": "ok"})}
    assert route_request("GET", "/healthz", routes).status == 200
    assert route_request("HEAD", "/healthz", routes).status == 200
    missing = route_request("GET", "/nope", routes)
    assert missing.status == 404
    assert orjson.loads(missing.body)["paths"] == ["/healthz"]
    assert route_request("POST", "/healthz", routes).status == 405


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (LineTooLong(b"/aaaa...", MAX_REQUEST_LINE), 414),
        (LineTooLong(b"aaaa...", MAX_HEADER_FIELD), 431),
        (BadHttpMessage("Too many headers received"), 400),
        (None, 500),
    ],
)
def test_unparsable_requests_are_refused_with_the_status_that_says_why(
    exc: BaseException | None, status: int
) -> None:
    answer = refusal(500, exc)
    assert answer.status == status
    assert answer.content_type == "application/json"
    assert "error" in orjson.loads(answer.body)


def test_the_two_limits_differ_so_that_a_refusal_can_tell_them_apart() -> None:
    assert MAX_REQUEST_LINE != MAX_HEADER_FIELD


def test_a_cached_route_renders_at_most_once_per_interval() -> None:
    now = [100.0]
    renders: list[float] = []

    def route() -> Response:
        renders.append(now[0])
        return Response(200, str(len(renders)).encode())

    answer = cached(route, 1.0, clock=lambda: now[0])
    assert answer().body == b"1"
    now[0] += 0.5
    assert answer().body == b"1", "within the interval: the same bytes"
    now[0] += 0.5
    assert answer().body == b"2", "an interval later: rendered again"
    assert renders == [100.0, 101.0]


def test_the_budget_allows_a_burst_then_paces_at_its_rate() -> None:
    budget = Budget(rate=10.0, burst=3)
    assert [budget.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take(0.0) == pytest.approx(0.1)
    assert budget.take(0.1) == pytest.approx(0.1), "the one waited for is spent; the next waits too"
    assert budget.take(10.0) == 0.0, "refilled after a quiet spell"
    assert budget.tokens == pytest.approx(2.0), "never more than the burst"


class _Wire:
    """A transport that records what is done to it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def close(self) -> None:
        self.calls.append("close")

    def is_closing(self) -> bool:
        return "close" in self.calls

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


class _Later:
    """A loop that only records ``call_later``."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.scheduled.append((delay, callback))


def test_closing_half_closes_first_and_closes_for_good_after_the_linger_time() -> None:
    wire, loop = _Wire(), _Later()
    graceful = GracefulClose(cast(Any, wire), cast(Any, loop), 2.0)
    assert graceful.get_extra_info("peername") == "info:peername", "the rest is the transport's"
    graceful.close()
    graceful.close()
    assert wire.calls == ["write_eof"], "a FIN after the response; the client's input is still read"
    assert graceful.is_closing()
    [(delay, callback)] = loop.scheduled
    assert delay == 2.0
    callback()
    assert wire.calls == ["write_eof", "close"]
