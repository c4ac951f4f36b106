"""Fuzz the functional core (``service.core.events.process_payload``) for a fixed time. Not a test.

Every generated input (payload bytes, source coordinates, limits) must satisfy the oracle:

* ``process_payload`` never raises;
* it yields one outcome per record: record indices 0..n-1, where n is what an independent model of
  the format says (markers by a forward regular expression plus the glue rule, one record per F-N
  START after the first), and a single outcome with the right code for payload-level failures
  (null, too large, not UTF-8, empty, no markers, too many records);
* every event id is ``<topic>:<partition>:<offset>:<record index>`` and equals the event's ``id``;
  every event validates against the published models (articles keyed by their FN, dead letters by
  the input key, error code and raw copy consistent);
* no event is larger than ``max_event_bytes`` (JSON escaping and quoted marker names included);
* it is deterministic: the same input gives byte-identical events (redelivery keeps ids and bodies);
* the C scanner (``service/core/_speedups.c``, where built) returns exactly what its Python reference
  ``_scan_clean_py`` returns on the decoded text, for several record limits;
* ``process_payload`` (the compiled record path first, where built) returns exactly what the Python
  path, ``process_payload_reference``, returns (``scripts/fuzz_compiled.py`` does this at length).

Engines: ``hypothesis`` (the default: arbitrary bytes, mostly-UTF-8 bytes, marker soup, generated
records, byte-level mutations of records, long repetitions) or ``atheris`` (coverage-guided
libFuzzer with a dictionary of markers, when ``pip install atheris`` works on the machine).
Source timestamps range over every int64 (a CreateTime is whatever the producer chose), with the
edges of what RFC 3339 can show (years 1970 and 9999) drawn often.

Usage::

    python scripts/fuzz_core.py --seconds 600 [--engine hypothesis|atheris] [--seed N]

Prints the figures (examples run, examples/s, failures, outcomes by kind) at the end; exits 1 when
an input broke the oracle (shown, shrunk by hypothesis, with the reproduction), else 0.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import random
import re
import string
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ErrorCode
from schemas.events import ArticleIngested, RecordDeadLettered
from service.core import events as core_events
from service.core import parser as core_parser
from service.core.events import Outcome, Source, process_payload, process_payload_reference
from service.core.limits import Limits
from service.core.message import strip_bom

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
VERSION = "fuzz"
LAST_VALID_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
BOM = b"\xef\xbb\xbf"

# --- the oracle ------------------------------------------------------------------------------------

# A marker read backwards: the dot, the reversed suffix, then the reversed name ("-N-F" for F-N). A
# forward regex would backtrack quadratically over long runs of "A-A-A-..." with no suffix; led by a
# literal dot and with nothing after the greedy name, this one is linear.
_REVERSED_MARKER = re.compile(r"\.(T-R-A-T-S|D-N-E)((?:-[A-Z])+)")


def reference_markers(text: str) -> list[tuple[int, str, bool]]:
    """(start, name, is_start) of each marker of ``text`` per the format, without the core's scanner.

    A marker is NAME-S-T-A-R-T. or NAME-E-N-D., NAME capital letters joined by hyphens, and it is no
    marker when glued to a preceding letter, digit or hyphen.
    """
    reverse, size = text[::-1], len(text)
    found = []
    for m in _REVERSED_MARKER.finditer(reverse):
        start = size - m.end()
        before = text[start - 1] if start > 0 else ""
        if before and (before.isalnum() or before == "-"):
            continue
        found.append((start, m.group(2)[::-1].rstrip("-"), m.group(1) == "T-R-A-T-S"))
    found.reverse()
    return found


def expected_shape(payload: bytes | None, limits: Limits) -> ErrorCode | int:
    """The payload-level error the payload must get, or the number of records it holds."""
    if payload is None:
        return ErrorCode.EMPTY_PAYLOAD
    if len(payload) > limits.max_payload_bytes:
        return ErrorCode.PAYLOAD_TOO_LARGE
    try:
        text = payload.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError:
        return ErrorCode.INVALID_ENCODING
    if not text or text.isspace():
        return ErrorCode.EMPTY_PAYLOAD
    markers = reference_markers(text)
    if not markers:
        return ErrorCode.NO_MARKERS
    # One record per F-N START after the first (the first belongs to the record the payload opens).
    records = max(1, sum(1 for _, name, is_start in markers if name == "F-N" and is_start))
    if records > limits.max_records_per_payload:
        return ErrorCode.TOO_MANY_RECORDS
    return records


class OracleError(AssertionError):
    """The core broke a promise on this input."""


def check(payload: bytes | None, source: Source, limits: Limits, stats: Counter[str]) -> None:
    """Run the core on one input and hold it to every promise; raise ``OracleError`` if one fails."""
    outcomes = process_payload(payload, source, limits, now=NOW, version=VERSION)
    again = process_payload(payload, source, limits, now=NOW, version=VERSION)
    _require(
        [(o.event_id, o.value, o.key) for o in outcomes] == [(o.event_id, o.value, o.key) for o in again],
        "not deterministic: the same input gave different events",
    )
    shape = expected_shape(payload, limits)
    if isinstance(shape, ErrorCode):
        _require(len(outcomes) == 1, f"{shape}: expected one outcome, got {len(outcomes)}")
        _require(outcomes[0].error is shape, f"expected {shape}, got {outcomes[0].error}")
    else:
        _require(len(outcomes) == shape, f"expected {shape} outcomes (one per record), got {len(outcomes)}")
        bad = [o.error for o in outcomes if o.error is not None and o.error.payload_level]
        _require(not bad, f"payload-level codes on a record: {bad}")
    _require([o.record_index for o in outcomes] == list(range(len(outcomes))), "record indices not 0..n-1")
    for o in outcomes:
        _check_outcome(o, source, limits)
        stats["article" if o.error is None else o.error.value] += 1
    _check_speedups(payload, limits, stats)
    _check_compiled(payload, source, limits, outcomes, stats)


def _check_compiled(
    payload: bytes | None, source: Source, limits: Limits, outcomes: list[Outcome], stats: Counter[str]
) -> None:
    """Where the compiled record path took the payload, its outcomes are the Python path's (where it
    declined, ``process_payload`` ran the Python path itself)."""
    if not core_events.COMPILED or payload is None or len(payload) > limits.max_payload_bytes:
        return
    if core_events.compiled_articles(payload, source, limits, now=NOW) is None:
        stats[_COMPILED_DECLINED] += 1
        return
    reference = process_payload_reference(payload, source, limits, now=NOW, version=VERSION)
    _require(outcomes == reference, "the compiled path's outcomes differ from the Python path's")
    stats[_COMPILED_TAKEN] += 1


def _check_speedups(payload: bytes | None, limits: Limits, stats: Counter[str]) -> None:
    """The C scanner and its Python reference agree on the payload's text."""
    if core_parser._speedups is None or payload is None:
        return
    try:
        text = strip_bom(payload).decode("utf-8")
    except UnicodeDecodeError:
        return
    for max_records in {1, 2, limits.max_records_per_payload}:
        expected = core_parser._scan_clean_py(text, max_records)
        got = core_parser._speedups.scan_clean(core_parser.CleanRecord, text, max_records)
        _require(got == expected, f"C scanner gave {got!r}, the Python reference {expected!r}")
    stats[_SPEEDUPS_CHECKED] += 1


_SPEEDUPS_CHECKED = "C scanner checked"
_COMPILED_TAKEN = "compiled path took"
_COMPILED_DECLINED = "compiled path declined"


def _check_outcome(o: Outcome, source: Source, limits: Limits) -> None:
    expected_id = f"{source.topic}:{source.partition}:{source.offset}:{o.record_index}"
    _require(o.event_id == expected_id, f"event id {o.event_id!r} != {expected_id!r}")
    _require(len(o.value) <= limits.max_event_bytes, f"an event of {len(o.value)} bytes, over the limit")
    if o.error is None:
        article = ArticleIngested.model_validate_json(o.value)
        _require(article.id == expected_id, "article id differs from the outcome's")
        _require(article.data.fn == o.fn and o.key == str(o.fn).encode(), "article key is not its FN")
        _require(article.recordindex == o.record_index, "recordindex differs")
        return
    dead = RecordDeadLettered.model_validate_json(o.value)
    _require(dead.id == expected_id, "dead-letter id differs from the outcome's")
    _require(dead.error.code == o.error, "dead-letter code differs from the outcome's")
    _require(dead.source.record_index == o.record_index, "dead-letter record_index differs")
    _require(o.key == source.key, "a dead letter must keep the input key")
    _require((dead.scope == "payload") == o.error.payload_level, f"scope {dead.scope} for {o.error}")
    raw = dead.raw
    if raw.size_bytes == 0 and raw.text is None and raw.base64 is None:
        _require(o.error == ErrorCode.EMPTY_PAYLOAD, "a copy of nothing outside a null payload")
        return  # a null value: no copy at all (redrive sends null again)
    _require((raw.text is None) != (raw.base64 is None), "raw: exactly one of text and base64")
    copied = raw.text.encode() if raw.text is not None else base64.b64decode(raw.base64 or "")
    _require(len(copied) <= limits.max_dead_letter_raw_bytes, "raw copy over the limit")
    # The copy is cut at max_dead_letter_raw_bytes, or shorter to keep the event under max_event_bytes.
    _require(raw.truncated == (len(copied) < raw.size_bytes), "raw.truncated does not match the copy")
    _require(raw.truncated or raw.size_bytes <= limits.max_dead_letter_raw_bytes, "raw copy not cut")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise OracleError(message)


# --- figures ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a run did."""

    engine: str
    seconds: float = 0.0
    examples: int = 0
    failures: int = 0
    largest_payload: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failure_reports: list[str] = field(default_factory=list)

    def note(self, payload: bytes | None) -> None:
        self.examples += 1
        self.largest_payload = max(self.largest_payload, len(payload or b""))

    def print(self) -> None:
        rate = self.examples / self.seconds if self.seconds else 0.0
        print(f"engine            {self.engine}")
        print(f"seconds           {self.seconds:.1f}")
        print(f"examples run      {self.examples}")
        print(f"examples/s        {rate:.0f}")
        print(f"failures          {self.failures}")
        print(f"largest payload   {self.largest_payload} bytes")
        checked = self.outcomes.pop(_SPEEDUPS_CHECKED, 0)
        taken = self.outcomes.pop(_COMPILED_TAKEN, 0)
        declined = self.outcomes.pop(_COMPILED_DECLINED, 0)
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.outcomes.items()))
        print(f"outcomes          {sum(self.outcomes.values())} ({kinds})")
        print(f"C scanner         {checked} texts checked against the Python reference")
        print(f"compiled path     took {taken} payloads (equal to the Python path), declined {declined}")
        for report in self.failure_reports:
            print(report)


# --- engine: hypothesis ----------------------------------------------------------------------------


def hypothesis_strategies() -> Any:
    """The input space: (payload, source, limits)."""
    from hypothesis import strategies as st

    known = ["F-N", "D-A-T-E", "T-I-T-L-E", "T-E-X-T", "S-O-U-R-C-E"]
    names = st.one_of(
        st.sampled_from(known),
        st.lists(st.sampled_from(string.ascii_uppercase), min_size=1, max_size=4).map("-".join),
    )
    markers = st.builds(lambda n, s: f"{n}-{s}.", names, st.sampled_from(["S-T-A-R-T", "E-N-D"]))
    spaces = st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b"])
    words = st.text(alphabet=string.ascii_letters + string.digits + "-.,;:!?'\"()_ éß東\x00", max_size=10)
    fragments = st.sampled_from(
        ["-S-T-A-R-T.", "-E-N-D.", "S-T-A-R-T.", "F-N", "-", ".", "F-N-S-T-A-R-T", "\ufeff", "\x00", "\ud7ff"]
    )
    valid_dates = st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}")
    dates = st.one_of(
        valid_dates,
        valid_dates,
        valid_dates,
        st.sampled_from(["2024-02-30", "2024-13-01", "0000-01-01", "2024-1-1", "２０２４-01-01", ""]),
        st.text(max_size=12),
    )
    valid_fns = st.integers(0, 10**18 - 1).map(str)
    fns = st.one_of(
        valid_fns,
        valid_fns,
        valid_fns,
        st.integers(10**18, 10**40).map(str),
        st.sampled_from(["-1", "1.5", "0x10", "١٢", "", "00", "9" * 19]),
        st.text(max_size=8),
    )
    prose = st.text(
        alphabet=string.ascii_letters + string.digits + " .,;:'\"-éß東\u00a0", min_size=1, max_size=40
    )
    texts = st.one_of(prose, prose, prose, st.text(max_size=40))
    field_values = st.one_of(fns, dates, texts)
    tokens = st.one_of(markers, markers, markers, spaces, words, fragments, field_values)
    joins = st.sampled_from(["", " ", " ", "\n"])

    @st.composite
    def soup(draw: Any) -> str:
        parts = draw(st.lists(st.tuples(tokens, joins), max_size=60))
        return "".join(t + j for t, j in parts)

    @st.composite
    def records(draw: Any) -> str:
        out = []
        for _ in range(draw(st.integers(1, 6))):
            fields = [("F-N", draw(fns)), ("D-A-T-E", draw(dates)), ("T-I-T-L-E", draw(texts))]
            fields.append(("T-E-X-T", draw(texts)))
            fields += [(draw(names), draw(texts)) for _ in range(draw(st.integers(0, 2)))]
            if draw(st.booleans()):
                fields = draw(st.permutations(fields))
            if draw(st.integers(0, 4)) == 0 and fields:
                fields.pop(draw(st.integers(0, len(fields) - 1)))
            pad = draw(st.sampled_from([" ", "", "\n", "  "]))
            out.append(" ".join(f"{n}-S-T-A-R-T.{pad}{v}{pad}{n}-E-N-D." for n, v in fields))
        return draw(st.sampled_from([" ", "\n", "", "\r\n\r\n"])).join(out)

    @st.composite
    def valid_records(draw: Any) -> str:
        """Well-formed records with valid values (extras under names no required field has)."""
        out = []
        for _ in range(draw(st.integers(1, 8))):
            fields = [("F-N", draw(valid_fns)), ("D-A-T-E", draw(valid_dates))]
            fields += [("T-I-T-L-E", "t" + draw(prose)), ("T-E-X-T", draw(prose) + "x")]
            extras = draw(
                st.lists(st.sampled_from(["S-O-U-R-C-E", "A-U-T-H-O-R", "X"]), unique=True, max_size=3)
            )
            fields += [(name, draw(prose)) for name in extras]
            if draw(st.booleans()):
                fields = [fields[0], *draw(st.permutations(fields[1:]))]
            pad = draw(st.sampled_from([" ", "\n", "  ", "\u3000"]))
            out.append(" ".join(f"{n}-S-T-A-R-T.{pad}{v}{pad}{n}-E-N-D." for n, v in fields))
        return draw(st.sampled_from([" ", "\n", "\r\n\r\n"])).join(out)

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(draw(records()).encode())
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.integers(0, 3))
            if op == 0:
                data[at:at] = draw(st.binary(min_size=1, max_size=4))
            elif op == 1:
                del data[at : at + draw(st.integers(1, 20))]
            elif op == 2:
                data[at:at] = data[at : at + draw(st.integers(1, 30))]
            elif data:
                data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)

    repeated = st.builds(
        lambda token, n, tail: (token * n + tail).encode(),
        st.sampled_from(
            ["F-N-S-T-A-R-T. ", "T-E-X-T-S-T-A-R-T.", "-E-N-D.", "A-", "\x00", "D-A-T-E-E-N-D. "]
        ),
        st.integers(1, 3000),
        st.sampled_from(["", "S-T-A-R-T.", " x", "F-N-E-N-D."]),
    )
    big = st.builds(
        lambda head, token, n, tail: (head + token * n + tail).encode(),
        st.sampled_from(
            ["", "F-N-S-T-A-R-T. 1 F-N-E-N-D. ", "F-N-S-T-A-R-T. 1 F-N-E-N-D. T-E-X-T-S-T-A-R-T. "]
        ),
        st.sampled_from(["\x00", "\x1f", '"', "\\", "é", "A-", "東"]),
        st.integers(10_000, 120_000),
        st.sampled_from(["", "S-T-A-R-T. x", " T-E-X-T-E-N-D.", " T-E-X-T-E-N-D. T-I-T-L-E-S-T-A-R-T. t"]),
    )
    bom = st.sampled_from([b"", b"", BOM])
    payloads = st.one_of(
        st.none(),
        st.binary(max_size=1000),
        st.lists(st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=3)), max_size=12).map(
            b"".join
        ),
        st.builds(lambda b, s: b + s.encode(), bom, soup()),
        st.builds(lambda b, s: b + s.encode(), bom, soup()),
        st.builds(lambda b, s: b + s.encode(), bom, records()),
        st.builds(lambda b, s: b + s.encode(), bom, valid_records()),
        st.builds(lambda b, s: b + s.encode(), bom, valid_records()),
        mutated(),
        repeated,
        big,
    )
    small_limits = st.builds(
        Limits,
        max_payload_bytes=st.integers(1, 4096),
        max_records_per_payload=st.integers(1, 6),
        max_title_chars=st.integers(1, 50),
        max_text_chars=st.integers(1, 200),
        max_dead_letter_raw_bytes=st.integers(1, 300),
        max_event_bytes=st.sampled_from([65_536, 100_000, 1_000_000]),
    )
    limits = st.one_of(st.just(Limits()), st.just(Limits(max_event_bytes=65_536)), small_limits)
    sources = st.builds(
        Source,
        topic=st.text(min_size=1, max_size=20),
        partition=st.integers(0, 2**31 - 1),
        offset=st.integers(0, 2**63 - 1),
        timestamp_ms=st.one_of(
            st.none(),
            st.sampled_from([-1, 0, 999, LAST_VALID_MS, LAST_VALID_MS + 1, 2**63 - 1, -(2**63)]),
            st.integers(-(2**63), 2**63 - 1),
        ),
        key=st.one_of(st.none(), st.binary(max_size=20)),
    )
    return st.tuples(payloads, sources, limits)


def run_hypothesis(seconds: float, seed: int) -> Figures:
    """Run chunks of examples, each with its own seed, until the time is up or an input fails."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed

    figures = Figures("hypothesis")
    inputs = hypothesis_strategies()
    started = time.monotonic()
    deadline = started + seconds
    chunk, chunk_index = 200, 0
    while time.monotonic() < deadline:
        chunk_started, before = time.monotonic(), figures.examples

        @hypothesis_seed(seed + chunk_index)
        @settings(
            max_examples=chunk,
            deadline=None,
            database=None,
            derandomize=False,
            verbosity=Verbosity.normal,
            phases=[Phase.generate, Phase.shrink],
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(inputs)
        def one(case: tuple[bytes | None, Source, Limits]) -> None:
            payload, source, limits = case
            figures.note(payload)
            check(payload, source, limits, figures.outcomes)

        try:
            one()
        except Exception as exc:
            figures.failures += 1
            figures.failure_reports.append(_hypothesis_report(exc, seed + chunk_index))
            break
        chunk_index += 1
        took = time.monotonic() - chunk_started
        rate = (figures.examples - before) / took if took > 0 else 1000.0
        chunk = int(min(max(rate * 2.0, 50), max(1.0, (deadline - time.monotonic()) * rate) + 1))
    figures.seconds = time.monotonic() - started
    return figures


def _hypothesis_report(exc: BaseException, seed: int) -> str:
    """The error; hypothesis has printed the shrunk falsifying example just before."""
    trace = "".join(traceback.format_exception(exc, limit=-4)).rstrip().replace("\n", "\n  ")
    return f"\nFAILURE (chunk seed {seed}; the shrunk input is the Failing test case below)\n  {trace}"


# --- engine: atheris -------------------------------------------------------------------------------

DICTIONARY = [
    "F-N-S-T-A-R-T.",
    "F-N-E-N-D.",
    "D-A-T-E-S-T-A-R-T.",
    "D-A-T-E-E-N-D.",
    "T-I-T-L-E-S-T-A-R-T.",
    "T-I-T-L-E-E-N-D.",
    "T-E-X-T-S-T-A-R-T.",
    "T-E-X-T-E-N-D.",
    "S-O-U-R-C-E-S-T-A-R-T.",
    "-S-T-A-R-T.",
    "-E-N-D.",
    "2024-01-24",
    "2024-02-30",
    "\ufeff",
]


def run_atheris(seconds: float, seed: int) -> Figures:
    """Coverage-guided fuzzing with libFuzzer; the first input that breaks the oracle stops the run."""
    import atheris

    figures = Figures("atheris")
    work = Path(tempfile.mkdtemp(prefix="fuzz_core_"))
    corpus = work / "corpus"
    corpus.mkdir()
    for i, sample in enumerate(sorted((ROOT / "service" / "samples" / "feed").glob("*.txt"))):
        (corpus / f"sample{i}").write_bytes(b"\x00\x00" + sample.read_bytes())
    dictionary = work / "markers.dict"
    dictionary.write_text("".join(f'"{_escape_dict(token)}"\n' for token in DICTIONARY))

    def one(data: bytes) -> None:
        if time.monotonic() > deadline:  # libFuzzer exits from C, past Python's atexit: stop here
            figures.seconds = time.monotonic() - started
            figures.print()
            sys.stdout.flush()
            os._exit(0)
        fdp = atheris.FuzzedDataProvider(data)
        small = fdp.ConsumeIntInRange(0, 3) == 0
        limits = (
            Limits(
                max_payload_bytes=fdp.ConsumeIntInRange(1, 4096),
                max_records_per_payload=fdp.ConsumeIntInRange(1, 6),
                max_title_chars=fdp.ConsumeIntInRange(1, 50),
                max_text_chars=fdp.ConsumeIntInRange(1, 200),
                max_dead_letter_raw_bytes=fdp.ConsumeIntInRange(1, 300),
                max_event_bytes=65_536,
            )
            if small
            else Limits(max_event_bytes=65_536 if fdp.ConsumeBool() else 1_000_000)
        )
        timestamp = fdp.ConsumeIntInRange(-(2**63), 2**63 - 1) if fdp.ConsumeBool() else None
        source = Source(
            "fuzz.in", fdp.ConsumeIntInRange(0, 99), fdp.ConsumeIntInRange(0, 2**40), timestamp, b"k"
        )
        payload = None if fdp.ConsumeIntInRange(0, 255) == 0 else fdp.ConsumeBytes(fdp.remaining_bytes())
        figures.note(payload)
        try:
            check(payload, source, limits, figures.outcomes)
        except Exception:
            figures.failures += 1
            figures.seconds = time.monotonic() - started
            figures.print()
            print(f"  payload = {payload!r}"[:2000])
            print(f"  source  = {source!r}\n  limits  = {limits!r}")
            print(f"  (libFuzzer saves the input under {work}/)", flush=True)
            raise

    started = time.monotonic()
    deadline = started + seconds
    args = [
        sys.argv[0],
        f"-max_total_time={round(seconds) + 60}",  # a backstop: ``one`` stops the run on time
        f"-seed={seed % 2**31 or 1}",
        f"-dict={dictionary}",
        "-max_len=60000",
        "-print_final_stats=0",
        f"-artifact_prefix={work}/",
        str(corpus),
    ]
    _reimport_instrumented(atheris)
    atheris.Setup(args, one)
    atheris.Fuzz()  # libFuzzer exits the process at the end of -max_total_time
    return figures


def _escape_dict(token: str) -> str:
    """A libFuzzer dictionary entry: printable ASCII as is, everything else as \\xNN bytes."""
    out = []
    for c in token:
        if c.isascii() and c.isprintable() and c not in '"\\':
            out.append(c)
        else:
            out.extend(f"\\x{b:02x}" for b in c.encode())
    return "".join(out)


def _reimport_instrumented(atheris: Any) -> None:
    """Import the core again under atheris' instrumentation (coverage of service and schemas only)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("service", "schemas")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["service", "schemas"]):
        import schemas.errors
        import schemas.events
        import service.core.events
        import service.core.limits
        import service.core.message
        import service.core.parser
    globals().update(
        ErrorCode=schemas.errors.ErrorCode,
        ArticleIngested=schemas.events.ArticleIngested,
        RecordDeadLettered=schemas.events.RecordDeadLettered,
        Outcome=service.core.events.Outcome,
        Source=service.core.events.Source,
        process_payload=service.core.events.process_payload,
        process_payload_reference=service.core.events.process_payload_reference,
        core_events=service.core.events,
        strip_bom=service.core.message.strip_bom,
        core_parser=service.core.parser,
        Limits=service.core.limits.Limits,
    )


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (printed at the start)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fuzz_core: engine={args.engine} seconds={args.seconds:g} seed={seed}", flush=True)
    if args.engine == "atheris":
        figures = run_atheris(args.seconds, seed)
    else:
        figures = run_hypothesis(args.seconds, seed)
    figures.print()
    return 1 if figures.failures else 0


if __name__ == "__main__":
    sys.exit(main())
