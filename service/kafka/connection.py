"""The connection probe: what really happens when a client cannot reach the cluster.

aiokafka's bootstrap logs why each broker refused and raises only ``Unable to bootstrap``. The probe
makes the same connection (TCP, TLS, ApiVersions, SASL, a Metadata request) to each bootstrap address
and returns the exception that stopped it, for ``service.kafka.failures.classify``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from service.kafka.clients import Kafka
from service.kafka.failures import Failure, Stage, classify, classify_closed


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Why a connection failed: the exception, and how far it got (``handshake``, ``connect`` or
    ``metadata``)."""

    error: BaseException
    stage: str

    @property
    def closed(self) -> bool:
        """True when the broker closed or reset the connection (no other reason given)."""
        return isinstance(self.error, KafkaConnectionError) or self.stage == "handshake"


def _addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    out = []
    for address in bootstrap_servers.split(","):
        # The settings refuse an address that is not HOST:PORT or [IPv6]:PORT: no default port.
        host, _, port = address.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


async def probe(client_kwargs: dict[str, Any]) -> ProbeResult | None:
    """Connect to each bootstrap address as the clients would; None when one answers Metadata.

    Otherwise the first address's failure (a refused TCP connection counts for less than anything a
    broker said, so a later address's TLS or SASL error wins over it).
    """
    timeout_ms = int(client_kwargs.get("request_timeout_ms", 30_000))
    options = {
        "client_id": client_kwargs.get("client_id", "marker-ingest"),
        "request_timeout_ms": timeout_ms,
        "ssl_context": client_kwargs.get("ssl_context"),
        "security_protocol": client_kwargs.get("security_protocol", "PLAINTEXT"),
        "sasl_mechanism": client_kwargs.get("sasl_mechanism"),
        "sasl_plain_username": client_kwargs.get("sasl_plain_username"),
        "sasl_plain_password": client_kwargs.get("sasl_plain_password"),
    }
    found: ProbeResult | None = None
    for host, port in _addresses(str(client_kwargs["bootstrap_servers"])):
        stage = "connect"
        try:
            conn = await create_conn(host, port, **options)
            stage = "metadata"
            try:
                await conn.send(MetadataRequest([]))
            finally:
                conn.close()
        except (OSError, KafkaError, TimeoutError) as exc:
            if stage == "connect" and _reset_in_tls_handshake(exc, options["security_protocol"]):
                stage = "handshake"
            result = ProbeResult(exc, stage)
            if found is None or (_only_unreachable(found) and not _only_unreachable(result)):
                found = result
            continue
        return None
    return found


def _reset_in_tls_handshake(exc: BaseException, protocol: object) -> bool:
    """A TLS client whose handshake the broker answered by closing the connection: a listener that
    does not speak TLS reads the ClientHello as a malformed request and drops it."""
    return protocol in ("SSL", "SASL_SSL") and isinstance(
        exc, ConnectionResetError | ConnectionAbortedError | ssl.SSLEOFError | BrokenPipeError
    )


def _only_unreachable(result: ProbeResult) -> bool:
    """Refused, timed out, or no such host: no broker said anything."""
    error = result.error
    return (
        isinstance(error, TimeoutError | ConnectionRefusedError | socket.gaierror) or type(error) is OSError
    )


async def diagnose(kafka: Kafka) -> tuple[Failure | None, str | None]:
    """Probe the connection: (None, None) when a broker answers; else the ``Failure`` retrying
    cannot cure, if it is one, and the probe's error to log."""
    found = await probe(kafka.client_kwargs())
    if found is None:
        return None, None
    failure = classify(found.error, Stage.CONNECT, kafka.access)
    if failure is None and found.closed:
        failure = classify_closed(found.stage, kafka.access)
    return failure, repr(found.error)


def preflight(kafka: Kafka) -> Failure | None:
    """For the operator tools, before they start a client: the ``Failure`` of the connection, if
    it has one (an unreachable broker is left to the tool's own error)."""
    return asyncio.run(_diagnose_quietly(kafka))[0]


async def _diagnose_quietly(kafka: Kafka) -> tuple[Failure | None, str | None]:
    asyncio.get_running_loop().set_exception_handler(_unless_left_by_a_closed_connection)
    return await diagnose(kafka)


def _unless_left_by_a_closed_connection(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The probe's loop's exception handler, without asyncio's report of a connection error that
    nobody retrieved: a connection the broker closed in its TLS handshake leaves the error on its
    stream's closing future. asyncio retrieves it when the stream protocol is freed first; when the
    garbage collector frees the future first (its timing depends on what was allocated before), it
    was reported, as a traceback after the tool's one line. The failure is the probe's result."""
    unretrieved = context.get("message") == "Future exception was never retrieved"
    if not (unretrieved and isinstance(context.get("exception"), OSError)):
        loop.default_exception_handler(context)


def explain(exc: BaseException, stage: Stage, kafka: Kafka, topic: str | None = None) -> Failure | None:
    """For the operator tools: the ``Failure`` behind a client's error, if it is one."""
    return classify(exc, stage, kafka.access, topic=topic)
