"""Start-up checks against the real broker: the three topics exist, or are created when allowed."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from service.delivery.ingestor import Ingestor
from service.errors import ExitStatus
from service.kafka.clients import Kafka
from service.kafka.topics import create_topics, topic_problems
from tests.conftest import BrokerHandle
from tests.support import Ledger, Topics, expected_outcomes, feed, produce, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.kafka
async def test_a_misspelled_output_topic_is_an_error_at_start_up_naming_it(broker: BrokerHandle) -> None:
    """Nothing is consumed, nothing is created: the service exits 2 with one error line per missing
    topic that names the topic and its setting (Kafka's auto-creation, where on, is not triggered)."""
    topics = await Topics.unique("misspelt").create(broker.bootstrap_servers)
    await produce(broker.bootstrap_servers, topics.input, feed(3))
    typo = topics.output + "s"
    settings = settings_for(
        broker.bootstrap_servers, topics, idempotence=broker.idempotence, burst=True, output_topic=typo
    )
    with capture_logs() as logs:
        code = await Ingestor(settings).run()
    assert code == ExitStatus.USAGE == 2
    [line] = [e for e in logs if e["log_level"] == "error"]
    assert (line["event"], line["topic"], line["setting"]) == ("topic.missing", typo, "INGEST_OUTPUT_TOPIC")
    assert "INGEST_CREATE_TOPICS" in line["detail"]
    kwargs = Kafka.of(settings).client_kwargs()
    assert await topic_problems([typo], kwargs) == {typo: "UnknownTopicOrPartitionError"}
    assert not [e for e in logs if e["event"] == "record"], "records were consumed"


@pytest.mark.kafka
async def test_missing_topics_are_created_when_the_operator_allows_it(broker: BrokerHandle) -> None:
    """INGEST_CREATE_TOPICS=true: the output and dead-letter topics are created with the broker's
    defaults, and the records go through."""
    topics = Topics.unique("create")
    await create_topics(broker.bootstrap_servers, {topics.input: 1})
    sent = await produce(broker.bootstrap_servers, topics.input, feed(6, bad_every=3))
    settings = settings_for(
        broker.bootstrap_servers, topics, idempotence=broker.idempotence, burst=True, create_topics=True
    )
    with capture_logs() as logs:
        assert await Ingestor(settings).run() == 0
    [created] = [e for e in logs if e["event"] == "topics.created"]
    assert set(created["topics"]) == {topics.output, topics.dlq}
    ledger = await Ledger.read(broker.bootstrap_servers, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
