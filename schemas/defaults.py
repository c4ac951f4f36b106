"""The defaults the published contracts name, each with the environment variable that changes it.

The AsyncAPI document gives these as its addresses and binding defaults; ``service.settings`` takes
its defaults from here, so the document and the service cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple


class Default(NamedTuple):
    """A setting's environment variable and its default value."""

    variable: str
    value: str


BOOTSTRAP_SERVERS = Default("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
CLIENT_ID = Default("KAFKA_CLIENT_ID", "marker-ingest")
INPUT_TOPIC = Default("INGEST_INPUT_TOPIC", "news.raw")
OUTPUT_TOPIC = Default("INGEST_OUTPUT_TOPIC", "news.articles")
DLQ_TOPIC = Default("INGEST_DLQ_TOPIC", "news.dead-letters")
GROUP_ID = Default("INGEST_GROUP_ID", "marker-ingest")

BY_FIELD: dict[str, Default] = {
    "kafka_bootstrap_servers": BOOTSTRAP_SERVERS,
    "kafka_client_id": CLIENT_ID,
    "input_topic": INPUT_TOPIC,
    "output_topic": OUTPUT_TOPIC,
    "dlq_topic": DLQ_TOPIC,
    "group_id": GROUP_ID,
}
"""Each default by the name of the settings field it is the default of."""
