"""The marker-text scanner: decoded payload text in, records (fields or a structural problem) out.

A field is ``<NAME>-S-T-A-R-T. value <NAME>-E-N-D.`` where ``<NAME>`` is upper-case ASCII letters
joined by hyphens (``F-N``, ``D-A-T-E``). A marker must not be glued to a preceding letter, digit
or hyphen. The full format is in ``docs/format.md``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.errors import ErrorCode

# One pass over the text finds every marker suffix; the name is then read backwards. A regex led
# by the literal "-" runs at C speed, whereas one that matches the name first backtracks at every
# capital letter (measured 40x slower on a 5 KB record).
_MARKER_SUFFIX = re.compile(r"-(?:S-T-A-R-T|E-N-(D))\.")

FN = "fn"

_START = "-S-T-A-R-T."
_END = "-E-N-D."
_START_LEN = len(_START)
_SPACES = re.compile(r"\s*")
_SUFFIXES = (_START, _END)
# What stands between the end of one field and the START suffix of the next on the fast path:
# optional white space, then the name. Matched against text[pos:suffix], so ``\Z`` is its end.
_LEAD_AND_NAME = re.compile(r"\s*+([A-Z](?:-[A-Z])*+)\Z")
# The lead strings already seen (a feed repeats a handful: "F-N", "  D-A-T-E"...), with their field
# name and END marker. Bounded, and only ever holding valid leads: a cache, not state.
_leads: dict[str, tuple[str, str, str, int]] = {}
_LEADS_MAX, _LEAD_MAX_CHARS = 512, 64
# Hyphens checked one by one in a value before handing over to the regex: prose has a few.
_HOPS = range(16)


@dataclass(frozen=True, slots=True)
class Problem:
    """A precise reason for rejecting a record or a payload."""

    code: ErrorCode
    message: str
    field: str | None = None
    position: int | None = None


class FieldValue(NamedTuple):
    """A field's trimmed value and the character offset where the value starts."""

    value: str
    position: int


@dataclass(slots=True)
class ScannedRecord:
    """One record as found in the payload: its span, its fields, and its first problem if any."""

    start: int
    end: int = 0
    fields: dict[str, FieldValue] = field(default_factory=dict)
    problem: Problem | None = None
    seen_fn: bool = False

    def fail(self, problem: Problem) -> None:
        """Keep the first problem: it is the earliest in the text."""
        if self.problem is None:
            self.problem = problem


class Marker(NamedTuple):
    """A START or END marker: where it starts and ends, and the field name it carries."""

    start: int
    end: int
    name: str
    is_end: bool


def find_markers(text: str) -> list[Marker]:
    """Every well-formed marker in ``text``, in order."""
    markers: list[Marker] = []
    append = markers.append
    make = Marker._make  # cheaper than Marker(...), whose __new__ is Python code
    for m in _MARKER_SUFFIX.finditer(text):
        suffix_at, end = m.span()
        j = suffix_at - 1
        if j < 0 or not "A" <= text[j] <= "Z":
            continue
        while j >= 2 and text[j - 1] == "-" and "A" <= text[j - 2] <= "Z":
            j -= 2
        if j > 0:
            before = text[j - 1]
            if before == "-" or before.isalnum():
                continue
        # lastindex is 1 when the END alternative's group matched, None for START.
        append(make((j, end, text[j:suffix_at:2].lower(), m.lastindex is not None)))
    return markers


def _first_non_space(text: str, start: int, end: int) -> int | None:
    """The offset of the first non-white-space character in text[start:end], or None."""
    if start >= end:
        return None
    gap = text[start:end]
    if gap.isspace():
        return None
    return start + (len(gap) - len(gap.lstrip()))


def _stray(record: ScannedRecord, text: str, start: int, end: int) -> None:
    at = _first_non_space(text, start, end)
    if at is not None:
        snippet = text[at : min(end, at + 40)].rstrip()
        record.fail(Problem(ErrorCode.STRAY_TEXT, f"text outside any field: {snippet!r}", None, at))


def scan(text: str, max_records: int) -> list[ScannedRecord] | Problem:
    """Split ``text`` into records and their fields.

    Returns the records (each may carry a structural problem), or a payload-level ``Problem``
    when there are no markers or more than ``max_records`` records (scanning stops there).
    """
    clean = scan_clean(text, max_records)
    if clean is not None:
        return scanned(text, clean)
    return scan_markers(text, max_records)


def scan_markers(text: str, max_records: int) -> list[ScannedRecord] | Problem:
    """``scan`` for any payload: marker by marker, finding the precise problems."""
    markers = find_markers(text)
    if not markers:
        return Problem(ErrorCode.NO_MARKERS, "no field markers (such as F-N-S-T-A-R-T.) in the payload")

    records: list[ScannedRecord] = []
    record = ScannedRecord(start=0)
    open_marker: Marker | None = None
    last_end = 0

    for marker in markers:
        if open_marker is not None:
            if marker.is_end and marker.name == open_marker.name:
                raw = text[open_marker.end : marker.start]
                value = raw.strip()
                position = open_marker.end + (len(raw) - len(raw.lstrip()))
                if marker.name in record.fields:
                    record.fail(
                        Problem(
                            ErrorCode.DUPLICATE_FIELD,
                            f"field {marker.name!r} appears twice in the record",
                            marker.name,
                            open_marker.start,
                        )
                    )
                else:
                    record.fields[marker.name] = FieldValue(value, position)
                open_marker = None
                last_end = marker.end
                continue
            record.fail(
                Problem(
                    ErrorCode.UNTERMINATED_FIELD,
                    f"field {open_marker.name!r} has no END marker before the next marker",
                    open_marker.name,
                    open_marker.start,
                )
            )
            open_marker = None
        else:
            _stray(record, text, last_end, marker.start)

        if marker.name == FN and not marker.is_end and record.seen_fn:
            record.end = marker.start
            records.append(record)
            if len(records) >= max_records:
                return _too_many(max_records)
            record = ScannedRecord(start=marker.start)

        if marker.is_end:
            record.fail(
                Problem(
                    ErrorCode.UNMATCHED_END,
                    f"END marker for {marker.name!r} with no open field of that name",
                    marker.name,
                    marker.start,
                )
            )
        else:
            if marker.name == FN:
                record.seen_fn = True
            open_marker = marker
        last_end = marker.end

    if open_marker is not None:
        record.fail(
            Problem(
                ErrorCode.UNTERMINATED_FIELD,
                f"field {open_marker.name!r} has no END marker before the end of the payload",
                open_marker.name,
                open_marker.start,
            )
        )
    else:
        _stray(record, text, last_end, len(text))
    record.end = len(text)
    records.append(record)
    if len(records) > max_records:
        return _too_many(max_records)
    return records


class CleanRecord(NamedTuple):
    """A record of a clean payload, as ``scan_clean`` finds it."""

    start: int
    values: dict[str, str]
    """Field name to trimmed value, in text order."""
    value_starts: dict[str, int]
    """Field name to the offset just after its START marker."""


# CleanRecord(...) runs a __new__ written in Python; tuple.__new__ builds the same object in a third
# of the time, which shows on the hot path.
_new_record = tuple.__new__


def _scan_clean_py(text: str, max_records: int) -> list[CleanRecord] | None:
    """The records of a clean payload, else None.

    Clean means: only white space outside the fields, every field closed by its own END marker
    before any other marker suffix, no duplicate field, and at most ``max_records`` records. On
    such a payload ``scan_markers`` would find exactly these records with no problem (``scanned``
    gives them in its form); on anything else (None) it finds the precise problems.

    This is the hot path: a Kafka message is usually one clean record. It costs a few string
    searches per field, and one memchr-speed ``find("-")`` per hyphen inside a value, instead of a
    regex pass over the whole text and a Python step per marker.
    """
    find = text.find
    startswith = text.startswith
    leads = _leads
    records: list[CleanRecord] = []
    fields: dict[str, str] = {}
    starts: dict[str, int] = {}
    record_start = pos = 0
    try:
        while (suffix_at := find(_START, pos)) >= 0:
            lead = text[pos:suffix_at]
            known = leads.get(lead)
            if known is None:
                known = _learn_lead(lead)
                if known is None:
                    return None  # stray text, or a marker that is not a well-formed START
            name, end_marker, spaced_end_marker, end_len = known
            value_at = suffix_at + _START_LEN
            # Walk the hyphens of the value: the first one that can begin a marker must be the
            # first hyphen of this field's END marker (which starts one character before it).
            hyphen = find("-", value_at)
            for _ in _HOPS:
                if hyphen < 0:
                    return None  # unterminated
                if "A" <= text[hyphen + 1] <= "Z":  # IndexError: the text ends with "-"
                    if startswith(spaced_end_marker, hyphen - 2):
                        break  # the usual case, and a space cannot glue the marker to the value
                    if startswith(end_marker, hyphen - 1):
                        if _glued(text, hyphen - 1):
                            return None
                        break
                    if startswith(_SUFFIXES, hyphen):
                        return None  # another marker, or marker-like text, inside the value
                hyphen = find("-", hyphen + 1)
            else:
                # Many hyphens: let the regex find the next marker suffix at C speed instead.
                m = _MARKER_SUFFIX.search(text, hyphen)
                if m is None or m.group(1) is None:
                    return None  # unterminated, or a START marker inside the value
                hyphen = m.start() - end_len + len(_END) + 1
                if not startswith(end_marker, hyphen - 1) or _glued(text, hyphen - 1):
                    return None
            end_at = hyphen - 1
            if name in fields:
                if name != FN:
                    return None  # duplicate field
                records.append(_new_record(CleanRecord, (record_start, fields, starts)))
                if len(records) >= max_records:
                    return None
                record_start = suffix_at - (2 * len(name) - 1)  # where the F-N name starts
                fields, starts = {}, {}
            fields[name] = text[value_at:end_at].strip()
            starts[name] = value_at
            pos = end_at + end_len
    except IndexError:
        return None
    if not fields or len(records) >= max_records:
        return None
    if pos < len(text) and not text[pos:].isspace():
        return None  # stray text or a lone END marker after the last field
    records.append(_new_record(CleanRecord, (record_start, fields, starts)))
    return records


try:
    from service.core import _speedups
except ImportError:  # built without a C compiler: the Python scanner, with the same results
    _speedups = None  # type: ignore[assignment]

scan_clean: Callable[[str, int], list[CleanRecord] | None] = (
    _scan_clean_py if _speedups is None else functools.partial(_speedups.scan_clean, CleanRecord)
)
"""``_scan_clean_py``'s results, from the C speedups (``service/core/_speedups.c``) where they were built.

The same function in C walks a value's hyphens with ``memchr`` instead of a Python step each: about
a third of the cost of a clean 5 KB record. tests/unit/test_speedups.py holds the two to the same
results.
"""
SPEEDUPS = _speedups is not None
"""True when the C scanner is in use."""


def scanned(text: str, clean: list[CleanRecord]) -> list[ScannedRecord]:
    """The records ``scan_markers`` finds in a clean payload, built from ``scan_clean``'s."""
    records = []
    ends = [rec.start for rec in clean[1:]] + [len(text)]
    for rec, end in zip(clean, ends, strict=True):
        fields = {}
        for name, value in rec.values.items():
            # The value's position is its first character after white space (the END marker's
            # first, for an empty value): the first non-space character after the START marker.
            # (``\s*`` always matches.)
            position = _SPACES.match(text, rec.value_starts[name]).end()  # type: ignore[union-attr]
            fields[name] = FieldValue(value, position)
        records.append(ScannedRecord(rec.start, end, fields, None, FN in fields))
    return records


def _glued(text: str, marker_at: int) -> bool:
    """True when the marker at ``marker_at`` follows a letter, digit or hyphen: not a marker."""
    before = text[marker_at - 1]
    return before == "-" or before.isalnum()


def _learn_lead(lead: str) -> tuple[str, str, str, int] | None:
    """The field name, END marker (bare and after a space) and its length for a lead, or None."""
    m = _LEAD_AND_NAME.match(lead)
    if m is None:
        return None
    chain = m.group(1)
    end_marker = chain + _END
    known = (chain[::2].lower(), end_marker, " " + end_marker, len(end_marker))
    if len(_leads) < _LEADS_MAX and len(lead) <= _LEAD_MAX_CHARS:
        _leads[lead] = known
    return known


def _too_many(max_records: int) -> Problem:
    return Problem(ErrorCode.TOO_MANY_RECORDS, f"more than {max_records} records in one payload (split it)")
