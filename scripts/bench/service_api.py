"""Every import of the service's own code, in one place: when ``service/`` moves a module, this is
the one file of the benchmark to change.

Each function imports when called, from whichever tree is first on ``sys.path`` in that process:
the passthrough, the pacer and the reader put this checkout first (they measure no service code,
and the passthrough must send as this tree does), the peers take the tree under test
(``--service-path``, first on ``PYTHONPATH``) for the core they call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""This checkout (the benchmark's own tree)."""


def version() -> str:
    """The service's version string, as its events carry it."""
    from service import __version__

    return __version__


def core() -> tuple[Callable[..., Any], type, Any]:
    """``(process_payload, Source, Limits())``: the core the peers call per message."""
    from service.core.events import Source, process_payload
    from service.core.limits import Limits

    return process_payload, Source, Limits()


def client_configs(bootstrap: str, group: str, *, idempotence: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The service's consumer and producer configuration (aiokafka keyword arguments) for a group."""
    from service.kafka.clients import Kafka
    from service.settings import Settings

    settings = Settings(
        kafka_bootstrap_servers=bootstrap, group_id=group, kafka_enable_idempotence=idempotence
    )
    kafka = Kafka.of(settings)
    return kafka.consumer_config(), kafka.producer_config()


def request_size(bootstrap: str) -> int:
    """The service's ``max_request_size`` (what its ``Outbox`` refuses an event beyond)."""
    from service.kafka.clients import max_request_size
    from service.settings import Settings

    return max_request_size(Settings(kafka_bootstrap_servers=bootstrap))


def outbox_types() -> tuple[type, type, type]:
    """``(Outbox, Send, Destination)``: the service's send technique, record batches per output
    partition through aiokafka's batch API, and what it takes per outcome."""
    from service.delivery.outbox import Outbox, Send
    from service.delivery.routing import Destination

    return Outbox, Send, Destination


async def create_topics(
    bootstrap: str, topics: dict[str, int], *, replication_factor: int = 1, min_insync: int = 1
) -> None:
    """Create topics (partitions each) as the service's tools do; existing ones are left alone."""
    from service.kafka.topics import create_topics as create

    configs = {"min.insync.replicas": str(min_insync)} if min_insync > 1 else None
    await create(bootstrap, topics, replication_factor=replication_factor, configs=configs)


ERROR_CODE_HEADER = "marker-ingest-error-code"
"""``schemas.events.ERROR_CODE_HEADER``, the dead letters' header, as the peers set it (a literal:
the peers may run an older tree)."""
