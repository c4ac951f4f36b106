"""Generate the published contract files from the pydantic models.

``python -m schemas.generate`` writes, beside this module:

- ``article-ingested.v1.schema.json``, ``record-dead-lettered.v1.schema.json`` and
  ``record-redriven.v1.schema.json``: JSON Schema (draft 2020-12) of ``ArticleIngested``,
  ``RecordDeadLettered`` (with each error code's meaning) and ``RecordRedriven``;
- ``asyncapi.yaml``: an AsyncAPI 3.0.0 document of the input, output and dead-letter channels
  (``schemas.asyncapi``).

``python -m schemas.generate --check`` writes nothing; it exits 1 and names the files that differ
from what the models generate. The output is deterministic, so the committed files can be checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from schemas.asyncapi import asyncapi
from schemas.errors import ErrorCode
from schemas.events import (
    ARTICLE_DATASCHEMA,
    ARTICLE_SCHEMA_FILE,
    DEAD_LETTER_SCHEMA,
    DEAD_LETTER_SCHEMA_FILE,
    REDRIVE_MARKER_SCHEMA,
    REDRIVE_MARKER_SCHEMA_FILE,
    ArticleIngested,
    RecordDeadLettered,
    RecordRedriven,
)

HERE = Path(__file__).resolve().parent
ASYNCAPI_FILE = "asyncapi.yaml"

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
GENERATED_BY = "Generated from schemas/events.py by `python -m schemas.generate`; do not edit."


class _ContractSchema(GenerateJsonSchema):
    """Pydantic's generator, plus each error code's documented meaning."""

    def enum_schema(self, schema: core_schema.EnumSchema) -> JsonSchemaValue:
        result = super().enum_schema(schema)
        if schema["cls"] is ErrorCode:
            result["oneOf"] = [
                {"const": code.value, "description": code.description, "x-payload-level": code.payload_level}
                for code in ErrorCode
            ]
        return result


def json_schema(model: type[BaseModel], schema_id: str) -> dict[str, Any]:
    """The JSON Schema of ``model`` as serialized, identified by ``schema_id``."""
    body = model.model_json_schema(mode="serialization", schema_generator=_ContractSchema)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id, "$comment": GENERATED_BY, **body}


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file's name and exact text."""
    doc = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100)
    return {
        ARTICLE_SCHEMA_FILE: _json_text(json_schema(ArticleIngested, ARTICLE_DATASCHEMA)),
        DEAD_LETTER_SCHEMA_FILE: _json_text(json_schema(RecordDeadLettered, DEAD_LETTER_SCHEMA)),
        REDRIVE_MARKER_SCHEMA_FILE: _json_text(json_schema(RecordRedriven, REDRIVE_MARKER_SCHEMA)),
        ASYNCAPI_FILE: f"# {GENERATED_BY}\n{doc}",
    }


def stale_files(directory: Path = HERE) -> list[Path]:
    """The generated files in ``directory`` that are missing or differ from what the models generate."""
    stale = []
    for name, text in render().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Write the contract files, or with ``--check`` report the ones that are out of date."""
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            sys.stderr.write(f"{os.path.relpath(path)}: differs from what the models generate\n")
        if stale:
            sys.stderr.write("run `python -m schemas.generate` and commit the result\n")
            return 1
        return 0
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
