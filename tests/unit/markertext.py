"""Builders of marker text and a runner of the core, shared by the unit tests.

Kept deliberately simple and independent of the core: the tests spell payloads with these helpers
and compute expected offsets with ``str.index`` on the payload they built.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import orjson

from service.core.events import Outcome, Source, process_payload
from service.core.limits import Limits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

NOW = dt.datetime(2024, 3, 1, 12, 30, 45, 123000, tzinfo=dt.UTC)
NOW_RFC3339 = "2024-03-01T12:30:45.123Z"
VERSION = "9.9.9-test"
TIMESTAMP_MS = 1_706_100_000_000  # 2024-01-24T12:40:00Z
TIMESTAMP_RFC3339 = "2024-01-24T12:40:00.000Z"
SOURCE = Source(topic="news.raw", partition=3, offset=42, timestamp_ms=TIMESTAMP_MS, key=b"key-1")


def marker_name(name: str) -> str:
    """``fn`` -> ``F-N``, ``source`` -> ``S-O-U-R-C-E``."""
    return "-".join(name.upper())


def start(name: str) -> str:
    return f"{marker_name(name)}-S-T-A-R-T."


def end(name: str) -> str:
    return f"{marker_name(name)}-E-N-D."


def fld(name: str, value: str, pad: str = " ") -> str:
    """One field: START, padding, value, padding, END."""
    return f"{start(name)}{pad}{value}{pad}{end(name)}"


def record(
    fn: str = "1",
    date: str = "2024-01-24",
    title: str = "A title",
    text: str = "Body text.",
    sep: str = " ",
    **extra: str,
) -> str:
    """A well-formed record, FN first, then DATE, TITLE, TEXT and any extra fields."""
    parts = [fld("fn", fn), fld("date", date), fld("title", title), fld("text", text)]
    parts.extend(fld(name, value) for name, value in extra.items())
    return sep.join(parts)


def run(
    payload: bytes | str | None,
    limits: Limits | None = None,
    source: Source = SOURCE,
    now: dt.datetime = NOW,
) -> list[Outcome]:
    """The core over one payload (text is UTF-8 encoded first)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return process_payload(payload, source, limits or Limits(), now=now, version=VERSION)


def decode(outcome: Outcome) -> dict[str, Any]:
    """The outcome's serialized event as a dict."""
    event: dict[str, Any] = orjson.loads(outcome.value)
    return event


def only(payload: bytes | str | None, limits: Limits | None = None) -> dict[str, Any]:
    """The single event a payload yields (fails the test when there is not exactly one)."""
    outcomes = run(payload, limits)
    assert len(outcomes) == 1, [decode(o) for o in outcomes]
    return decode(outcomes[0])


def error_of(payload: bytes | str | None, limits: Limits | None = None) -> dict[str, Any]:
    """The error object of the single dead letter a payload yields."""
    event = only(payload, limits)
    assert "error" in event, f"expected a dead letter, got {event}"
    error: dict[str, Any] = event["error"]
    return error


# --- docs/format.md -------------------------------------------------------------------------------

FORMAT_DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)\n```$", re.MULTILINE | re.DOTALL)


def doc_section(heading: str) -> str:
    """The text of docs/format.md under ``heading`` (a whole heading line), up to the next heading
    of the same or a higher level."""
    doc = FORMAT_DOC.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    start_at = doc.index(f"\n{heading}\n") + 1
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE)
    nxt = following.search(doc, start_at + len(heading))
    return doc[start_at : nxt.start() if nxt else len(doc)]


def fenced_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a section: (info string, content without the final newline)."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(section)]
