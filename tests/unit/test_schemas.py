"""The published contract files: in step with the models, and what the service writes validates."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from schemas import generate
from schemas.errors import ErrorCode
from schemas.events import ARTICLE_SCHEMA_FILE, DEAD_LETTER_SCHEMA_FILE
from service.core.events import Outcome, Source, process_payload
from service.core.limits import Limits
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
SEED = (ROOT / "tests" / "fixtures" / "seed_2433.txt").read_bytes()
SAMPLES = sorted((ROOT / "service" / "samples" / "feed").glob("*.txt"))
NOW = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

# jsonschema only checks "date-time" with an optional package installed; check it here instead.
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    dt.datetime.fromisoformat(value)
    return _RFC3339.match(value) is not None


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


ARTICLE = _validator(ARTICLE_SCHEMA_FILE)
DEAD_LETTER = _validator(DEAD_LETTER_SCHEMA_FILE)


def _asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SCHEMAS / generate.ASYNCAPI_FILE).read_text(encoding="utf-8"))
    return doc


def _outcomes(
    value: bytes | None, *, key: bytes | None = b"feed-7", limits: Limits | None = None
) -> list[Outcome]:
    source = Source("news.raw", 3, 42, timestamp_ms=1_706_054_400_123, key=key)
    return process_payload(value, source, limits or Limits(), now=NOW, version="0.1.0")


def _errors(validator: Draft202012Validator, event: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(event)]


def test_committed_schema_files_are_what_the_models_generate() -> None:
    stale = [str(path.relative_to(ROOT)) for path in generate.stale_files()]
    assert not stale, f"out of date, run `python -m schemas.generate` and commit: {stale}"


def test_check_mode_names_the_file_that_differs(tmp_path: Path) -> None:
    for name, text in generate.render().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert generate.stale_files(tmp_path) == []
    (tmp_path / generate.ASYNCAPI_FILE).write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    (tmp_path / ARTICLE_SCHEMA_FILE).unlink()
    assert sorted(p.name for p in generate.stale_files(tmp_path)) == sorted(
        [generate.ASYNCAPI_FILE, ARTICLE_SCHEMA_FILE]
    )


def test_schemas_are_identified_and_document_every_error_code() -> None:
    for validator, schema_id in (
        (ARTICLE, "urn:marker-ingest:schema:article-ingested:v1"),
        (DEAD_LETTER, "urn:marker-ingest:schema:record-dead-lettered:v1"),
    ):
        assert validator.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert validator.schema["$id"] == schema_id
    codes = DEAD_LETTER.schema["$defs"]["ErrorCode"]["oneOf"]
    assert {c["const"]: c["description"] for c in codes} == {c.value: c.description for c in ErrorCode}


def test_asyncapi_names_the_three_channels_at_the_default_topics() -> None:
    doc = _asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    fields = Settings.model_fields
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == {
        fields["input_topic"].default,
        fields["output_topic"].default,
        fields["dlq_topic"].default,
    }
    actions = {
        doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]: op["action"]
        for op in doc["operations"].values()
    }
    assert actions == {
        fields["input_topic"].default: "receive",
        fields["output_topic"].default: "send",
        fields["dlq_topic"].default: "send",
    }
    for message in doc["components"]["messages"].values():
        ref = message["payload"].get("$ref")
        assert ref is None or (SCHEMAS / ref).is_file(), ref


def test_sample_events_validate_against_the_schemas() -> None:
    payloads = [SEED, None, b"", b"\xff\xfe not utf-8"] + [path.read_bytes() for path in SAMPLES]
    outcomes = [o for p in payloads for o in _outcomes(p)]
    outcomes += _outcomes(SEED, key=None)
    outcomes += _outcomes(b"x" * 2_000, limits=Limits(max_payload_bytes=1_000))
    article_key = re.compile(
        _asyncapi()["components"]["messages"]["articleIngested"]["bindings"]["kafka"]["key"]["pattern"]
    )

    articles = [o for o in outcomes if o.is_article]
    dead_letters = [o for o in outcomes if not o.is_article]
    assert articles
    assert {o.error for o in dead_letters} >= {
        ErrorCode.INVALID_FIELD,
        ErrorCode.MISSING_FIELD,
        ErrorCode.UNTERMINATED_FIELD,
        ErrorCode.NO_MARKERS,
        ErrorCode.EMPTY_PAYLOAD,
        ErrorCode.INVALID_ENCODING,
        ErrorCode.PAYLOAD_TOO_LARGE,
    }
    for outcome in articles:
        assert _errors(ARTICLE, orjson.loads(outcome.value)) == []
        assert article_key.match((outcome.key or b"").decode())
    for outcome in dead_letters:
        assert _errors(DEAD_LETTER, orjson.loads(outcome.value)) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("data", "date"), "2024-02-30"),
        (("time",), "yesterday"),
        (("data", "sha256"), "ABC"),
        (("data", "fn"), 10**18),
        (("kafkaoffset",), -1),
    ],
)
def test_the_article_schema_rejects_what_the_contract_forbids(path: tuple[str, ...], value: object) -> None:
    outcome = next(o for o in _outcomes(SEED) if o.is_article)
    event = orjson.loads(outcome.value)
    target = event
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert _errors(ARTICLE, event)


def test_the_dead_letter_schema_rejects_an_unknown_error_code() -> None:
    event = orjson.loads(_outcomes(b"no markers here")[0].value)
    assert _errors(DEAD_LETTER, event) == []
    event["error"]["code"] = "no_such_code"
    assert _errors(DEAD_LETTER, event)


def test_the_contract_defaults_are_the_settings_defaults_and_variables() -> None:
    """The AsyncAPI document names these defaults and variables; the service must use the same."""
    from schemas.defaults import BY_FIELD
    from service.settings import Settings, variable_name

    for field, default in BY_FIELD.items():
        assert Settings.model_fields[field].default == default.value, field
        assert variable_name(field) == default.variable, field
