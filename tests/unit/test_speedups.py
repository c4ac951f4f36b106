"""The C scanner (``service/core/_speedups.c``) against its Python reference (``_scan_clean_py``).

The C code only recognises clean payloads faster; it must return exactly what the Python scanner
returns, None included, on any text: the field values and offsets, the record splits, the limit.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from markertext import FIXTURES, end, fld, record, start
from test_properties import soups

from service.core import parser
from service.core.parser import CleanRecord, _scan_clean_py
from service.core.validation import REQUIRED

_speedups = parser._speedups


def _can_build() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(cc) is not None and headers.exists()


def test_speedups_are_built_where_a_compiler_is() -> None:
    # Without a compiler the package installs with the Python scanner; with one it must build.
    if not _can_build():
        pytest.skip("no C compiler or Python headers here: the pure-Python scanner is in use")
    assert parser.SPEEDUPS
    assert parser.scan_clean is not _scan_clean_py


needs_speedups = pytest.mark.skipif(_speedups is None, reason="service.core._speedups is not built")


def c_scan(text: str, max_records: int) -> list[CleanRecord] | None:
    assert _speedups is not None
    return _speedups.scan_clean(CleanRecord, text, max_records)


def assert_same(text: str, max_records: int = 100) -> list[CleanRecord] | None:
    expected = _scan_clean_py(text, max_records)
    got = c_scan(text, max_records)
    assert got == expected
    if got is not None:
        assert all(type(r) is CleanRecord for r in got)
        # Same key order too: the values are a record's fields in text order.
        assert [list(r.values) for r in got] == [list(r.values) for r in expected or []]
    return got


SEED = (FIXTURES / "seed_2433.txt").read_text(encoding="utf-8")

CASES = [
    SEED,
    record(),
    record() + " " + record(fn="2") + "\n" + record(fn="3", source="wire"),
    # White space of every kind: around values, between fields, at both ends.
    "\u3000" + fld("fn", "1", "\u00a0\t") + "\x1c" + fld("title", "t", "\x85") + "\u2028\n",
    # Non-ASCII text: two- and four-byte string kinds.
    record(title="Café — “quoted”", text="naïve"),
    record(title="東京", text="emoji 🙂 and more"),
    record(text="a value with hy-phens, X-RAY, A-B-C and - dashes -"),
    record(text="-" * 40 + " many hyphens " + "-A" * 30),
    # Empty values and values that are only white space.
    fld("fn", "", "") + fld("text", "   "),
    # Not clean: the C code must say None exactly where the Python does.
    record() + " stray",
    "stray " + record(),
    record(text="a T-E-X-T-S-T-A-R-T. inside"),
    record(text="a D-A-T-E-E-N-D. inside"),
    record(text="a -E-N-D. inside"),
    start("text") + " glued" + "X" + end("text"),
    start("text") + " glued-" + end("text"),
    start("text") + " glued9" + end("text"),
    start("text") + " glued\u00e9" + end("text"),
    start("text") + " no end",
    start("text") + " ends with -",
    start("text") + end("text") + end("text"),
    fld("title", "a") + fld("title", "b"),
    fld("fn", "1") + fld("fn", "2"),
    fld("fn", "1") + fld("date", "d") + fld("fn", "2") + fld("fn", "3"),
    "-S-T-A-R-T. x -E-N-D.",
    "f-N-S-T-A-R-T. x F-N-E-N-D.",
    "F--N-S-T-A-R-T. x F--N-E-N-D.",
    "F-N-S-T-A-R-T. x F-N-E-N-D",
    "",
    "   ",
    "-",
    "no markers at all",
    "X-E-N-D-S-T-A-R-T. v X-E-N-D-E-N-D.",
    "A-S-T-A-R-T.A-E-N-D.",
]


@needs_speedups
@pytest.mark.parametrize("text", CASES)
def test_c_scanner_matches_the_python_reference(text: str) -> None:
    for max_records in (0, 1, 2, 3, 100):
        assert_same(text, max_records)


@needs_speedups
def test_c_scanner_finds_the_seed_fields() -> None:
    got = assert_same(SEED)
    assert got is not None
    assert [list(r.values) for r in got] == [["fn", "date", "title", "text"]]
    assert got[0].values["fn"] == "2433"
    assert got[0].values["date"] == "2024-01-24"


@needs_speedups
def test_c_scanner_splits_records_at_a_second_fn() -> None:
    text = record(fn="1") + "  " + record(fn="2")
    got = assert_same(text)
    assert got is not None
    assert [r.start for r in got] == [0, text.index("F-N-S-T-A-R-T.", 1)]
    assert [r.values["fn"] for r in got] == ["1", "2"]


@needs_speedups
def test_c_scanner_rejects_bad_arguments() -> None:
    assert _speedups is not None
    with pytest.raises(TypeError):
        _speedups.scan_clean(dict, "x", 1)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        _speedups.scan_clean(CleanRecord, b"x", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _speedups.scan_clean(CleanRecord, "x")  # type: ignore[call-arg]


markerish = st.text(alphabet="FNSTARTEDXIL-. \u00a0\t\n\u3000aé9", max_size=120)


@needs_speedups
@given(text=st.one_of(soups(), markerish, st.text(max_size=200)), max_records=st.integers(0, 4))
@example(text=SEED, max_records=1)
def test_c_scanner_matches_on_generated_text(text: str, max_records: int) -> None:
    assert_same(text, max_records)


@needs_speedups
@given(
    values=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), min_size=4, max_size=4),
    pad=st.sampled_from(["", " ", "\n\t", "\u3000"]),
    copies=st.integers(1, 3),
)
def test_c_scanner_matches_on_generated_records(values: list[str], pad: str, copies: int) -> None:
    one = pad.join(fld(name, value, pad) for name, value in zip(REQUIRED, values, strict=True))
    assert_same(pad.join([one] * copies), max_records=2)
