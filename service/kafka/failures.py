"""Which Kafka failures retrying cannot cure, and the one line that tells the operator what to fix.

aiokafka reports most of them badly: a refused password, an untrusted certificate or a mechanism the
broker does not offer all end as ``KafkaConnectionError("Unable to bootstrap from ...")``, the cause
only logged. The shell therefore probes a failed connection itself (``service.kafka.connection``) and
hands the probe's exception here. This module maps every foreign exception at one boundary,
``classify``, to a ``Failure`` or to None (transient: retry with backoff)::

    Failure                      a configuration or credential problem; one line, a setting to check
    ├── authentication           SASL refused the username or password (bad password, unknown user)
    ├── sasl_mechanism           the broker does not offer KAFKA_SASL_MECHANISM
    ├── certificate              the broker's certificate: untrusted CA, wrong host, expired
    ├── tls                      a TLS handshake that failed otherwise (does the listener speak TLS?)
    ├── refused_connection       the broker closed the connection at once (client certificate, protocol)
    ├── security_protocol        the listener speaks another protocol than KAFKA_SECURITY_PROTOCOL
    ├── idempotence              the broker refused the idempotent producer (InitProducerId)
    └── authorization            an ACL is missing: which operation on which topic, group or cluster

Pure: no I/O; aiokafka is imported for its exception classes only.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import StrEnum

from aiokafka import errors as ke

from service.errors import Misconfigured
from service.settings import Settings


class Stage(StrEnum):
    """What the client was doing when it failed; decides which permission an ACL error lacks."""

    CONNECT = "connect"
    CHECK_TOPICS = "check_topics"
    CREATE_TOPICS = "create_topics"
    START_PRODUCER = "start_producer"
    FETCH = "fetch"
    COMMIT = "commit"
    SEND = "send"


class Kind(StrEnum):
    """The kinds of ``Failure`` (the module docstring draws them)."""

    AUTHENTICATION = "authentication"
    SASL_MECHANISM = "sasl_mechanism"
    CERTIFICATE = "certificate"
    TLS = "tls"
    REFUSED_CONNECTION = "refused_connection"
    SECURITY_PROTOCOL = "security_protocol"
    IDEMPOTENCE = "idempotence"
    AUTHORIZATION = "authorization"


@dataclass(frozen=True, slots=True)
class Access:
    """What the client connects as: the settings a failure's line names (never a secret)."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    check_hostname: bool = True
    idempotence: bool = True
    transactions: bool = False
    input_topic: str = ""
    group_id: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """A problem retrying cannot cure. ``line`` is the one line to log or print."""

    kind: Kind
    cause: str
    """What went wrong, with the broker's or the TLS library's words."""
    setting: str
    """The setting(s) to check, comma-separated."""
    resource: str | None = None
    """For ``authorization``: ``topic NAME``, ``group NAME`` or ``cluster``."""
    operation: str | None = None
    """For ``authorization``: the missing permission (``WRITE``, ``READ``, ``CREATE``, ...)."""

    @property
    def line(self) -> str:
        """``CAUSE; check SETTING``."""
        return f"{self.cause}; check {self.setting}"

    def fields(self) -> dict[str, str]:
        """The failure as log fields."""
        out = {"cause": self.kind.value, "setting": self.setting, "detail": self.cause}
        if self.resource is not None:
            out["resource"] = self.resource
        if self.operation is not None:
            out["missing_permission"] = self.operation
        return out

    def error(self) -> Misconfigured:
        """The failure as the error that stops a command (exit 2)."""
        return Misconfigured(self.line, self.fields())


_AUTHORIZATION = (
    ke.TopicAuthorizationFailedError,
    ke.GroupAuthorizationFailedError,
    ke.ClusterAuthorizationFailedError,
    ke.TransactionalIdAuthorizationFailed,
)
_SASL_SETTINGS = "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD"
_CA_SETTINGS = "KAFKA_SSL_CAFILE"
_CLIENT_CERT = "KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE"
_PERMISSION = {
    Stage.CHECK_TOPICS: "DESCRIBE",
    Stage.CREATE_TOPICS: "CREATE",
    Stage.FETCH: "READ",
    Stage.COMMIT: "READ",
    Stage.SEND: "WRITE",
    Stage.START_PRODUCER: "IDEMPOTENT_WRITE",
    Stage.CONNECT: "DESCRIBE",
}


def classify(exc: BaseException, stage: Stage, access: Access, *, topic: str | None = None) -> Failure | None:
    """The ``Failure`` behind ``exc`` (raised by a client, or by the connection probe, at ``stage``;
    ``topic`` is the topic it concerned, if one); None when it may pass and is worth retrying."""
    if isinstance(exc, ke.SaslAuthenticationFailed | ke.AuthenticationFailedError):
        who = f"user {access.username!r}" if access.username else "the user"
        return Failure(
            Kind.AUTHENTICATION,
            f"SASL authentication failed for {who} with {access.mechanism}: {_broker_words(exc)}",
            _SASL_SETTINGS,
        )
    if isinstance(exc, ke.UnsupportedSaslMechanismError | ke.AuthenticationMethodNotSupported):
        return Failure(
            Kind.SASL_MECHANISM,
            f"the broker does not support SASL mechanism {access.mechanism} on this listener",
            "KAFKA_SASL_MECHANISM",
        )
    if isinstance(exc, ke.IllegalSaslStateError) and stage is Stage.CONNECT:
        return Failure(
            Kind.SECURITY_PROTOCOL,
            f"the broker refused the SASL handshake as out of place: this listener does not use SASL, "
            f"but KAFKA_SECURITY_PROTOCOL={access.protocol}",
            "KAFKA_SECURITY_PROTOCOL, KAFKA_BOOTSTRAP_SERVERS",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _certificate(exc, access)
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        return Failure(
            Kind.TLS,
            f"the TLS handshake with the broker failed ({reason}): does this listener speak TLS?",
            "KAFKA_SECURITY_PROTOCOL, KAFKA_BOOTSTRAP_SERVERS",
        )
    if isinstance(exc, _AUTHORIZATION):
        return _authorization(exc, stage, access, topic)
    if (
        stage is Stage.START_PRODUCER
        and access.idempotence
        and isinstance(
            exc, ke.UnknownError | ke.UnsupportedVersionError | ke.UnsupportedForMessageFormatError
        )
    ):
        if access.transactions:
            return Failure(
                Kind.IDEMPOTENCE,
                f"the broker refused the idempotent producer (InitProducerId: {type(exc).__name__}); "
                "INGEST_DELIVERY=exactly-once needs a broker with transactions (Apache Kafka)",
                "INGEST_DELIVERY",
            )
        return Failure(
            Kind.IDEMPOTENCE,
            f"the broker refused the idempotent producer (InitProducerId: {type(exc).__name__}); "
            "a broker without idempotence support needs KAFKA_ENABLE_IDEMPOTENCE=false",
            "KAFKA_ENABLE_IDEMPOTENCE",
        )
    return None


def fatal_at_startup(failure: Failure, times_seen: int) -> bool:
    """Whether start-up gives up on ``failure``, seen ``times_seen`` times in a row.

    A connection the broker closed at once may be a broker shutting down, so it must repeat three
    times; every other failure is final the first time.
    """
    return failure.kind is not Kind.REFUSED_CONNECTION or times_seen >= 3


def access_from(settings: Settings) -> Access:
    """What the settings connect as."""
    return Access(
        protocol=settings.kafka_security_protocol,
        mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username,
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        check_hostname=settings.kafka_ssl_check_hostname,
        idempotence=settings.kafka_enable_idempotence,
        transactions=settings.delivery == "exactly-once",
        input_topic=settings.input_topic,
        group_id=settings.group_id,
    )


def classify_closed(stage_done: str, access: Access) -> Failure:
    """The ``Failure`` of a probe whose connection the broker closed at once, every time.

    ``stage_done`` is how far it got: ``handshake`` (reset during the TLS handshake: the listener does
    not speak TLS), ``connect`` (closed during the first request: the listener expects TLS, or
    refuses the client certificate) or ``metadata`` (closed after the first request: the listener
    expects SASL).
    """
    proto = access.protocol
    uses_tls = proto in ("SSL", "SASL_SSL")
    if stage_done == "handshake":
        return Failure(
            Kind.REFUSED_CONNECTION,
            f"the broker reset the connection during the TLS handshake: this listener may not speak "
            f"TLS, but KAFKA_SECURITY_PROTOCOL={proto}",
            "KAFKA_SECURITY_PROTOCOL, KAFKA_BOOTSTRAP_SERVERS",
        )
    if stage_done == "metadata" and not proto.startswith("SASL_"):
        return Failure(
            Kind.REFUSED_CONNECTION,
            f"the broker closed the connection after its first answer: this listener may require SASL, "
            f"not {proto}",
            "KAFKA_SECURITY_PROTOCOL, KAFKA_BOOTSTRAP_SERVERS",
        )
    if uses_tls:
        mine = "refuses the client certificate" if access.certfile else "requires a client certificate"
        return Failure(
            Kind.REFUSED_CONNECTION,
            f"the broker closed the connection right after the TLS handshake: it {mine} (mutual TLS), "
            "or the certificate has expired or is not signed by a CA it trusts",
            _CLIENT_CERT,
        )
    return Failure(
        Kind.REFUSED_CONNECTION,
        f"the broker closed the connection during the first request: this listener may expect TLS, not "
        f"{proto}",
        "KAFKA_SECURITY_PROTOCOL, KAFKA_BOOTSTRAP_SERVERS",
    )


def _certificate(exc: ssl.SSLCertVerificationError, access: Access) -> Failure:
    message = exc.verify_message or str(exc)
    code = exc.verify_code
    if "mismatch" in message or "hostname" in message.lower():
        return Failure(
            Kind.CERTIFICATE,
            f"the broker's certificate is not valid for the address in KAFKA_BOOTSTRAP_SERVERS ({message})",
            "KAFKA_BOOTSTRAP_SERVERS, KAFKA_SSL_CHECK_HOSTNAME",
        )
    if "expired" in message or "not yet valid" in message or code in (9, 10):
        return Failure(
            Kind.CERTIFICATE,
            f"the broker's certificate is not valid now ({message}): the broker needs a new one",
            _CA_SETTINGS,
        )
    where = f"the CAs in {access.cafile}" if access.cafile else "the system's CAs"
    return Failure(
        Kind.CERTIFICATE,
        f"the broker's certificate is not signed by {where} ({message})",
        _CA_SETTINGS,
    )


def _authorization(exc: BaseException, stage: Stage, access: Access, topic: str | None) -> Failure:
    operation = _PERMISSION[stage]
    if isinstance(exc, ke.GroupAuthorizationFailedError):
        resource, setting, operation = f"group {access.group_id}", "INGEST_GROUP_ID", "READ"
    elif isinstance(exc, ke.TransactionalIdAuthorizationFailed):
        resource, setting, operation = f"transactional id {topic}", "INGEST_TRANSACTIONAL_ID_PREFIX", "WRITE"
    elif isinstance(exc, ke.ClusterAuthorizationFailedError):
        resource = "cluster"
        setting = "KAFKA_ENABLE_IDEMPOTENCE" if stage is Stage.START_PRODUCER else "KAFKA_SASL_USERNAME"
        if stage is not Stage.START_PRODUCER:
            operation = "CREATE" if stage is Stage.CREATE_TOPICS else "DESCRIBE"
    else:
        name = topic or _topic_in(exc) or access.input_topic
        resource, setting = f"topic {name}", "the ACLs of the service's principal"
    who = _principal(access)
    return Failure(
        Kind.AUTHORIZATION,
        f"{who} lacks {operation} on {resource} ({type(exc).__name__})",
        setting if setting.startswith(("KAFKA_", "INGEST_")) else f"{setting} ({who})",
        resource=resource,
        operation=operation,
    )


def _principal(access: Access) -> str:
    if access.username:
        return f"principal User:{access.username}"
    if access.certfile:
        return "the principal of KAFKA_SSL_CERTFILE"
    return "the service's principal"


def _topic_in(exc: BaseException) -> str | None:
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, set | frozenset | list | tuple) and len(arg) == 1:
        return str(next(iter(arg)))
    return None


def _broker_words(exc: BaseException) -> str:
    """The broker's message, without aiokafka's ``[Error 58] SaslAuthenticationFailed:`` prefix."""
    text = str(exc)
    head, sep, tail = text.partition(": ")
    return tail if sep and head.startswith("[Error") else text
