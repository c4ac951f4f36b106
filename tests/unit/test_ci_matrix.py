"""The version matrix CI runs (``.ci/run``) agrees with what the package and the docs say."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _ci_list(name: str) -> list[str]:
    match = re.search(rf"^{name}=\(([^)]*)\)$", CI, re.MULTILINE)
    assert match is not None, f"no {name}=(...) in .ci/run"
    return shlex.split(match.group(1))


def _ci_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", CI, re.MULTILINE)
    assert match is not None, f"no {name}=... in .ci/run"
    return match.group(1)


def test_the_classifiers_name_the_pythons_ci_runs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lowest = re.fullmatch(r">=(\d+\.\d+)", project["requires-python"])
    assert lowest is not None
    classified = {
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: \d+\.\d+", c)
    }
    assert classified == {lowest.group(1), *_ci_list("PYTHONS")}


def test_the_development_page_names_every_version_ci_runs() -> None:
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    for version in [_ci_value("KAFKA_NEWEST"), *_ci_list("KAFKA_OLDER"), *_ci_list("PYTHONS")]:
        assert version in page, f"docs/development.md does not mention {version}"


def test_the_older_kafka_subset_names_test_files_that_exist() -> None:
    script = (ROOT / "scripts" / "test-kafka").read_text(encoding="utf-8")
    body = re.search(r"^SUBSET=\(\n(.*?)^\)$", script, re.MULTILINE | re.DOTALL)
    assert body is not None
    lines = [line.split("#", 1)[0].strip() for line in body.group(1).splitlines()]
    ids = [i for line in lines if line for i in shlex.split(line)]
    assert len(ids) > 5
    for node_id in ids:
        assert (ROOT / node_id.split("::", 1)[0]).exists(), node_id
