"""The mapping of Kafka failures to one line and a setting (``service.kafka.failures``), without I/O."""

from __future__ import annotations

import logging
import ssl

import pytest
from aiokafka import errors as ke

from service.kafka.clients import Kafka
from service.kafka.failures import Access, Kind, Stage, classify, classify_closed, fatal_at_startup
from service.ops.logs import hide_credentials
from service.settings import Settings

SASL = Access(protocol="SASL_SSL", mechanism="SCRAM-SHA-512", username="svc", cafile="/ca.pem")


def _verify_error(message: str, code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_message, exc.verify_code = message, code
    return exc


@pytest.mark.parametrize(
    ("exc", "kind", "setting", "words"),
    [
        (
            ke.SaslAuthenticationFailed("Invalid username or password"),
            Kind.AUTHENTICATION,
            "KAFKA_SASL_PASSWORD",
            "for user 'svc' with SCRAM-SHA-512: Invalid username or password",
        ),
        (ke.UnsupportedSaslMechanismError("x"), Kind.SASL_MECHANISM, "KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        (
            _verify_error("unable to get local issuer certificate", 20),
            Kind.CERTIFICATE,
            "KAFKA_SSL_CAFILE",
            "not signed by the CAs in /ca.pem",
        ),
        (
            _verify_error("IP address mismatch, certificate is not valid for '127.0.0.1'.", 64),
            Kind.CERTIFICATE,
            "KAFKA_SSL_CHECK_HOSTNAME",
            "not valid for the address",
        ),
        (_verify_error("certificate has expired", 10), Kind.CERTIFICATE, "KAFKA_SSL_CAFILE", "not valid now"),
        (ssl.SSLError(1, "WRONG_VERSION_NUMBER"), Kind.TLS, "KAFKA_SECURITY_PROTOCOL", "does this listener"),
    ],
)
def test_connection_failures_name_cause_and_setting(
    exc: BaseException, kind: Kind, setting: str, words: str
) -> None:
    failure = classify(exc, Stage.CONNECT, SASL)
    assert failure is not None
    assert failure.kind is kind
    assert setting in failure.setting
    assert words in failure.line
    assert failure.line.endswith(f"check {failure.setting}")
    assert "\n" not in failure.line


@pytest.mark.parametrize(
    ("exc", "stage", "topic", "resource", "operation"),
    [
        (ke.TopicAuthorizationFailedError(), Stage.SEND, "news.dlq", "topic news.dlq", "WRITE"),
        (ke.TopicAuthorizationFailedError({"news.raw"}), Stage.FETCH, None, "topic news.raw", "READ"),
        (ke.TopicAuthorizationFailedError(), Stage.CHECK_TOPICS, "news.raw", "topic news.raw", "DESCRIBE"),
        (ke.TopicAuthorizationFailedError("x"), Stage.CREATE_TOPICS, "a, b", "topic a, b", "CREATE"),
        (ke.GroupAuthorizationFailedError(), Stage.FETCH, None, "group g", "READ"),
        (ke.ClusterAuthorizationFailedError(), Stage.START_PRODUCER, None, "cluster", "IDEMPOTENT_WRITE"),
    ],
)
def test_authorization_names_resource_and_permission(
    exc: BaseException, stage: Stage, topic: str | None, resource: str, operation: str
) -> None:
    access = Access(username="svc", input_topic="news.raw", group_id="g")
    failure = classify(exc, stage, access, topic=topic)
    assert failure is not None
    assert failure.kind is Kind.AUTHORIZATION
    assert (failure.resource, failure.operation) == (resource, operation)
    assert f"User:svc lacks {operation} on {resource}" in failure.line


def test_idempotence_refusal_names_the_setting() -> None:
    failure = classify(ke.UnknownError(), Stage.START_PRODUCER, Access())
    assert failure is not None
    assert failure.setting == "KAFKA_ENABLE_IDEMPOTENCE"
    assert classify(ke.UnknownError(), Stage.START_PRODUCER, Access(idempotence=False)) is None


def test_a_broker_without_transactions_names_the_delivery_mode() -> None:
    """On Tansu, exactly-once cannot work: the line names INGEST_DELIVERY, not idempotence."""
    failure = classify(ke.UnknownError(), Stage.START_PRODUCER, Access(transactions=True))
    assert failure is not None
    assert failure.setting == "INGEST_DELIVERY"
    assert "exactly-once needs a broker with transactions" in failure.line


@pytest.mark.parametrize(
    "exc",
    [
        ke.KafkaConnectionError("Unable to bootstrap"),
        ke.RequestTimedOutError(),
        ke.NotLeaderForPartitionError(),
    ],
)
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert classify(exc, Stage.FETCH, SASL) is None
    assert classify(ConnectionRefusedError(111, "refused"), Stage.CONNECT, SASL) is None


def test_closed_connections_suggest_what_the_listener_expects() -> None:
    assert "require SASL" in classify_closed("metadata", Access(protocol="PLAINTEXT")).line
    assert "expect TLS" in classify_closed("connect", Access(protocol="SASL_PLAINTEXT")).line
    mtls = classify_closed("connect", Access(protocol="SSL", certfile="/c.pem"))
    assert "refuses the client certificate" in mtls.line
    assert "requires a client certificate" in classify_closed("connect", Access(protocol="SSL")).line
    reset = classify_closed("handshake", Access(protocol="SSL"))
    assert "may not speak TLS" in reset.line
    assert "KAFKA_SECURITY_PROTOCOL" in reset.setting


def test_a_sasl_handshake_refused_as_out_of_place_names_the_protocol() -> None:
    """A SASL client on a PLAINTEXT listener: the broker answers SaslHandshake with
    ILLEGAL_SASL_STATE. Final at once: no retry changes the listener's protocol."""
    failure = classify(ke.IllegalSaslStateError(), Stage.CONNECT, Access(protocol="SASL_PLAINTEXT"))
    assert failure is not None
    assert failure.kind is Kind.SECURITY_PROTOCOL
    assert "does not use SASL" in failure.line
    assert "KAFKA_SECURITY_PROTOCOL" in failure.setting
    assert fatal_at_startup(failure, 1)


def test_only_a_closed_connection_needs_confirming() -> None:
    closed = classify_closed("connect", Access(protocol="SSL"))
    assert not fatal_at_startup(closed, 2)
    assert fatal_at_startup(closed, 3)
    denied = classify(ke.SaslAuthenticationFailed(), Stage.CONNECT, SASL)
    assert denied is not None
    assert fatal_at_startup(denied, 1)


def test_hostname_check_is_on_by_default_and_off_warns(tmp_path: object) -> None:
    assert Settings().kafka_ssl_check_hostname is True
    assert Settings().warnings() == []
    off = Settings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False)
    assert "KAFKA_SSL_CHECK_HOSTNAME=false" in off.warnings()[0]
    assert Kafka.of(off).client_kwargs()["ssl_context"].check_hostname is False
    assert Kafka.of(Settings(kafka_security_protocol="SSL")).client_kwargs()["ssl_context"].check_hostname


def test_sasl_requests_are_hidden_from_debug_logs() -> None:
    record = logging.LogRecord(
        "aiokafka.conn",
        logging.DEBUG,
        "",
        0,
        "%s Request 3: %s",
        ("<conn>", "SaslAuthenticateRequest(b'\\x00u\\x00pw')"),
        None,
    )
    assert hide_credentials(record)
    assert "pw" not in record.getMessage()
    assert "SaslAuthenticateRequest(<credentials hidden>)" in record.getMessage()


def test_a_refused_transactional_id_names_it_and_the_prefix_setting() -> None:
    failure = classify(
        ke.TransactionalIdAuthorizationFailed(), Stage.START_PRODUCER, Access(username="svc"), topic="g.in.0"
    )
    assert failure is not None
    assert failure.kind is Kind.AUTHORIZATION
    assert (failure.resource, failure.operation) == ("transactional id g.in.0", "WRITE")
    assert failure.setting == "INGEST_TRANSACTIONAL_ID_PREFIX"
    assert "User:svc lacks WRITE on transactional id g.in.0" in failure.line
