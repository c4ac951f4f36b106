"""The README stays true: every test it cites as a proof exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
CITED = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def test_every_test_the_readme_cites_exists() -> None:
    citations = CITED.findall((ROOT / "README.md").read_text())
    assert len(citations) >= 10, "the Guarantees section cites its proofs"
    missing = [
        f"{path}::{name}"
        for path, name in citations
        if not (ROOT / path).is_file() or not re.search(rf"def {name}\(", (ROOT / path).read_text())
    ]
    assert not missing, f"the README cites tests that do not exist: {missing}"
