"""The tools' connection probe (``connection.preflight``) leaves one line, its own: an error that a
connection the broker closed left unretrieved on a future is not reported again by asyncio."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl

import pytest

from service.kafka import connection


def test_an_unretrieved_connection_error_is_not_reported_and_other_errors_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def leave_two() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(connection._unless_left_by_a_closed_connection)
        closed, bug = loop.create_future(), loop.create_future()
        closed.set_exception(
            ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate")
        )
        bug.set_exception(ValueError("a bug"))
        del closed, bug
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(leave_two())
    reported = [r.exc_info[1] for r in caplog.records if r.exc_info is not None]
    assert [type(e) for e in reported] == [ValueError], "the bug is still reported, the closed connection not"
