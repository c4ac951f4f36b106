"""Flood an HTTP endpoint from many concurrent clients, one request per connection. Not a test.

Usage::

    python scripts/flood_http.py --port 8080 [--host 127.0.0.1] [--path /metrics] [--clients 20]
        [--seconds 5]

Runs for ``--seconds`` or until SIGTERM/SIGINT, then prints one JSON object: the number of answers
by status, and the connections that failed (refused, reset or timed out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections import Counter

import orjson


async def _client(
    host: str, port: int, path: str, until: float, stop: asyncio.Event, statuses: Counter[str]
) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    while time.monotonic() < until and not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            try:
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            statuses[answer.split(b" ", 2)[1].decode() if answer else "closed"] += 1
        except (OSError, TimeoutError, IndexError):
            statuses["failed"] += 1
            await asyncio.sleep(0.01)


async def _flood(args: argparse.Namespace) -> Counter[str]:
    statuses: Counter[str] = Counter()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    until = time.monotonic() + args.seconds
    clients = [
        asyncio.create_task(_client(args.host, args.port, args.path, until, stop, statuses))
        for _ in range(args.clients)
    ]
    finished = asyncio.gather(*clients)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([finished, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in (*clients, stopped):
        task.cancel()
    await asyncio.gather(finished, stopped, return_exceptions=True)  # retrieves every outcome
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/metrics")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    statuses = asyncio.run(_flood(parser.parse_args()))
    print(orjson.dumps(dict(statuses)).decode())


if __name__ == "__main__":
    main()
