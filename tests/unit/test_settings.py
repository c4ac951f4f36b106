"""The settings object: defaults, combinations refused at start-up, secrets kept out of logs, docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from service.cli import main
from service.settings import Settings

README = Path(__file__).parents[2] / "README.md"


def _aliases() -> list[str]:
    out = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert alias is not None
        out.append(str(alias.choices[0]))  # type: ignore[union-attr]
    return out


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("INGEST_INPUT_TOPIC", "in")
    monkeypatch.setenv("INGEST_MAX_PAYLOAD_BYTES", "2048")
    monkeypatch.setenv("KAFKA_ENABLE_IDEMPOTENCE", "false")
    s = Settings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.input_topic == "in"
    assert s.limits.max_payload_bytes == 2048
    assert s.kafka_enable_idempotence is False


def test_defaults_start_from_the_earliest_offset_with_idempotence() -> None:
    s = Settings()
    assert s.auto_offset_reset == "earliest"
    assert s.kafka_enable_idempotence is True
    assert len({s.input_topic, s.output_topic, s.dlq_topic}) == 3


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
            "KAFKA_SASL_USERNAME",
        ),
        ({"kafka_sasl_username": "u"}, "does not use SASL"),
        ({"kafka_ssl_cafile": "/ca.pem"}, "does not use SSL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "go together"),
        ({"output_topic": "news.raw"}, "must all differ"),
        ({"retry_initial_seconds": 5, "retry_max_seconds": 1}, "INGEST_RETRY_MAX_SECONDS"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ],
)
def test_invalid_combinations_fail_with_a_clear_message(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**values)  # type: ignore[arg-type]
    assert needle.lower() in str(info.value).lower()


def test_sasl_scram_settings_reach_the_client_and_stay_out_of_logs() -> None:
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ingest",
        kafka_sasl_password="hunter2",  # type: ignore[arg-type]
    )
    kwargs = s.kafka_client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.redacted())
    assert s.redacted()["kafka_sasl_password"] == "**********"


def test_run_with_invalid_settings_exits_2_and_names_the_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-value")
    with capture_logs() as logs:
        assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "KAFKA_SASL_MECHANISM" in err
    assert "s3cret-value" not in err
    assert logs == []


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [a for a in _aliases() if f"`{a}`" not in text]
    assert not missing, f"undocumented settings: {missing}"
