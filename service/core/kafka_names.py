"""What Kafka accepts as a broker address and as a topic name: pure checks, each answering why not."""

from __future__ import annotations

import ipaddress
import re

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def broker_address_problem(address: str) -> str | None:
    """Why ``address`` is not ``HOST:PORT`` or ``[IPv6]:PORT``; None when it is.

    The Kafka client would also take a bare host and quietly use port 9092; refused here, so that a
    forgotten port is caught at start-up rather than found as a broker that never answers.
    """
    if not address:
        return "an empty broker address (expected HOST:PORT, comma-separated)"
    if address.startswith("["):
        inside, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return f"{address!r} is not [IPv6]:PORT"
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            return f"{inside!r} in {address!r} is not an IPv6 address"
        host, port = inside, rest[1:] if rest else None
    else:
        try:
            ipaddress.IPv6Address(address)
            return f"{address!r} has no port (expected [IPv6]:PORT for an IPv6 address)"
        except ValueError:
            pass
        host, colon, port_text = address.rpartition(":")
        host, port = (host, port_text) if colon else (address, None)
    if not host or any(c.isspace() for c in host):
        return f"no host in {address!r} (expected HOST:PORT)"
    if port is None:
        return f"{address!r} has no port (expected HOST:PORT)"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port of {address!r} is not a number from 1 to 65535"
    return None


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a legal Kafka topic name; None when it is."""
    if not name:
        return "must not be empty"
    if name in (".", "..") or not _TOPIC.fullmatch(name):
        return (
            f"{name[:60]!r} is not a Kafka topic name (at most 249 of A-Z, a-z, 0-9, '.', '_', '-'; "
            "not '.' or '..')"
        )
    return None
