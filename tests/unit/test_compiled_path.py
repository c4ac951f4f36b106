"""The compiled record path (``articles`` in ``service/core/_speedups.c``) against the Python path.

Wherever the compiled path answers, its outcomes must be the reference's byte for byte
(``process_payload_reference``: ids, keys, event bytes, types); where it cannot prove a payload it
must say None and leave it to the reference. ``expected_compiled`` says, independently of the C
code, which payloads it must take, so that neither a wrong answer nor a needless fallback passes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from markertext import FIXTURES, NOW, SOURCE, fld, record
from test_properties import payloads_of_valid_records, soups
from test_speedups import CASES

from schemas.events import ArticleData, ArticleIngested
from service.core import events
from service.core.events import (
    Outcome,
    Source,
    compiled_articles,
    process_payload,
    process_payload_reference,
    valid_traceparent,
)
from service.core.limits import Limits
from service.core.message import ARTICLE_RECORD_RESERVE, strip_bom
from service.core.origin import Origin
from service.core.parser import _scan_clean_py
from service.core.validation import _BLANK_LETTERS, REQUIRED, has_visible_character

ROOT = Path(__file__).resolve().parents[2]
VERSION = "compiled-test"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SEED = (FIXTURES / "seed_2433.txt").read_bytes()
BOM = b"\xef\xbb\xbf"

needs_compiled = pytest.mark.skipif(not events.COMPILED, reason="the compiled record path is not built")


def expected_compiled(payload: bytes, source: Source, limits: Limits, reference: list[Outcome]) -> bool:
    """Whether the compiled path must take this payload: the conditions it documents, in Python."""
    if len(payload) > limits.max_payload_bytes:
        return False
    if not all(-(2**63) <= n < 2**63 for n in (source.partition, source.offset)):
        return False
    try:
        text = strip_bom(payload).decode("utf-8")
    except UnicodeDecodeError:
        return False
    clean = _scan_clean_py(text, limits.max_records_per_payload)
    if clean is None:
        return False
    for rec in clean:
        values = rec.values
        if len(values) > 64 or any(name not in values for name in REQUIRED):
            return False
        fn, date, title, body = values["fn"], values["date"], values["title"], values["text"]
        if not (1 <= len(fn) <= 18 and all("0" <= c <= "9" for c in fn)):
            return False
        if not (len(date) == 10 and date.isascii() and date[:4].isdigit() and date[5:7].isdigit()):
            return False
        if not (date[4] == date[7] == "-" and date[8:].isdigit()):
            return False
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            return False
        if not (1 <= len(title) <= limits.max_title_chars and 1 <= len(body) <= limits.max_text_chars):
            return False
        if not any("!" <= c <= "~" or (c.isalnum() and c not in _BLANK_LETTERS) for c in title):
            return False
    # What is left is the size of each event: over the limit, the reference writes a dead letter.
    return all(o.error is None for o in reference)


def assert_same(
    payload: bytes,
    source: Source = SOURCE,
    limits: Limits | None = None,
    traceparent: str | None = None,
) -> list[Outcome] | None:
    """The compiled path's answer, after holding it to the reference; None when it declined."""
    limits = limits or Limits()
    reference = process_payload_reference(
        payload, source, limits, now=NOW, version=VERSION, traceparent=traceparent
    )
    got = compiled_articles(payload, source, limits, now=NOW, traceparent=valid_traceparent(traceparent))
    if got is not None:
        assert got == reference
        for outcome in got:
            assert type(outcome) is Outcome
            assert [type(v) for v in outcome] == [int, str, bytes, bytes, type(None), int]
    assert (got is not None) == expected_compiled(payload, source, limits, reference)
    assert process_payload(payload, source, limits, now=NOW, version=VERSION, traceparent=traceparent) == (
        reference
    )
    return got


def test_the_compiled_path_is_built_with_the_scanner() -> None:
    # Both come from the one C file: built together or not at all.
    from service.core import parser

    assert events.COMPILED == parser.SPEEDUPS


# --- listed payloads -------------------------------------------------------------------------------

TAKEN = [
    SEED,
    BOM + SEED,
    record().encode(),
    (record() + " " + record(fn="2") + "\n" + record(fn="3", source="wire")).encode(),
    # Every escape orjson writes, and what it leaves alone (DEL, '/', U+2028, non-ASCII).
    record(title='Q " B \\ /', text="".join(map(chr, range(1, 32))) + " \x7f \u2028 \u2029 end").encode(),
    record(title="\x00 zero", text="tab\there, cr\rlf\n, bell\x07, esc\x1b, \x1f").encode(),
    record(title="Café — “quoted”", text="naïve 東京 🙂 𝔘 \U0010ffff").encode(),
    record(title="東京", text="only CJK").encode(),
    record(title="١٢٣", text="Arabic-Indic digits draw something").encode(),
    record(title="\u200b visible after a zero-width space", text="x").encode(),
    record(title="\ufeffBOM inside", text="\ufeff").encode(),
    # White space of every kind around values and between fields.
    (
        "\u3000"
        + fld("fn", "1", "\u00a0\t")
        + "\x1c"
        + fld("date", "2024-02-29", "\x85")
        + fld("title", "t", "\u2028")
        + "\u2003"
        + fld("text", "x", "\x1f\x0b\x0c")
        + "\u205f\n"
    ).encode(),
    # FN and date edges.
    record(fn="0").encode(),
    record(fn="000000000000000042").encode(),
    record(fn="9" * 18).encode(),
    record(date="0001-01-01").encode(),
    record(date="9999-12-31").encode(),
    record(date="2000-02-29").encode(),
    # Extra fields: empty values, names out of order (the digest sorts them, the event does not).
    record(zeta="last", alpha="", m="middle", x='"quoted"').encode(),
    (fld("text", "text first") + fld("title", "T") + fld("fn", "5") + fld("date", "2024-01-24")).encode(),
    # Hyphens and capitals that make no marker suffix.
    record(text="A-B-C - -- X-RAY F-N-S-T-A-R-T S-T-A-R-T. -E-N-D -S-T-A-R-T F-N-E-N-D").encode(),
    record(text="-" * 40 + " many hyphens " + "-A" * 30).encode(),
]

DECLINED = [
    b"",
    b"   ",
    b"no markers",
    BOM + BOM + SEED,  # the second BOM is U+FEFF before the first marker: stray text
    SEED + b" stray",
    b"\xff" + SEED,
    SEED.replace(b"2433", b"2\xc0\xaf"),  # an overlong '/'
    SEED.replace(b"2433", b"\xed\xa0\x80"),  # a surrogate
    SEED.replace(b"2433", b"\xf4\x90\x80\x80"),  # above U+10FFFF
    SEED[:-5] + b"\xe6\x9d",  # truncated
    record(fn="").encode(),
    record(fn="9" * 19).encode(),
    record(fn="0" * 18 + "5").encode(),  # valid (FN 5) but 19 digits: the Python path decides
    record(fn="-1").encode(),
    record(fn="١٢").encode(),
    record(date="0000-01-01").encode(),
    record(date="2023-02-29").encode(),
    record(date="1900-02-29").encode(),
    record(date="2024-13-01").encode(),
    record(date="2024-04-31").encode(),
    record(date="2024-1-01").encode(),
    record(date="２０２４-01-01").encode(),
    record(title="\u200b").encode(),
    record(title="\u115f\u3164").encode(),  # blank letters
    record(title="\u0301").encode(),  # a lone combining mark: the Python check says invalid
    record(title="…").encode(),  # valid (punctuation), but not ASCII: the Python check says so
    record(title="").encode(),
    record(text="").encode(),
    (fld("fn", "1") + fld("date", "2024-01-24") + fld("title", "t")).encode(),
    record().replace("T-I-T-L-E", "T-I-T-L-E-X").encode(),  # no title
    record(text="a T-E-X-T-S-T-A-R-T. inside").encode(),
    # Glued marker-like text is value text, but the scanner of clean payloads leaves it to Python.
    record(text="aT-E-X-T-E-N-D. x-E-N-D.y 9F-N-S-T-A-R-T.").encode(),
    record(text="glued").replace("glued T-E-X-T-E-N-D.", "gluedT-E-X-T-E-N-D.").encode(),
    (record() + fld("title", "again")).encode(),
    record(**{f"x{'y' * k}": "v" for k in range(61)}).encode(),  # 65 fields: not for it
]


@needs_compiled
@pytest.mark.parametrize("payload", TAKEN)
def test_the_compiled_path_takes_clean_valid_payloads_and_writes_the_references_bytes(payload: bytes) -> None:
    assert assert_same(payload) is not None


@needs_compiled
@pytest.mark.parametrize("payload", DECLINED)
def test_the_compiled_path_declines_what_it_cannot_prove(payload: bytes) -> None:
    assert assert_same(payload) is None


@needs_compiled
@pytest.mark.parametrize("text", CASES)
def test_the_scanners_cases_agree(text: str) -> None:
    for max_records in (1, 2, 100):
        assert_same(text.encode("utf-8"), limits=Limits(max_records_per_payload=max_records))


def test_the_listed_extra_fields_make_65_fields() -> None:
    values = _scan_clean_py(DECLINED[-1].decode(), 10)
    assert values is not None
    assert len(values[0].values) == 65


# --- the per-message values ------------------------------------------------------------------------

SOURCES = [
    SOURCE,
    Source("t", 0, 0),
    Source("news.raw", 2**31 - 1, 2**63 - 1, 253_402_300_799_999, None),
    Source("news.raw", 1, 2, -1),
    Source("news.raw", 1, 2, 2**63 - 1),
    Source('we"ird\\ topic \x01 é 東 🙂', 7, 8, 0, b"k"),
    Source("news.raw", 4, 5, None, None, Origin("other.topic:9:123", 0)),
    Source("news.raw", 4, 5, None, None, Origin("other.topic:9:123", 9_999_999_999)),
    Source("news.raw", 4, 5, None, None, Origin('é"\\:1:2', 3)),
]


@needs_compiled
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("traceparent", [None, TRACEPARENT, "00-bad", "ff" + TRACEPARENT[2:]])
def test_ids_times_sources_and_traceparents_agree(source: Source, traceparent: str | None) -> None:
    payload = (record(fn="1") + " " + record(fn="2") + " " + record(fn="3")).encode()
    got = assert_same(payload, source, traceparent=traceparent)
    assert got is not None
    first = 0 if source.origin is None else source.origin.record_index
    assert [o.event_id for o in got] == [source.event_id(i) for i in range(3)]
    assert got[2].event_id.endswith(f":{first + 2}")


@needs_compiled
def test_offsets_beyond_64_bits_are_left_to_the_python_path() -> None:
    assert assert_same(SEED, Source("t", 0, 2**63)) is None
    assert assert_same(SEED, Source("t", 0, 2**64 - 1)) is None


def test_the_traceparent_sits_after_recordindex_and_validates() -> None:
    outcome = process_payload(SEED, SOURCE, Limits(), now=NOW, version=VERSION, traceparent=TRACEPARENT)[0]
    event = orjson.loads(outcome.value)
    keys = list(event)
    assert keys[keys.index("recordindex") + 1 : keys.index("recordindex") + 3] == ["traceparent", "data"]
    assert event["traceparent"] == TRACEPARENT
    assert ArticleIngested.model_validate_json(outcome.value).traceparent == TRACEPARENT
    plain = process_payload(SEED, SOURCE, Limits(), now=NOW, version=VERSION)[0].value
    assert b"traceparent" not in plain
    assert outcome.value.replace(b'"traceparent":"' + TRACEPARENT.encode() + b'",', b"") == plain
    # A dumped model reads as the event it came from: absent, not null.
    assert "traceparent" not in ArticleIngested.model_validate_json(plain).model_dump(mode="json")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        TRACEPARENT.upper(),
        TRACEPARENT + "-",
        TRACEPARENT[:-1],
        "ff" + TRACEPARENT[2:],
        TRACEPARENT[:3] + "0" * 32 + TRACEPARENT[35:],
        TRACEPARENT[:36] + "0" * 16 + TRACEPARENT[52:],
        TRACEPARENT.replace("-", "_"),
        "０" + TRACEPARENT[1:],
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert valid_traceparent(value) is None
    outcome = process_payload(SEED, SOURCE, Limits(), now=NOW, version=VERSION, traceparent=value)[0]
    assert b"traceparent" not in outcome.value
    assert outcome == process_payload(SEED, SOURCE, Limits(), now=NOW, version=VERSION)[0]


def test_a_dead_letter_carries_no_traceparent() -> None:
    [outcome] = process_payload(
        b"no markers", SOURCE, Limits(), now=NOW, version=VERSION, traceparent=TRACEPARENT
    )
    assert outcome.error is not None
    assert b"traceparent" not in outcome.value


# --- limits at their boundaries --------------------------------------------------------------------


@needs_compiled
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize(
    "payload", [SEED, record(title="é" * 5, text="東" * 7 + "🙂").encode(), record(text="\x00" * 50).encode()]
)
def test_the_size_of_an_event_at_its_limit(payload: bytes, delta: int) -> None:
    [reference] = process_payload_reference(payload, SOURCE, Limits(), now=NOW, version=VERSION)
    limits = Limits(max_event_bytes=len(reference.value) + ARTICLE_RECORD_RESERVE + delta)
    got = assert_same(payload, limits=limits)
    assert (got is not None) == (delta >= 0)


@needs_compiled
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("value", ["a" * 7, "é" * 7, "東" * 7, "🙂" * 7, "aé東🙂" * 2])
def test_title_and_text_lengths_count_code_points(value: str, delta: int) -> None:
    limit = len(value) + delta
    assert_same(record(title=value).encode(), limits=Limits(max_title_chars=limit))
    got = assert_same(record(text=value).encode(), limits=Limits(max_text_chars=limit))
    assert (got is not None) == (delta >= 0)


@needs_compiled
def test_max_records_at_its_limit() -> None:
    payload = " ".join(record(fn=str(i)) for i in range(5)).encode()
    for max_records in range(7):
        got = assert_same(payload, limits=Limits(max_records_per_payload=max_records))
        assert (got is not None) == (max_records >= 5)


@needs_compiled
def test_many_records() -> None:
    payload = "\n".join(record(fn=str(i), title=f"T{i}", z=str(i)) for i in range(2000)).encode()
    got = assert_same(payload)
    assert got is not None
    assert len(got) == 2000


@needs_compiled
def test_dates_agree_with_fromisoformat() -> None:
    for year in ("0000", "0001", "0004", "0100", "1900", "2000", "2023", "2024", "2100", "2400", "9999"):
        for month in range(14):
            for day in range(33):
                date = f"{year}-{month:02d}-{day:02d}"
                try:
                    dt.date.fromisoformat(date)
                    valid = True
                except ValueError:
                    valid = False
                got = assert_same(record(date=date).encode())
                assert (got is not None) == valid, date


# --- generated payloads ----------------------------------------------------------------------------

limits_strategy = st.one_of(
    st.just(Limits()),
    st.builds(
        Limits,
        max_records_per_payload=st.integers(1, 6),
        max_title_chars=st.integers(1, 50),
        max_text_chars=st.integers(1, 200),
        max_event_bytes=st.integers(256, 2000),
    ),
)


@needs_compiled
@given(case=payloads_of_valid_records(), limits=limits_strategy)
def test_generated_valid_records_agree(case: tuple[bytes, object], limits: Limits) -> None:
    assert_same(case[0], limits=limits)


@needs_compiled
@given(
    text=st.one_of(soups(), st.text(max_size=300)),
    bom=st.sampled_from([b"", BOM]),
    traceparent=st.sampled_from([None, TRACEPARENT]),
)
@example(text=SEED.decode(), bom=b"", traceparent=None)
def test_generated_text_agrees(text: str, bom: bytes, traceparent: str | None) -> None:
    assert_same(bom + text.encode(), traceparent=traceparent)


@needs_compiled
@given(
    values=st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=20), min_size=3, max_size=3),
    fn=st.integers(0, 10**18 - 1),
    date=st.dates(),
)
def test_generated_values_of_any_character_agree(values: list[str], fn: int, date: dt.date) -> None:
    title, body, extra = values
    assert_same(record(fn=str(fn), date=date.isoformat(), title=title, text=body, extra=extra).encode())


@needs_compiled
@given(case=payloads_of_valid_records())
def test_what_the_compiled_path_writes_articledata_accepts_with_the_same_values(
    case: tuple[bytes, object],
) -> None:
    got = compiled_articles(case[0], SOURCE, Limits(), now=NOW)
    if got is None:
        return  # not for it (e.g. a title the C check cannot prove visible): no claim
    for outcome in got:
        data = orjson.loads(outcome.value)["data"]
        article = ArticleData.model_validate(data)
        assert article.model_dump(mode="json") == data
        assert article.fn == outcome.fn
        assert str(article.fn).encode() == outcome.key


# --- the premises of the C checks ------------------------------------------------------------------


def test_what_the_c_title_check_calls_visible_is_visible_for_every_code_point() -> None:
    # surely_visible() in _speedups.c: an ASCII character from '!' to '~', or one str.isalnum
    # accepts that is not a blank letter. Each must be one has_visible_character calls visible.
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        if ("!" <= ch <= "~") or (ch.isalnum() and ch not in _BLANK_LETTERS):
            assert unicodedata.category(ch)[0] in "LNPS", hex(code)
            assert has_visible_character(ch), hex(code)


# --- its arguments ---------------------------------------------------------------------------------


@needs_compiled
def test_bad_arguments() -> None:
    from service.core import _speedups

    articles: Callable[..., object] = _speedups.articles  # called with wrong types on purpose
    good: tuple[object, ...] = (Outcome, SEED, "t:0:0:", 0, "urn:x", "2024-01-01T00:00:00.000Z", "t", 0, 0)
    good += (None, 10, 1000, 10**6, 10**6)

    def with_(at: int, value: object) -> tuple[object, ...]:
        return (*good[:at], value, *good[at + 1 :])

    assert articles(*good) is not None
    with pytest.raises(TypeError):
        articles(*good[:-1])
    with pytest.raises(TypeError):
        articles(*with_(0, dict))
    for at in (2, 4, 5, 6, 9):
        with pytest.raises(TypeError):
            articles(*with_(at, b"x"))
    # Not for it, rather than an error: a payload that is not bytes, ints it cannot hold.
    assert articles(*with_(1, bytearray(SEED))) is None
    assert articles(*with_(3, -1)) is None
    assert articles(*with_(7, 2**64)) is None
    assert articles(*with_(8, "0")) is None
    # A str it cannot write as UTF-8 (a lone surrogate): the Python path decides, and raises.
    assert articles(*with_(6, "t\ud800")) is None


@needs_compiled
def test_no_reference_or_memory_is_leaked_on_any_path() -> None:
    import gc
    import hashlib
    import tracemalloc

    from service.core import _speedups

    prefix, uri, time, topic = "leak.t\u00e9:1:2:", "urn:x", "2024-01-01T00:00:00.000Z", "t"
    wide = record(title="Café 🙂", text='東 \x00 "', source="wire").encode()
    payloads = [SEED, wide, b"\xff" + SEED, SEED + b" stray", record(date="2023-02-29").encode()]
    cases: list[tuple[object, ...]] = [
        (Outcome, payload, prefix, 7, uri, time, topic, 1, 2, tp, 100, 1000, 10**6, 10**6)
        for payload in payloads
        for tp in (None, TRACEPARENT)
    ]
    cases.append((Outcome, SEED, prefix, 0, uri, time, topic, 1, 2, None, 100, 1000, 10**6, 100))  # too big
    cases.append((Outcome, SEED, prefix, 0, uri, time, "t\ud800", 1, 2, None, 100, 1000, 10**6, 10**6))
    cases.append((Outcome, SEED, prefix, 0, uri, time, b"t", 1, 2, None, 100, 1000, 10**6, 10**6))
    watched = [Outcome, prefix, uri, time, topic, TRACEPARENT, hashlib.sha256, *payloads]
    articles: Callable[..., object] = _speedups.articles

    def once() -> None:
        for case in cases:
            with contextlib.suppress(TypeError):
                articles(*case)

    once()
    gc.collect()
    counts = [sys.getrefcount(obj) for obj in watched]
    tracemalloc.start()
    try:
        once()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(obj) for obj in watched] == counts
    # A leak of one object per call would be 16,000 objects here: several hundred KB.
    assert grown < 64 * 1024, grown


# --- without the C speedups ------------------------------------------------------------------------

_HIDDEN = """
import sys
sys.modules["service.core._speedups"] = None  # what an install without a C compiler has
import pytest
from service.core import events, parser
assert not events.COMPILED and not parser.SPEEDUPS
sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.timeout(240)
def test_the_core_tests_pass_without_the_c_speedups() -> None:
    tests = ["test_events.py", "test_parser.py", "test_compiled_path.py", "test_schemas.py"]
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _HIDDEN,
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not without_the_c_speedups",
            *(str(ROOT / "tests" / "unit" / name) for name in tests),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
    assert "skipped" in run.stdout  # the compiled path's own tests, which need it
