"""Properties of the core under generated input (hypothesis).

The default profile is small and fast; ``HYPOTHESIS_PROFILE=fuzz`` runs a long campaign (see
``conftest.py``). Expected values are computed here independently of the scanner: markers by a
forward regular expression plus the glue rule, records by the splitting rule, digests by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import string
from dataclasses import dataclass

from hypothesis import assume, given
from hypothesis import strategies as st
from markertext import decode

from schemas.errors import ErrorCode
from schemas.events import ArticleIngested, RecordDeadLettered
from service.core.events import Outcome, Source, process_payload
from service.core.limits import Limits
from service.core.parser import find_markers, scan_clean, scan_markers
from service.core.reference import _articles, _Builder

NOW = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
REQUIRED = ("fn", "date", "title", "text")

# --- an independent model of the format -----------------------------------------------------------

# A forward match of name + suffix. Where a candidate is glued to what precedes it, it is no marker,
# and no other marker can start inside its span (that span is only capitals, hyphens and the dot).
_CANDIDATE = re.compile(r"((?:[A-Z]-)*[A-Z])-(S-T-A-R-T|E-N-D)\.")


@dataclass(frozen=True)
class RefMarker:
    start: int
    end: int
    name: str
    is_end: bool


def reference_markers(text: str) -> list[RefMarker]:
    """The markers of ``text`` per the specification, found without the core's algorithm."""
    found = []
    for m in _CANDIDATE.finditer(text):
        before = text[m.start() - 1] if m.start() > 0 else ""
        if before and (before.isalnum() or before == "-"):
            continue
        found.append(
            RefMarker(m.start(), m.end(), m.group(1).replace("-", "").lower(), m.group(2) == "E-N-D")
        )
    return found


def reference_record_starts(markers: list[RefMarker]) -> list[int]:
    """Where each record begins: the payload start, then each F-N START met while the current record
    already has an F-N START."""
    starts = [0]
    has_fn = False
    for marker in markers:
        if marker.name == "fn" and not marker.is_end:
            if has_fn:
                starts.append(marker.start)
            has_fn = True
    return starts


def reference_digest(fn: int, date: str, title: str, text: str, extra: dict[str, str]) -> str:
    parts = [str(fn), date, title, text, *(f"{name}={extra[name]}" for name in sorted(extra))]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def check_envelope(outcomes: list[Outcome], source: Source, *, null: bool = False) -> None:
    """Invariants of every result: indices 0..n-1, deterministic ids, events valid per the models.

    ``null``: the message value was null, so its dead letter has neither text nor base64.
    """
    assert len(outcomes) >= 1
    assert [o.record_index for o in outcomes] == list(range(len(outcomes)))
    for o in outcomes:
        expected_id = f"{source.topic}:{source.partition}:{source.offset}:{o.record_index}"
        assert o.event_id == expected_id
        if o.is_article:
            article = ArticleIngested.model_validate_json(o.value)
            assert article.id == expected_id
            assert article.data.fn == o.fn
            assert o.key == str(o.fn).encode()
        else:
            dead = RecordDeadLettered.model_validate_json(o.value)
            assert dead.id == expected_id
            assert dead.error.code == o.error
            assert dead.source.record_index == o.record_index
            assert o.key == source.key
            if dead.scope == "payload":
                assert dead.error.code.payload_level
                assert len(outcomes) == 1
            else:
                assert not dead.error.code.payload_level
            if null:
                assert (dead.raw.text, dead.raw.base64, dead.raw.size_bytes) == (None, None, 0)
            else:
                assert (dead.raw.text is None) != (dead.raw.base64 is None)


SOURCE = Source("fuzz.in", 4, 1234, timestamp_ms=1_700_000_000_000, key=b"k")

# --- arbitrary bytes ------------------------------------------------------------------------------

small_limits = st.builds(
    Limits,
    max_payload_bytes=st.integers(1, 4096),
    max_records_per_payload=st.integers(1, 6),
    max_title_chars=st.integers(1, 50),
    max_text_chars=st.integers(1, 200),
    max_dead_letter_raw_bytes=st.integers(1, 300),
)
limits_strategy = st.one_of(st.just(Limits()), small_limits)
sources = st.builds(
    Source,
    topic=st.text(min_size=1, max_size=20),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    # Up to 9999-12-31T23:59:59.999Z; later ones are a known core bug (see test_events.py).
    timestamp_ms=st.one_of(st.none(), st.integers(-(2**63), 253_402_300_799_999)),
    key=st.one_of(st.none(), st.binary(max_size=20)),
)
bom = st.sampled_from([b"", b"\xef\xbb\xbf"])
payloads = st.one_of(
    st.none(),
    st.binary(max_size=600),
    st.builds(lambda b, t: b + t.encode("utf-8"), bom, st.text(max_size=300)),
    # Mostly UTF-8 with a few stray bytes: encoding errors at every kind of offset.
    st.lists(st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=3)), max_size=12).map(
        b"".join
    ),
)


@given(payload=payloads, source=sources, limits=limits_strategy)
def test_arbitrary_bytes_never_raise(payload: bytes | None, source: Source, limits: Limits) -> None:
    outcomes = process_payload(payload, source, limits, now=NOW, version="p")
    check_envelope(outcomes, source, null=payload is None)


# --- marker soup ----------------------------------------------------------------------------------

KNOWN_NAMES = ["F-N", "D-A-T-E", "T-I-T-L-E", "T-E-X-T", "S-O-U-R-C-E"]
names = st.one_of(
    st.sampled_from(KNOWN_NAMES),
    st.lists(st.sampled_from(string.ascii_uppercase), min_size=1, max_size=4).map("-".join),
)
markers = st.builds(lambda name, suffix: f"{name}-{suffix}.", names, st.sampled_from(["S-T-A-R-T", "E-N-D"]))
spaces = st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000"])
words = st.text(alphabet=string.ascii_letters + string.digits + "-.,;:!?'\"()_ éß東", min_size=1, max_size=8)
fragments = st.sampled_from(
    ["-S-T-A-R-T.", "-E-N-D.", "S-T-A-R-T.", "F-N", "-", ".", "F-N-S-T-A-R-T", "\ufeff"]
)
tokens = st.one_of(markers, markers, markers, spaces, words, fragments)
joins = st.sampled_from(["", " ", " ", "\n"])


@st.composite
def soups(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(tokens, joins), max_size=40))
    return "".join(token + join for token, join in parts)


@given(soup=soups(), prefix=bom)
def test_marker_soup_yields_one_outcome_per_record(soup: str, prefix: bytes) -> None:
    payload = prefix + soup.encode("utf-8")
    # One leading byte order mark is not part of the text (the soup itself may start with U+FEFF).
    text = payload.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    ref = reference_markers(text)
    core = find_markers(text)
    assert [(m.start, m.end, m.name, m.is_end) for m in core] == [
        (m.start, m.end, m.name, m.is_end) for m in ref
    ]

    outcomes = process_payload(payload, SOURCE, Limits(), now=NOW, version="p")
    check_envelope(outcomes, SOURCE)

    if not ref:
        assert len(outcomes) == 1
        expected = ErrorCode.EMPTY_PAYLOAD if not text or text.isspace() else ErrorCode.NO_MARKERS
        assert outcomes[0].error is expected
        return

    starts = reference_record_starts(ref)
    assert len(outcomes) == len(starts)
    bounds = [*starts, len(text)]
    for i, outcome in enumerate(outcomes):
        assert outcome.error is None or not outcome.error.payload_level
        record_text = text[bounds[i] : bounds[i + 1]]
        if outcome.is_article:
            continue
        event = decode(outcome)
        assert event["raw"]["text"] == record_text.strip()
        position = event["error"]["position"]
        if position is not None:
            # A record's problem lies within the record, counted in the whole decoded payload.
            assert bounds[i] <= position <= bounds[i + 1]


# --- valid records round-trip ---------------------------------------------------------------------

PADDING = st.text(alphabet=" \t\n\r\x0b\x0c\u2003\u3000", min_size=1, max_size=3)
SEPARATORS = st.sampled_from(["", " ", "\n", "\r\n\r\n", "\t "])


def _marker_free(value: str) -> bool:
    return "-S-T-A-R-T." not in value and "-E-N-D." not in value


plain_values = st.text(max_size=40).filter(_marker_free)
# Text that looks like markers but is glued to a letter, digit or hyphen, so that it is value text.
glued_markers = st.builds(
    lambda glue, marker: glue + marker, st.sampled_from(["a", "z", "7", "é", "x-"]), markers
)
tricky_values = st.lists(st.one_of(plain_values, glued_markers, spaces), min_size=1, max_size=5).map("".join)
values = st.one_of(plain_values, tricky_values).filter(lambda s: s == s.strip() and not reference_markers(s))
non_empty_values = values.filter(bool)
# A valid title has a visible character: one ASCII letter or digit is one, whatever the rest.
titles = non_empty_values.map(lambda s: s if any(c.isascii() and c.isalnum() for c in s) else "t" + s)
extra_names = (
    st.lists(st.sampled_from(string.ascii_uppercase), min_size=1, max_size=6)
    .map("".join)
    .filter(lambda n: n.lower() not in REQUIRED)
)


@dataclass(frozen=True)
class GenRecord:
    fn: int
    fn_text: str
    date: dt.date
    title: str
    text: str
    extra: dict[str, str]  # upper-case name -> value


@st.composite
def gen_records(draw: st.DrawFn) -> GenRecord:
    fn = draw(st.integers(0, 10**18 - 1))
    digits = str(fn)
    fn_text = "0" * draw(st.integers(0, 18 - len(digits))) + digits
    extra = draw(st.dictionaries(extra_names, values, max_size=3))
    return GenRecord(fn, fn_text, draw(st.dates()), draw(titles), draw(non_empty_values), extra)


def _field(draw: st.DrawFn, name: str, value: str) -> str:
    marker = "-".join(name.upper())
    return f"{marker}-S-T-A-R-T.{draw(PADDING)}{value}{draw(PADDING)}{marker}-E-N-D."


@st.composite
def rendered(draw: st.DrawFn, rec: GenRecord, first: bool) -> str:
    fields = {"fn": rec.fn_text, "date": rec.date.isoformat(), "title": rec.title, "text": rec.text}
    fields.update(rec.extra)
    order = draw(st.permutations(sorted(fields)))
    if not first:  # a later record runs from its F-N START: F-N comes first
        order = ["fn", *[name for name in order if name != "fn"]]
    return "".join(_field(draw, name, fields[name]) + draw(SEPARATORS) for name in order)


@st.composite
def payloads_of_valid_records(draw: st.DrawFn) -> tuple[bytes, list[GenRecord]]:
    records = draw(st.lists(gen_records(), min_size=1, max_size=4))
    body = "".join(draw(rendered(rec, first=i == 0)) for i, rec in enumerate(records))
    lead, trail = draw(st.sampled_from(["", " ", "\n\n"])), draw(st.sampled_from(["", "\n", " \t"]))
    return draw(bom) + (lead + body + trail).encode("utf-8"), records


@given(case=payloads_of_valid_records())
def test_valid_records_round_trip_exactly(case: tuple[bytes, list[GenRecord]]) -> None:
    payload, records = case
    outcomes = process_payload(payload, SOURCE, Limits(), now=NOW, version="p")
    check_envelope(outcomes, SOURCE)
    assert [o.error for o in outcomes] == [None] * len(records), [decode(o).get("error") for o in outcomes]
    for outcome, rec in zip(outcomes, records, strict=True):
        data = decode(outcome)["data"]
        extra = {name.lower(): value for name, value in rec.extra.items()}
        date = rec.date.isoformat()
        assert data == {
            "fn": rec.fn,
            "date": date,
            "title": rec.title,
            "text": rec.text,
            "extra": extra,
            "sha256": reference_digest(rec.fn, date, rec.title, rec.text, extra),
        }
        assert outcome.fn == rec.fn


@given(case=payloads_of_valid_records(), junk=st.sampled_from(["oops", "F-N-E-N-D.", "X-S-T-A-R-T. y"]))
def test_one_spoiled_record_does_not_spoil_the_others(case: tuple[bytes, list[GenRecord]], junk: str) -> None:
    payload, records = case
    text = payload.decode("utf-8-sig")
    ref = reference_markers(text)
    starts = reference_record_starts(ref)
    assert len(starts) == len(records)
    # Spoil the last record by appending junk at the end: only that record fails.
    outcomes = process_payload((text + " " + junk).encode(), SOURCE, Limits(), now=NOW, version="p")
    check_envelope(outcomes, SOURCE)
    assert [o.error is None for o in outcomes] == [True] * (len(records) - 1) + [False]
    assert [o.fn for o in outcomes[:-1]] == [r.fn for r in records[:-1]]


# --- the hot path and the full path agree -----------------------------------------------------------


@given(case=payloads_of_valid_records(), source=sources)
def test_hot_path_events_equal_the_full_paths(case: tuple[bytes, list[GenRecord]], source: Source) -> None:
    # process_payload takes the flat hot path (_articles) for clean, valid payloads; the full path
    # (scan_markers, validate_record, _Builder.record) must make byte-identical outcomes of them.
    payload, _ = case
    text = payload.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    limits = Limits()
    clean = scan_clean(text, limits.max_records_per_payload)
    assume(clean is not None)  # a marker glued into a value is valid, but not for the hot path
    assert clean is not None
    hot = _articles(clean, source, limits, NOW)
    assert hot is not None
    records = scan_markers(text, limits.max_records_per_payload)
    assert isinstance(records, list)
    builder = _Builder(source, limits, NOW, "p")
    full = [builder.record(i, rec, text) for i, rec in enumerate(records)]
    assert hot == full
    assert process_payload(payload, source, limits, now=NOW, version="p") == hot
