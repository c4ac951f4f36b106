"""The settings object: the variables read, defaults, bad values and combinations refused at start-up
with one line, typos warned about, secrets kept out of logs, docs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import annotated_types
import pytest
from markertext import FIXTURES
from pydantic import ValidationError
from structlog.testing import capture_logs

from service.cli import main, make_parser
from service.core.kafka_names import broker_address_problem
from service.kafka.clients import Kafka
from service.settings import VARIABLES, Settings, variable_name
from service.tools.command import unknown_variables

CONFIGURATION = Path(__file__).parents[2] / "docs" / "configuration.md"
SEED = FIXTURES / "seed_2433.txt"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the defaults, whatever the environment of the test run."""
    for name in list(os.environ):
        if name.upper().startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)


def _aliases() -> list[str]:
    return list(VARIABLES)


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
    kwargs = Kafka.of(s).client_kwargs()
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


def test_every_setting_is_documented() -> None:
    text = CONFIGURATION.read_text()
    missing = [a for a in _aliases() if f"`{a}`" not in text]
    assert not missing, f"undocumented settings: {missing}"


# --- every number is bounded and finite --------------------------------------------------------------


def _numeric_fields() -> list[str]:
    return [
        name
        for name, info in Settings.model_fields.items()
        if {int, float} & {info.annotation, *getattr(info.annotation, "__args__", ())}
    ]


def _bounds(field: str) -> tuple[float, float, bool]:
    """(lowest, highest, whether the lowest itself is refused) of a numeric field."""
    low, high, open_low = None, None, False
    for rule in Settings.model_fields[field].metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            low, open_low = rule.gt, True
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    assert low is not None, f"{variable_name(field)} has no lower bound"
    assert high is not None, f"{variable_name(field)} has no upper bound"
    return float(low), float(high), open_low  # type: ignore[arg-type]


def _documented_range(field: str) -> str:
    low, high, open_low = _bounds(field)
    return f"range: over {low:g}, at most {high:g}" if open_low else f"range: {low:.0f} to {high:.0f}"


@pytest.mark.parametrize("field", _numeric_fields())
def test_every_number_is_bounded_and_its_range_is_documented(field: str) -> None:
    row = next(
        line
        for line in CONFIGURATION.read_text().splitlines()
        if line.startswith(f"| `{variable_name(field)}` |")
    )
    assert _documented_range(field) in row


_COMPANIONS: dict[str, Callable[[float], dict[str, str]]] = {
    # Settings that must move with a value for the combination checks to pass.
    "safety_min_records": lambda v: {"INGEST_SAFETY_WINDOW_RECORDS": str(int(min(max(v, 1000), 1_000_000)))},
    "safety_window_records": lambda v: {"INGEST_SAFETY_MIN_RECORDS": str(int(max(min(v, 100), 1)))},
    "retry_initial_seconds": lambda v: {"INGEST_RETRY_MAX_SECONDS": repr(min(max(v, 10.0), 600.0))},
    "retry_max_seconds": lambda v: {"INGEST_RETRY_INITIAL_SECONDS": repr(max(min(v, 0.2), 0.001))},
    "max_payload_bytes": lambda v: {"INGEST_MAX_BYTES_IN_FLIGHT": str(int(max(v, 64 * 1024 * 1024)))},
    "max_bytes_in_flight": lambda v: {"INGEST_MAX_PAYLOAD_BYTES": str(int(max(min(v, 1_000_000), 1)))},
}


@pytest.mark.parametrize("field", _numeric_fields())
def test_one_past_each_end_of_a_range_is_refused_and_each_end_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    low, high, open_low = _bounds(field)
    is_int = Settings.model_fields[field].annotation in (int, int | None)
    step = 1 if is_int else 0.001
    cases = [(high, True), (high + step, False), (low + step, True) if open_low else (low, True)]
    cases.append((low, False) if open_low else (low - step, False))
    for value, ok in cases:
        companions = _COMPANIONS[field](value) if field in _COMPANIONS else {}
        for name, companion in companions.items():
            monkeypatch.setenv(name, companion)
        monkeypatch.setenv(variable_name(field), str(int(value)) if is_int else repr(value))
        if ok:
            assert getattr(Settings(), field) == value
        else:
            assert main(["parse", str(SEED)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"marker-ingest: invalid setting {variable_name(field)}: should be "), err
            assert err.count("\n") == 1


@pytest.mark.parametrize(
    "field", [f for f in _numeric_fields() if "float" in str(Settings.model_fields[f].annotation)]
)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "1e400"])
def test_a_duration_or_ratio_that_is_not_finite_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], field: str, value: str
) -> None:
    monkeypatch.setenv(variable_name(field), value)
    assert main(["parse", str(SEED)]) == 2
    assert capsys.readouterr().err == (
        f"marker-ingest: invalid setting {variable_name(field)}: should be a finite number, got {value!r}\n"
    )


def test_an_integer_too_large_for_the_core_is_refused_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the bound, the C scanner raised OverflowError (a traceback) on every payload.
    monkeypatch.setenv("INGEST_MAX_RECORDS_PER_PAYLOAD", "99999999999999999999")
    monkeypatch.setenv("INGEST_BATCH_MAX_MESSAGES", "99999999999999999999")
    assert main(["parse", str(SEED)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "INGEST_MAX_RECORDS_PER_PAYLOAD: should be less than or equal to 1000000" in err
    assert "INGEST_BATCH_MAX_MESSAGES: should be less than or equal to 100000" in err


def test_a_huge_max_messages_flag_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--max-messages", "99999999999999999999"]) == 2
    assert capsys.readouterr().err.startswith(
        "marker-ingest: invalid setting --max-messages: should be less than or equal to 1000000000000"
    )


# --- which variables count ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("LOG_LEVEL", "debug", "log_level"),
        ("GROUP_ID", "x", "group_id"),
        ("HTTP_PORT", "8080", "http_port"),
        ("BURST", "1", "burst"),
        ("INPUT_TOPIC", "elsewhere", "input_topic"),
        ("input_topic", "elsewhere", "input_topic"),
        ("kafka_bootstrap_servers", "elsewhere:9092", "kafka_bootstrap_servers"),
        ("ingest_group_id", "x", "group_id"),
        ("Ingest_Http_Port", "8080", "http_port"),
        ("INGEST_KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092", "kafka_bootstrap_servers"),
    ],
)
def test_only_the_documented_variables_are_read(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(Settings(), field) == Settings.model_fields[field].default


def test_an_unprefixed_variable_does_not_stop_a_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert main(["parse", str(SEED)]) == 0
    assert "invalid" not in capsys.readouterr().err


def test_fields_are_given_by_name_in_python() -> None:
    s = Settings(kafka_bootstrap_servers="k1:9092", input_topic="in", max_payload_bytes=2048)
    assert (s.kafka_bootstrap_servers, s.input_topic, s.limits.max_payload_bytes) == ("k1:9092", "in", 2048)


def test_every_variable_is_kafka_or_ingest_and_the_limits_default_to_the_cores() -> None:
    assert all(name.startswith(("KAFKA_", "INGEST_")) for name in VARIABLES)
    assert VARIABLES["INGEST_INPUT_TOPIC"] == "input_topic"
    assert VARIABLES["KAFKA_BOOTSTRAP_SERVERS"] == "kafka_bootstrap_servers"
    from service.core.limits import Limits

    assert Settings().limits == Limits()


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("KAFKA_SECURITY_PROTOCOL", "plaintext", "kafka_security_protocol", "PLAINTEXT"),
        ("INGEST_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("INGEST_LOG_FORMAT", "JSON", "log_format", "json"),
        ("KAFKA_COMPRESSION_TYPE", "GZIP", "kafka_compression_type", "gzip"),
    ],
)
def test_choices_are_accepted_in_any_case(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(Settings(), field) == expected


def test_the_log_flags_are_accepted_in_any_case() -> None:
    args = make_parser().parse_args(["run", "--log-level", "debug", "--log-format", "JSON"])
    assert (args.log_level, args.log_format) == ("DEBUG", "json")


# --- bad values: one line, exit 2 ------------------------------------------------------------------


SASL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "u",
}


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {**SASL, "KAFKA_SASL_PASSWORD": ""},
            "invalid setting KAFKA_SASL_PASSWORD: must not be empty",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "invalid settings: KAFKA_SSL_CAFILE: cannot read '/nonexistent/ca.pem'",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"},
            "invalid setting KAFKA_BOOTSTRAP_SERVERS: the port of '127.0.0.1:99999' is not a number from 1 "
            "to 65535",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:abc"},
            "invalid setting KAFKA_BOOTSTRAP_SERVERS: the port of '127.0.0.1:abc' is not a number from 1 "
            "to 65535",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": ""},
            "invalid setting KAFKA_BOOTSTRAP_SERVERS: an empty broker address (expected HOST:PORT, "
            "comma-separated)",
        ),
        ({"INGEST_GROUP_ID": ""}, "invalid setting INGEST_GROUP_ID: must not be empty"),
        ({"INGEST_INPUT_TOPIC": ""}, "invalid setting INGEST_INPUT_TOPIC: must not be empty"),
        (
            {"INGEST_DLQ_TOPIC": "dead letters"},
            "invalid setting INGEST_DLQ_TOPIC: 'dead letters' is not a Kafka topic name (at most 249 of "
            "A-Z, a-z, 0-9, '.', '_', '-'; not '.' or '..')",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "TLS"},
            "invalid setting KAFKA_SECURITY_PROTOCOL: should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or "
            "'SASL_SSL', got 'TLS'",
        ),
        (
            {"INGEST_HTTP_PORT": "eighty"},
            "invalid setting INGEST_HTTP_PORT: should be a valid integer, unable to parse string as an "
            "integer, got 'eighty'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], line: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["parse", str(SEED)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"marker-ingest: {line}\n"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--input-topic", ""], "invalid setting --input-topic: must not be empty"),
        (["--group-id", ""], "invalid setting --group-id: must not be empty"),
        (
            ["--bootstrap-servers", "a:1,,b:2"],
            "invalid setting --bootstrap-servers: an empty broker address (expected HOST:PORT, "
            "comma-separated)",
        ),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_flag_and_run_exits_2(
    capsys: pytest.CaptureFixture[str], flags: list[str], line: str
) -> None:
    assert main(["run", *flags]) == 2
    assert capsys.readouterr().err == f"marker-ingest: {line}\n"


def test_several_bad_values_are_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INGEST_HTTP_PORT", "-1")
    monkeypatch.setenv("INGEST_BATCH_MAX_MESSAGES", "0")
    assert main(["parse", str(SEED)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("marker-ingest: invalid settings: ")
    assert "INGEST_HTTP_PORT: " in err
    assert "INGEST_BATCH_MAX_MESSAGES: " in err
    assert "settings: settings" not in err


def test_a_secret_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "swordfish")
    assert main(["parse", str(SEED)]) == 2
    err = capsys.readouterr().err
    assert "does not use SASL" in err
    assert "hunter2" not in err
    assert "swordfish" not in err


def test_a_file_that_is_not_a_ca_bundle_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(junk))
    assert main(["parse", str(SEED)]) == 2
    assert capsys.readouterr().err.startswith(
        "marker-ingest: invalid settings: KAFKA_SSL_CAFILE: not a CA bundle"
    )


@pytest.mark.parametrize(
    "address",
    ["kafka:9092", "10.0.0.1:19092", "[::1]:9092", "[fe80::1]:65535", "broker-1.example.com:1"],
)
def test_broker_addresses_the_client_accepts(address: str) -> None:
    assert broker_address_problem(address) is None


@pytest.mark.parametrize(
    "address", ["", ":9092", "kafka:", "kafka:0", "kafka:65536", "[::1", "[nope]:1", "a b:1", "[::1]x"]
)
def test_broker_addresses_the_client_refuses(address: str) -> None:
    assert broker_address_problem(address) is not None


@pytest.mark.parametrize(
    ("address", "line"),
    [
        ("127.0.0.1", "'127.0.0.1' has no port (expected HOST:PORT)"),
        ("kafka", "'kafka' has no port (expected HOST:PORT)"),
        ("[::1]", "'[::1]' has no port (expected HOST:PORT)"),
        ("::1", "'::1' has no port (expected [IPv6]:PORT for an IPv6 address)"),
    ],
)
def test_a_broker_address_without_a_port_is_refused_not_taken_as_9092(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], address: str, line: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"k1:9092,{address}")
    assert main(["parse", str(SEED)]) == 2
    assert capsys.readouterr().err == f"marker-ingest: invalid setting KAFKA_BOOTSTRAP_SERVERS: {line}\n"


def test_bad_settings_in_a_process_exit_2_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("INGEST_", "KAFKA_"))}
    for bad in ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, {**SASL, "KAFKA_SASL_PASSWORD": ""}):
        done = subprocess.run(
            [sys.executable, "-m", "service", "run"],
            capture_output=True,
            cwd=tmp_path,
            env={**env, **bad},
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count(b"\n") == 1, done.stderr
        assert done.stderr.startswith(b"marker-ingest: invalid setting")


# --- unknown variables: a warning with the nearest name ----------------------------------------------


def test_unknown_variables_are_found_with_the_nearest_setting() -> None:
    env = {
        "INGEST_OUTPUT_TOPC": "x",
        "KAFKA_BOOTSTRAP_SERVER": "x",
        "ingest_log_level": "debug",
        "INGEST_INPUT_TOPIC": "fine",
        "KAFKA_HEAP_OPTS": "-Xmx1G",
        "PATH": "/bin",
    }
    assert unknown_variables(env) == [
        ("INGEST_OUTPUT_TOPC", "INGEST_OUTPUT_TOPIC"),
        ("KAFKA_BOOTSTRAP_SERVER", "KAFKA_BOOTSTRAP_SERVERS"),
        ("KAFKA_HEAP_OPTS", None),
        ("ingest_log_level", "INGEST_LOG_LEVEL"),
    ]


def test_a_typo_is_warned_about_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INGEST_OUTPUT_TOPC", "x")
    assert main(["parse", str(SEED)]) == 0
    out, err = capsys.readouterr()
    assert (
        "marker-ingest: warning: unknown setting INGEST_OUTPUT_TOPC ignored "
        "(did you mean INGEST_OUTPUT_TOPIC?)\n" in err
    )
    assert "INGEST_OUTPUT_TOPC" not in out


def test_run_logs_a_typo_as_a_warning_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.delivery.app
    import service.ops.logs

    started: list[Settings] = []
    monkeypatch.setattr(service.ops.logs, "configure_logging", lambda *_: None)
    monkeypatch.setattr(service.delivery.app, "run_service", lambda s: started.append(s) or 0)
    monkeypatch.setenv("INGEST_MAX_MESAGES", "5")
    with capture_logs() as logs:
        assert main(["run"]) == 0
    assert len(started) == 1
    assert started[0].max_messages is None
    assert logs == [
        {
            "event": "settings.unknown_variable",
            "variable": "INGEST_MAX_MESAGES",
            "nearest": "INGEST_MAX_MESSAGES",
            "log_level": "warning",
        }
    ]


# --- help for the people running it ------------------------------------------------------------------


def test_run_help_describes_the_command_and_points_to_the_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "Run the service" in text
    assert "environment variables" in text
    assert "docs/configuration.md" in text


def test_help_is_written_for_users_not_from_the_module_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "translates arguments" not in text
    assert "article event" in text
    for command in ("parse", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert len(capsys.readouterr().out.split("\n\n")) > 2, f"{command} --help has no description"
