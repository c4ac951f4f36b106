"""The README and docs/ stay true: every test they cite as a proof exists, and every local link
points at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
CITED = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_test_the_docs_cite_exists() -> None:
    guarantees = CITED.findall((ROOT / "docs" / "guarantees.md").read_text())
    assert len(guarantees) >= 10, "the Guarantees page cites its proofs"
    citations = [c for doc in DOCS for c in CITED.findall(doc.read_text())]
    missing = [
        f"{path}::{name}"
        for path, name in citations
        if not (ROOT / path).is_file() or not re.search(rf"def {name}\(", (ROOT / path).read_text())
    ]
    assert not missing, f"the docs cite tests that do not exist: {missing}"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_local_link_resolves() -> None:
    headings = {
        doc.resolve(): {_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.MULTILINE)}
        for doc in DOCS
    }
    broken = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc.resolve()
            if path and not anchor and resolved == doc.resolve():
                broken.append(f"{doc.name}: {target} (the page itself: name a heading or another page)")
            if not resolved.exists() or (anchor and anchor not in headings.get(resolved, {anchor})):
                broken.append(f"{doc.name}: {target}")
    assert not broken, broken


def test_the_readme_stays_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"{len(lines)} lines: move detail into docs/"
