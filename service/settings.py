"""One typed settings object, built once at start-up from the environment and CLI flags.

Each field is read from exactly one environment variable, named by ``variable_name``: ``kafka_*``
fields from ``KAFKA_*``, the others from ``INGEST_*`` (``input_topic`` from ``INGEST_INPUT_TOPIC``),
matched case-sensitively; no other name counts. In Python a field is given by its name
(``Settings(input_topic=...)``). Every variable is documented in docs/configuration.md with its default.
Invalid values and combinations fail here, at start-up, as a ``SettingsError`` whose one line names
the variables; every number has a documented range (finite: no ``inf`` or ``nan``); secrets are
``SecretStr`` and never logged or echoed. The Kafka clients' arguments are made of these settings in
``service.kafka.clients``; the commands warn of unknown variables (``service.tools.command``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import (
    AliasGenerator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas import defaults as contract
from service.core.kafka_names import broker_address_problem, topic_name_problem
from service.core.limits import Limits
from service.errors import SettingsError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
CompressionType = Literal["none", "gzip", "lz4", "zstd", "snappy"]
OffsetReset = Literal["earliest", "latest"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
DeliveryMode = Literal["at-least-once", "exactly-once"]

PREFIXES = ("KAFKA_", "INGEST_")
"""The environment variables that belong to marker-ingest start with one of these."""

_CHOICES: dict[str, tuple[str, ...]] = {
    "kafka_security_protocol": get_args(SecurityProtocol),
    "kafka_sasl_mechanism": get_args(SaslMechanism),
    "kafka_compression_type": get_args(CompressionType),
    "auto_offset_reset": get_args(OffsetReset),
    "log_format": get_args(LogFormat),
    "log_level": get_args(LogLevel),
    "delivery": get_args(DeliveryMode),
}
"""The fields that are a choice, accepted in any case."""

_CORE = Limits()
_MAX_RECORD_BYTES = 100 * 1024 * 1024
"""The largest record worth configuring for: Apache Kafka's default ``socket.request.max.bytes``
refuses any request larger, so no broker left at its defaults takes or serves such a record."""

REDRIVE_KEY_MIN_CHARS = 32
"""``INGEST_REDRIVE_KEY`` is at least this long: 32 random characters hold well over 128 bits."""


def variable_name(field: str) -> str:
    """The environment variable of a settings field: ``kafka_x`` -> ``KAFKA_X``, ``x`` -> ``INGEST_X``."""
    return field.upper() if field.startswith("kafka_") else f"INGEST_{field.upper()}"


class _DocumentedVariables(EnvSettingsSource):
    """The environment, by each field's variable only: never by a field's bare name."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.config = {**self.config, "validate_by_name": False, "populate_by_name": False}


class Settings(BaseSettings):
    """Everything marker-ingest can be told; each field's variable is ``variable_name(field)``."""

    model_config = SettingsConfigDict(
        alias_generator=AliasGenerator(validation_alias=variable_name),
        validate_by_name=True,
        validate_by_alias=True,
        case_sensitive=True,
        extra="ignore",
        frozen=True,
    )

    # Kafka connection
    kafka_bootstrap_servers: str = contract.BOOTSTRAP_SERVERS.value
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = Field(None, min_length=1)
    kafka_sasl_password: SecretStr | None = Field(None, min_length=1)
    kafka_ssl_cafile: str | None = Field(None, min_length=1)
    kafka_ssl_certfile: str | None = Field(None, min_length=1)
    kafka_ssl_keyfile: str | None = Field(None, min_length=1)
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_enable_idempotence: bool = True
    kafka_client_id: str = Field(contract.CLIENT_ID.value, min_length=1)
    kafka_request_timeout_ms: int = Field(30_000, ge=1_000, le=600_000)
    kafka_compression_type: CompressionType = "none"

    # Topics and group
    input_topic: str = contract.INPUT_TOPIC.value
    output_topic: str = contract.OUTPUT_TOPIC.value
    dlq_topic: str = contract.DLQ_TOPIC.value
    group_id: str = Field(contract.GROUP_ID.value, min_length=1)
    auto_offset_reset: OffsetReset = "earliest"
    create_topics: bool = False

    # Delivery
    delivery: DeliveryMode = "at-least-once"
    transactional_id_prefix: str | None = Field(None, min_length=1, max_length=200)

    # Core limits (their defaults are the core's)
    max_payload_bytes: int = Field(_CORE.max_payload_bytes, ge=1, le=_MAX_RECORD_BYTES)
    max_records_per_payload: int = Field(_CORE.max_records_per_payload, ge=1, le=1_000_000)
    max_title_chars: int = Field(_CORE.max_title_chars, ge=1, le=_MAX_RECORD_BYTES)
    max_text_chars: int = Field(_CORE.max_text_chars, ge=1, le=_MAX_RECORD_BYTES)
    max_dead_letter_raw_bytes: int = Field(_CORE.max_dead_letter_raw_bytes, ge=1024, le=_MAX_RECORD_BYTES)
    max_event_bytes: int = Field(_CORE.max_event_bytes, ge=64 * 1024, le=_MAX_RECORD_BYTES)

    # Batching, memory, timing
    batch_max_messages: int = Field(500, ge=1, le=100_000)
    batch_timeout_ms: int = Field(200, ge=0, le=60_000)
    max_bytes_in_flight: int = Field(64 * 1024 * 1024, ge=1024, le=16 * 1024**3)
    shutdown_grace_seconds: float = Field(20.0, gt=0, le=600, allow_inf_nan=False)
    retry_initial_seconds: float = Field(0.2, gt=0, le=60, allow_inf_nan=False)
    retry_max_seconds: float = Field(10.0, gt=0, le=600, allow_inf_nan=False)
    max_messages: int | None = Field(None, ge=1, le=10**12)
    burst: bool = False
    burst_idle_seconds: float = Field(3.0, gt=0, le=3600, allow_inf_nan=False)

    # Operations
    http_port: int = Field(0, ge=0, le=65535)
    # Loopback unless told otherwise: the endpoint has no authentication. Containers set 0.0.0.0.
    http_host: str = Field("127.0.0.1", min_length=1)
    log_format: LogFormat = "auto"
    log_level: LogLevel = "INFO"

    # Redrive: the key of the origin tags (service/core/origin.py, origin_tag)
    redrive_key: SecretStr | None = None

    # Safety switch
    safety_dlq_ratio: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    safety_window_records: int = Field(1000, ge=1, le=1_000_000)
    safety_min_records: int = Field(100, ge=1, le=1_000_000)
    safety_cooldown_seconds: float = Field(300.0, ge=0, le=86_400, allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then the documented environment variables; no other source."""
        return (init_settings, _DocumentedVariables(settings_cls))

    @field_validator(
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_compression_type",
        "auto_offset_reset",
        "log_format",
        "log_level",
        "delivery",
        mode="before",
    )
    @classmethod
    def _any_case(cls, value: object, info: ValidationInfo) -> object:
        """A choice in any case (``plaintext``, ``debug``); anything else is left for the error."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        choices = _CHOICES[info.field_name]
        return next((c for c in choices if c.lower() == value.strip().lower()), value)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _brokers(cls, value: str) -> str:
        for address in value.split(","):
            if (problem := broker_address_problem(address.strip())) is not None:
                raise ValueError(problem)
        return value

    @field_validator("redrive_key")
    @classmethod
    def _redrive_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < REDRIVE_KEY_MIN_CHARS:
            raise ValueError(
                f"must be at least {REDRIVE_KEY_MIN_CHARS} characters (make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("input_topic", "output_topic", "dlq_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if (problem := topic_name_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        problems: list[str] = []
        proto = self.kafka_security_protocol
        sasl = proto.startswith("SASL_")
        if sasl:
            if self.kafka_sasl_mechanism is None:
                problems.append(f"KAFKA_SECURITY_PROTOCOL={proto} needs KAFKA_SASL_MECHANISM")
            if not self.kafka_sasl_username or self.kafka_sasl_password is None:
                problems.append(
                    f"KAFKA_SECURITY_PROTOCOL={proto} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
        elif self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password is not None:
            problems.append(f"SASL settings are given but KAFKA_SECURITY_PROTOCOL={proto} does not use SASL")
        uses_ssl = proto in ("SSL", "SASL_SSL")
        ssl_files = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        if not uses_ssl and any(ssl_files.values()):
            problems.append(
                f"KAFKA_SSL_* files are given but KAFKA_SECURITY_PROTOCOL={proto} does not use SSL"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            problems.append("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        problems += [
            f"{name}: cannot read {path!r}"
            for name, path in ssl_files.items()
            if path and not _readable(path)
        ]
        if uses_ssl and not problems:
            problems += self._ssl_problems()
        topics = {self.input_topic, self.output_topic, self.dlq_topic}
        if len(topics) != 3:
            problems.append("INGEST_INPUT_TOPIC, INGEST_OUTPUT_TOPIC and INGEST_DLQ_TOPIC must all differ")
        if self.retry_max_seconds < self.retry_initial_seconds:
            problems.append("INGEST_RETRY_MAX_SECONDS must be at least INGEST_RETRY_INITIAL_SECONDS")
        if self.max_bytes_in_flight < self.max_payload_bytes:
            problems.append("INGEST_MAX_BYTES_IN_FLIGHT must be at least INGEST_MAX_PAYLOAD_BYTES")
        if self.delivery == "exactly-once" and not self.kafka_enable_idempotence:
            problems.append("INGEST_DELIVERY=exactly-once needs KAFKA_ENABLE_IDEMPOTENCE=true")
        if self.safety_min_records > self.safety_window_records:
            problems.append("INGEST_SAFETY_MIN_RECORDS must not exceed INGEST_SAFETY_WINDOW_RECORDS")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _ssl_problems(self) -> list[str]:
        """Load the SSL files as the clients will, so that a bad file fails here, named."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        problems = []
        if self.kafka_ssl_cafile:
            try:
                context.load_verify_locations(cafile=self.kafka_ssl_cafile)
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(f"KAFKA_SSL_CAFILE: not a CA bundle: {_ssl_reason(exc)}")
        if self.kafka_ssl_certfile and self.kafka_ssl_keyfile:
            password = self.kafka_ssl_key_password
            try:
                context.load_cert_chain(
                    self.kafka_ssl_certfile,
                    self.kafka_ssl_keyfile,
                    password.get_secret_value() if password is not None else None,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(
                    "KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE: not a certificate and its key (or a wrong "
                    f"KAFKA_SSL_KEY_PASSWORD): {_ssl_reason(exc)}"
                )
        return problems

    def transactional_id(self, partition: int) -> str:
        """The transactional id of the producer that writes the events of one input partition (in
        ``exactly-once`` delivery): stable, so the next owner of the partition fences the last."""
        prefix = self.transactional_id_prefix or self.group_id
        return f"{prefix}.{self.input_topic}.{partition}"

    @property
    def limits(self) -> Limits:
        """The core's limits."""
        return Limits(
            max_payload_bytes=self.max_payload_bytes,
            max_records_per_payload=self.max_records_per_payload,
            max_title_chars=self.max_title_chars,
            max_text_chars=self.max_text_chars,
            max_dead_letter_raw_bytes=self.max_dead_letter_raw_bytes,
            max_event_bytes=self.max_event_bytes,
        )

    def warnings(self) -> list[str]:
        """Settings that are valid but weaken security, one line each, to log at start-up."""
        if not self.kafka_ssl_check_hostname and self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            return [
                "KAFKA_SSL_CHECK_HOSTNAME=false: the broker's certificate is not checked against the "
                "address connected to; any certificate from a trusted CA is accepted"
            ]
        return []

    def redacted(self) -> dict[str, Any]:
        """The effective settings for the start-up log line: secrets shown as '**********'."""
        return {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in self.__dict__.items()}


VARIABLES: dict[str, str] = {variable_name(field): field for field in Settings.model_fields}
"""Every environment variable marker-ingest reads, and the field it sets."""

_SECRETS = frozenset(
    name
    for name, info in Settings.model_fields.items()
    if SecretStr in getattr(info.annotation, "__args__", ())
)


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(reason)


def load_settings(
    overrides: Mapping[str, Any] | None = None, *, flags: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, with ``overrides`` (by field name) on top.

    ``flags`` maps the fields given by a command-line flag to the flag, so that an error names what
    the user typed. Raises ``SettingsError`` when the settings are invalid.
    """
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, flags or {})) from None


def describe_errors(exc: ValidationError, flags: Mapping[str, str]) -> str:
    """One line for a settings ``ValidationError``: ``invalid setting NAME: reason`` (or several).

    A value is echoed unless it is a secret; the variable is named, or the flag that gave it.
    """
    parts = []
    for err in exc.errors():
        reason = _reason(err)
        if not err["loc"]:
            parts.append(reason)
            continue
        field = VARIABLES.get(str(err["loc"][0]), str(err["loc"][0]))
        name = flags.get(field) or variable_name(field)
        parts.append(f"{name}: {reason}")
    if len(parts) == 1 and exc.errors()[0]["loc"]:
        return f"invalid setting {parts[0]}"
    return "invalid settings: " + "; ".join(parts)


def _reason(err: Any) -> str:
    """pydantic's message, shorter, with the value given unless it is a secret."""
    if err["type"] == "value_error" or not err["loc"]:
        return str(err["msg"]).removeprefix("Value error, ")
    if err["type"] in ("string_too_short", "too_short") and err.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    message = str(err["msg"]).removeprefix("Input ")
    field = VARIABLES.get(str(err["loc"][0]), str(err["loc"][0]))
    value = err.get("input")
    if field in _SECRETS or not isinstance(value, str | int | float | bool):
        return message
    shown = repr(value if not isinstance(value, str) or len(value) <= 60 else value[:60] + "...")
    return f"{message}, got {shown}"
