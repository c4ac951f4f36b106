"""One typed settings object, built once at start-up from the environment and CLI flags.

Every variable is documented in the README with its default. Invalid combinations fail here, at
start-up, with a message that names the variables; secrets are ``SecretStr`` and never logged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.limits import Limits

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """Everything marker-ingest can be told. Field names mirror the environment variables."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # Kafka connection
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers")
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol")
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism")
    )
    kafka_sasl_username: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username")
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password")
    )
    kafka_ssl_cafile: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE", "kafka_ssl_cafile")
    )
    kafka_ssl_certfile: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile")
    )
    kafka_ssl_keyfile: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile")
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SSL_KEY_PASSWORD", "kafka_ssl_key_password")
    )
    kafka_enable_idempotence: bool = Field(
        True, validation_alias=AliasChoices("KAFKA_ENABLE_IDEMPOTENCE", "kafka_enable_idempotence")
    )
    kafka_client_id: str = Field(
        "marker-ingest", validation_alias=AliasChoices("KAFKA_CLIENT_ID", "kafka_client_id")
    )
    kafka_request_timeout_ms: int = Field(
        30_000,
        ge=1_000,
        validation_alias=AliasChoices("KAFKA_REQUEST_TIMEOUT_MS", "kafka_request_timeout_ms"),
    )
    kafka_compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field(
        "none", validation_alias=AliasChoices("KAFKA_COMPRESSION_TYPE", "kafka_compression_type")
    )

    # Topics and group
    input_topic: str = Field("news.raw", validation_alias=AliasChoices("INGEST_INPUT_TOPIC", "input_topic"))
    output_topic: str = Field(
        "news.articles", validation_alias=AliasChoices("INGEST_OUTPUT_TOPIC", "output_topic")
    )
    dlq_topic: str = Field(
        "news.dead-letters", validation_alias=AliasChoices("INGEST_DLQ_TOPIC", "dlq_topic")
    )
    group_id: str = Field("marker-ingest", validation_alias=AliasChoices("INGEST_GROUP_ID", "group_id"))
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", validation_alias=AliasChoices("INGEST_AUTO_OFFSET_RESET", "auto_offset_reset")
    )
    create_topics: bool = Field(False, validation_alias=AliasChoices("INGEST_CREATE_TOPICS", "create_topics"))

    # Core limits
    max_payload_bytes: int = Field(
        1_000_000, ge=1, validation_alias=AliasChoices("INGEST_MAX_PAYLOAD_BYTES", "max_payload_bytes")
    )
    max_records_per_payload: int = Field(
        10_000,
        ge=1,
        validation_alias=AliasChoices("INGEST_MAX_RECORDS_PER_PAYLOAD", "max_records_per_payload"),
    )
    max_title_chars: int = Field(
        1_000, ge=1, validation_alias=AliasChoices("INGEST_MAX_TITLE_CHARS", "max_title_chars")
    )
    max_text_chars: int = Field(
        500_000, ge=1, validation_alias=AliasChoices("INGEST_MAX_TEXT_CHARS", "max_text_chars")
    )
    max_dead_letter_raw_bytes: int = Field(
        256 * 1024,
        ge=1024,
        validation_alias=AliasChoices("INGEST_MAX_DEAD_LETTER_RAW_BYTES", "max_dead_letter_raw_bytes"),
    )

    max_event_bytes: int = Field(
        1_000_000, ge=64 * 1024, validation_alias=AliasChoices("INGEST_MAX_EVENT_BYTES", "max_event_bytes")
    )

    # Batching, memory, timing
    batch_max_messages: int = Field(
        500, ge=1, validation_alias=AliasChoices("INGEST_BATCH_MAX_MESSAGES", "batch_max_messages")
    )
    batch_timeout_ms: int = Field(
        200, ge=0, validation_alias=AliasChoices("INGEST_BATCH_TIMEOUT_MS", "batch_timeout_ms")
    )
    max_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices("INGEST_MAX_BYTES_IN_FLIGHT", "max_bytes_in_flight"),
    )
    shutdown_grace_seconds: float = Field(
        20.0, gt=0, validation_alias=AliasChoices("INGEST_SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds")
    )
    retry_initial_seconds: float = Field(
        0.2, gt=0, validation_alias=AliasChoices("INGEST_RETRY_INITIAL_SECONDS", "retry_initial_seconds")
    )
    retry_max_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("INGEST_RETRY_MAX_SECONDS", "retry_max_seconds")
    )
    max_messages: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("INGEST_MAX_MESSAGES", "max_messages")
    )
    burst: bool = Field(False, validation_alias=AliasChoices("INGEST_BURST", "burst"))
    burst_idle_seconds: float = Field(
        3.0, gt=0, validation_alias=AliasChoices("INGEST_BURST_IDLE_SECONDS", "burst_idle_seconds")
    )

    # Operations
    http_port: int = Field(0, ge=0, le=65535, validation_alias=AliasChoices("INGEST_HTTP_PORT", "http_port"))
    http_host: str = Field(
        "0.0.0.0",  # noqa: S104 - the probes and the scraper come from outside the container
        min_length=1,
        validation_alias=AliasChoices("INGEST_HTTP_HOST", "http_host"),
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", validation_alias=AliasChoices("INGEST_LOG_FORMAT", "log_format")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=AliasChoices("INGEST_LOG_LEVEL", "log_level")
    )

    # Safety switch
    safety_dlq_ratio: float | None = Field(
        None, gt=0, le=1, validation_alias=AliasChoices("INGEST_SAFETY_DLQ_RATIO", "safety_dlq_ratio")
    )
    safety_window_records: int = Field(
        1000, ge=1, validation_alias=AliasChoices("INGEST_SAFETY_WINDOW_RECORDS", "safety_window_records")
    )
    safety_min_records: int = Field(
        100, ge=1, validation_alias=AliasChoices("INGEST_SAFETY_MIN_RECORDS", "safety_min_records")
    )
    safety_cooldown_seconds: float = Field(
        300.0,
        ge=0,
        validation_alias=AliasChoices("INGEST_SAFETY_COOLDOWN_SECONDS", "safety_cooldown_seconds"),
    )

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
        elif self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password:
            problems.append(f"SASL settings are given but KAFKA_SECURITY_PROTOCOL={proto} does not use SASL")
        uses_ssl = proto in ("SSL", "SASL_SSL")
        ssl_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not uses_ssl and any(ssl_files):
            problems.append(
                f"KAFKA_SSL_* files are given but KAFKA_SECURITY_PROTOCOL={proto} does not use SSL"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            problems.append("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        topics = {self.input_topic, self.output_topic, self.dlq_topic}
        if len(topics) != 3:
            problems.append("INGEST_INPUT_TOPIC, INGEST_OUTPUT_TOPIC and INGEST_DLQ_TOPIC must all differ")
        if self.retry_max_seconds < self.retry_initial_seconds:
            problems.append("INGEST_RETRY_MAX_SECONDS must be at least INGEST_RETRY_INITIAL_SECONDS")
        if self.max_bytes_in_flight < self.max_payload_bytes:
            problems.append("INGEST_MAX_BYTES_IN_FLIGHT must be at least INGEST_MAX_PAYLOAD_BYTES")
        if self.safety_min_records > self.safety_window_records:
            problems.append("INGEST_SAFETY_MIN_RECORDS must not exceed INGEST_SAFETY_WINDOW_RECORDS")
        if problems:
            raise ValueError("; ".join(problems))
        return self

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

    def redacted(self) -> dict[str, Any]:
        """The effective settings for the start-up log line: secrets shown as '**********'."""
        return {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in self.__dict__.items()}

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection and security arguments shared by aiokafka's consumer, producer and admin."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "client_id": self.kafka_client_id,
            "security_protocol": self.kafka_security_protocol,
            "request_timeout_ms": self.kafka_request_timeout_ms,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
                password=self.kafka_ssl_key_password.get_secret_value()
                if self.kafka_ssl_key_password
                else None,
            )
        if self.kafka_security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return kwargs
