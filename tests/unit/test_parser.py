"""The marker format's rules: markers, fields, values, extras, record splitting, and the seed record."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from markertext import FIXTURES, decode, doc_section, end, fenced_blocks, fld, only, record, run, start

from schemas.errors import ErrorCode
from service.core.limits import Limits
from service.core.parser import Marker, find_markers, scan

SEED_PATH = FIXTURES / "seed_2433.txt"
SEED_TITLE = "Mediators push for Gaza ceasefire but gaps remain"


# --- the seed record ------------------------------------------------------------------------------


def _seed_text_independently(raw: str) -> str:
    """The TEXT value cut out of the fixture with plain string operations (not the scanner)."""
    after_start = raw.split("T-E-X-T-S-T-A-R-T.", 1)[1]
    return after_start.split("T-E-X-T-E-N-D.", 1)[0].strip()


def test_seed_record_parses_to_its_exact_fields() -> None:
    raw_bytes = SEED_PATH.read_bytes()
    outcomes = run(raw_bytes)
    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert outcome.is_article
    assert outcome.error is None
    assert outcome.fn == 2433
    data = decode(outcome)["data"]
    assert data["fn"] == 2433
    assert data["date"] == "2024-01-24"
    assert data["title"] == SEED_TITLE
    assert data["extra"] == {}
    text = data["text"]
    assert text.startswith("There is huge pressure for a new ceasefire")
    assert text.endswith("which Israel says is not final.")
    assert text == _seed_text_independently(raw_bytes.decode("utf-8"))
    assert len(text) == 5287
    # The inner double space of the feed is kept verbatim.
    assert "complete cessation of hostilities.  The handover" in text


def test_seed_record_digest_matches_an_independent_computation() -> None:
    raw = SEED_PATH.read_text(encoding="utf-8")
    text = _seed_text_independently(raw)
    normalized = "\x1f".join(["2433", "2024-01-24", SEED_TITLE, text])
    expected = hashlib.sha256(normalized.encode("utf-8")).hexdigest()
    data = only(SEED_PATH.read_bytes())["data"]
    assert data["sha256"] == expected
    # Pinned too, so that a change of the fixture or of the normalization cannot pass unnoticed.
    assert expected == "e0c581973f349670cdfd1d96dfedd84c1ce517c65a92d737470e23b4a338d028"


# --- markers --------------------------------------------------------------------------------------


def test_find_markers_reports_name_span_and_kind() -> None:
    text = "F-N-S-T-A-R-T. 7 F-N-E-N-D. S-O-U-R-C-E-S-T-A-R-T."
    assert find_markers(text) == [
        Marker(0, 14, "fn", False),
        Marker(17, 27, "fn", True),
        Marker(28, 50, "source", False),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "xF-N-S-T-A-R-T.",  # glued to a lower-case letter
        "XF-N-S-T-A-R-T.",  # reads as name "N" glued to "X"
        "7F-N-S-T-A-R-T.",  # glued to a digit
        "éF-N-S-T-A-R-T.",  # glued to a non-ASCII letter
        "-F-N-S-T-A-R-T.",  # glued to a hyphen
        "x-F-N-S-T-A-R-T.",  # glued to a hyphen after a word
        "f-n-S-T-A-R-T.",  # lower-case name
        "F-N-S-T-A-R-T",  # no final dot
        "F-N-START.",  # suffix not hyphenated
        "FN-S-T-A-R-T.",  # name letters not hyphen-joined: "N" glued to "F"
        "F-N-E-N-D",  # END without its dot
        "-S-T-A-R-T.",  # no name at all
        " -E-N-D.",
    ],
)
def test_text_that_is_not_a_marker(text: str) -> None:
    assert find_markers(text) == []
    assert find_markers(f"a {text} b") == []


@pytest.mark.parametrize("before", [" ", "\n", "\t", ".", "(", "_", '"', "\u00a0", ","])
def test_a_marker_after_a_non_word_character_is_a_marker(before: str) -> None:
    assert find_markers(f"x{before}F-N-S-T-A-R-T.") == [Marker(2, 16, "fn", False)]


def test_hyphen_joined_capitals_before_a_marker_extend_its_name() -> None:
    # "X-F-N" is one name: upper-case letters joined by hyphens.
    assert find_markers("X-F-N-S-T-A-R-T.") == [Marker(0, 16, "xfn", False)]


def test_markers_may_touch_each_other_and_the_payload_ends() -> None:
    payload = record(sep="")
    assert "D-A-T-E-E-N-D.T-I-T-L-E-S-T-A-R-T." in payload
    assert only(payload)["data"]["title"] == "A title"


def test_glued_markers_inside_a_value_are_kept_as_text() -> None:
    body = "see xF-N-S-T-A-R-T. and 7D-A-T-E-E-N-D. and a-T-I-T-L-E-S-T-A-R-T. or F-N-S-T-A-R-T without dot"
    event = only(record(text=body))
    assert event["data"]["text"] == body


def test_an_end_marker_glued_to_the_value_is_not_an_end_marker() -> None:
    payload = "F-N-S-T-A-R-T. 2433F-N-E-N-D. " + record()[len(fld("fn", "1")) + 1 :]
    error = only(payload)["error"]
    assert error == {
        "code": "unterminated_field",
        "message": error["message"],
        "field": "fn",
        "position": 0,
    }


# --- values ---------------------------------------------------------------------------------------


def test_values_are_trimmed_and_inner_white_space_is_kept() -> None:
    title = "Two  spaces\tand a tab"
    text = "Line one.\n\n  Line two,  indented.\r\nEnd."
    payload = " ".join(
        [
            fld("fn", "1", pad="\n\t "),
            fld("date", "2024-01-24", pad="   "),
            fld("title", title, pad=" \r\n "),
            fld("text", text, pad="\n\n"),
        ]
    )
    data = only(payload)["data"]
    assert data["title"] == title
    assert data["text"] == text
    assert data["date"] == "2024-01-24"
    assert data["fn"] == 1


def test_value_without_any_padding_is_read_whole() -> None:
    # An END marker right after a value is a marker when the value ends in punctuation.
    payload = record(title="x.", text="(y)").replace(" x. ", "x.").replace(" (y) ", "(y)")
    assert "T-I-T-L-E-S-T-A-R-T.x.T-I-T-L-E-E-N-D." in payload
    data = only(payload)["data"]
    assert (data["title"], data["text"]) == ("x.", "(y)")


def test_non_ascii_values_survive_exactly() -> None:
    title = "Zürich — 東京 “quoted” 🙂"
    data = only(record(title=title))["data"]
    assert data["title"] == title


def test_fn_with_leading_zeros_is_the_integer() -> None:
    data = only(record(fn="0002433"))["data"]
    assert data["fn"] == 2433


@pytest.mark.parametrize("fn", ["0", "999999999999999999"])
def test_fn_bounds_are_accepted(fn: str) -> None:
    assert only(record(fn=fn))["data"]["fn"] == int(fn)


@pytest.mark.parametrize(
    ("fn", "value"),
    [
        ("0" * 22, 0),
        ("0" * 18 + "1", 1),
        ("0" * 5000 + "9" * 18, 10**18 - 1),
    ],
)
def test_fn_with_any_number_of_leading_zeros_is_the_integer(fn: str, value: int) -> None:
    event = only(record(fn=fn))
    assert (event["data"]["fn"], event["subject"]) == (value, str(value))


@pytest.mark.parametrize("title", ["x", "\u200bx", "\x00-", "—", "🙂", "\ue000", "１", "e\u0301"])
def test_a_title_with_a_visible_character_is_an_article(title: str) -> None:
    assert only(record(title=title))["data"]["title"] == title


@pytest.mark.parametrize("date", ["2024-02-29", "0001-01-01", "9999-12-31"])
def test_existing_dates_are_accepted(date: str) -> None:
    assert only(record(date=date))["data"]["date"] == date


# --- fields: order and extras ---------------------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(["fn", "date", "title", "text"])))
def test_required_fields_in_any_order(order: tuple[str, ...]) -> None:
    values = {"fn": "12", "date": "2023-12-31", "title": "T", "text": "Body."}
    payload = " ".join(fld(name, values[name]) for name in order)
    data = only(payload)["data"]
    assert (data["fn"], data["date"], data["title"], data["text"]) == (12, "2023-12-31", "T", "Body.")


def test_other_fields_go_lower_cased_into_extra() -> None:
    payload = " ".join(
        [
            fld("source", "  BBC  News "),
            record(),
            fld("url", "https://example.org/a?b=c"),
            fld("x", ""),
            "A-U-T-H-O-R-S-S-T-A-R-T. Jane Doe; John Roe A-U-T-H-O-R-S-E-N-D.",
        ]
    )
    data = only(payload)["data"]
    assert data["extra"] == {
        "source": "BBC  News",
        "url": "https://example.org/a?b=c",
        "x": "",
        "authors": "Jane Doe; John Roe",
    }


def test_extra_fields_enter_the_digest_in_name_order() -> None:
    payload = record(zeta="last", alpha="first")
    data = only(payload)["data"]
    normalized = "\x1f".join(["1", "2024-01-24", "A title", "Body text.", "alpha=first", "zeta=last"])
    assert data["sha256"] == hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def test_digest_does_not_depend_on_field_order_or_padding() -> None:
    a = record(source="BBC")
    b = "\n".join(
        [
            fld("source", "BBC", "  "),
            fld("text", "Body text."),
            fld("title", "A title"),
            fld("date", "2024-01-24"),
        ]
    ) + ("\n" + fld("fn", "01"))
    assert only(a)["data"]["sha256"] == only(b)["data"]["sha256"]


def test_digest_changes_with_any_value() -> None:
    base = only(record())["data"]["sha256"]
    variants = [record(fn="2"), record(date="2024-01-25"), record(title="B"), record(text="C"), record(s="")]
    digests = {only(p)["data"]["sha256"] for p in variants}
    assert base not in digests
    assert len(digests) == len(variants)


# --- byte order mark ------------------------------------------------------------------------------


def test_a_leading_bom_is_allowed() -> None:
    assert only(b"\xef\xbb\xbf" + record().encode())["data"]["fn"] == 1


def test_positions_are_counted_after_the_bom() -> None:
    payload = b"\xef\xbb\xbf" + ("junk " + record()).encode()
    error = only(payload)["error"]
    assert (error["code"], error["position"]) == ("stray_text", 0)


def test_a_bom_after_the_start_is_not_white_space() -> None:
    payload = (record() + " \ufeff").encode()
    error = only(payload)["error"]
    assert (error["code"], error["position"]) == ("stray_text", len(record()) + 1)


def test_positions_are_character_offsets_not_byte_offsets() -> None:
    payload = record(title="héllo wörld 🙂") + " junk"
    error = only(payload)["error"]
    assert error["code"] == "stray_text"
    assert error["position"] == payload.index("junk")
    assert error["position"] != payload.encode().index(b"junk")


# --- record splitting -----------------------------------------------------------------------------


def test_scan_record_spans_cover_the_payload() -> None:
    first, second = "lead " + record(fn="1"), record(fn="2")
    text = f"{first}  {second} "
    records = scan(text, max_records=10)
    assert isinstance(records, list)
    assert [(r.start, r.end) for r in records] == [(0, len(first) + 2), (len(first) + 2, len(text))]
    assert records[0].problem is not None
    assert records[0].problem.code is ErrorCode.STRAY_TEXT
    assert records[1].problem is None
    assert records[1].fields["fn"].value == "2"
    assert records[1].fields["fn"].position == text.index("2 F-N-E-N-D.")


def test_several_records_become_several_articles_in_order() -> None:
    payload = "\n".join(record(fn=str(n), title=f"Title {n}") for n in (5, 6, 7))
    outcomes = run(payload)
    assert [o.record_index for o in outcomes] == [0, 1, 2]
    assert [o.fn for o in outcomes] == [5, 6, 7]
    assert [decode(o)["data"]["title"] for o in outcomes] == ["Title 5", "Title 6", "Title 7"]


def test_fields_before_the_first_fn_belong_to_the_first_record() -> None:
    payload = " ".join([fld("date", "2024-01-24"), fld("title", "T"), fld("fn", "3"), fld("text", "B")])
    outcomes = run(payload + " " + record(fn="4"))
    assert [(o.fn, o.error) for o in outcomes] == [(3, None), (4, None)]


def test_a_record_runs_from_its_fn_start_to_the_next_fn_start() -> None:
    # The DATE placed before the second FN belongs to the first record: a duplicate there, missing
    # from the second record.
    payload = " ".join(
        [record(fn="1"), fld("date", "2024-01-25"), fld("fn", "2"), fld("title", "T"), fld("text", "B")]
    )
    outcomes = run(payload)
    assert len(outcomes) == 2
    first, second = (decode(o)["error"] for o in outcomes)
    assert (first["code"], first["field"], first["position"]) == (
        "duplicate_field",
        "date",
        payload.index(start("date"), payload.index(start("date")) + 1),
    )
    assert (second["code"], second["field"], second["position"]) == ("missing_field", "date", None)


def test_an_fn_start_inside_an_open_field_still_begins_a_record() -> None:
    unterminated = " ".join(
        [fld("fn", "1"), fld("date", "2024-01-24"), fld("title", "T"), start("text"), "body"]
    )
    payload = unterminated + " " + record(fn="2")
    outcomes = run(payload)
    assert len(outcomes) == 2
    error = decode(outcomes[0])["error"]
    assert (error["code"], error["field"], error["position"]) == (
        "unterminated_field",
        "text",
        payload.index(start("text")),
    )
    assert outcomes[1].is_article
    assert outcomes[1].fn == 2


def test_an_unterminated_fn_start_followed_by_an_fn_start_gives_two_records() -> None:
    payload = start("fn") + " 1 " + record(fn="2")
    outcomes = run(payload)
    assert len(outcomes) == 2
    error = decode(outcomes[0])["error"]
    assert (error["code"], error["field"], error["position"]) == ("unterminated_field", "fn", 0)
    assert outcomes[1].fn == 2


def test_an_fn_end_does_not_begin_a_record() -> None:
    payload = record(fn="1") + " " + end("fn") + " " + record(fn="2")
    outcomes = run(payload)
    assert len(outcomes) == 2
    error = decode(outcomes[0])["error"]
    assert (error["code"], error["field"], error["position"]) == (
        "unmatched_end",
        "fn",
        len(record(fn="1")) + 1,
    )
    assert outcomes[1].fn == 2


def test_stray_text_between_records_belongs_to_the_preceding_record() -> None:
    first = record(fn="1")
    payload = f"{first}\n  stray words \n{record(fn='2')}"
    outcomes = run(payload)
    assert len(outcomes) == 2
    dead = decode(outcomes[0])
    assert (dead["error"]["code"], dead["error"]["position"]) == ("stray_text", payload.index("stray"))
    assert dead["raw"]["text"] == f"{first}\n  stray words"
    assert outcomes[1].is_article


def test_text_before_the_first_marker_belongs_to_the_first_record() -> None:
    payload = f"preamble {record(fn='1')} {record(fn='2')}"
    outcomes = run(payload)
    assert [o.error for o in outcomes] == [ErrorCode.STRAY_TEXT, None]
    assert decode(outcomes[0])["error"]["position"] == 0


BAD_RECORDS = {
    "unterminated_field": " ".join(
        [fld("fn", "20"), start("date"), "2024-01-24", fld("title", "T"), fld("text", "B")]
    ),
    "unmatched_end": record(fn="20") + " " + end("title"),
    "duplicate_field": record(fn="20") + " " + fld("text", "again"),
    "missing_field": " ".join([fld("fn", "20"), fld("date", "2024-01-24"), fld("text", "B")]),
    "stray_text": record(fn="20") + " oops",
    "invalid_field": record(fn="20", date="2024-02-30"),
}


@pytest.mark.parametrize("code", sorted(BAD_RECORDS))
def test_a_bad_record_in_the_middle_does_not_harm_its_neighbours(code: str) -> None:
    parts = [record(fn="10", title="ten"), record(fn="11", title="eleven"), BAD_RECORDS[code]]
    parts += [record(fn="12", title="twelve"), record(fn="13", title="thirteen")]
    payload = "\n".join(parts)
    outcomes = run(payload)
    assert [o.record_index for o in outcomes] == [0, 1, 2, 3, 4]
    assert [o.error for o in outcomes] == [None, None, ErrorCode(code), None, None]
    titles = [decode(o)["data"]["title"] for o in outcomes if o.is_article]
    assert titles == ["ten", "eleven", "twelve", "thirteen"]
    assert [o.fn for o in outcomes] == [10, 11, None, 12, 13]
    dead = decode(outcomes[2])
    assert dead["source"]["record_index"] == 2
    assert dead["raw"]["text"] == BAD_RECORDS[code]
    # Positions are offsets in the whole payload, not in the record.
    if dead["error"]["position"] is not None:
        assert dead["error"]["position"] > payload.index(BAD_RECORDS[code])


def test_exactly_max_records_is_allowed() -> None:
    payload = " ".join(record(fn=str(n)) for n in range(3))
    outcomes = run(payload, Limits(max_records_per_payload=3))
    assert [o.fn for o in outcomes] == [0, 1, 2]


def test_scan_stops_at_too_many_records() -> None:
    problem = scan(" ".join(record(fn=str(n)) for n in range(4)), max_records=3)
    assert not isinstance(problem, list)
    assert problem.code is ErrorCode.TOO_MANY_RECORDS


def test_the_format_doc_multi_record_example() -> None:
    blocks = fenced_blocks(doc_section("## Records"))
    assert blocks[0][0] == "text"
    payload = blocks[0][1]
    outcomes = run(payload)
    assert [(o.record_index, o.fn, o.error) for o in outcomes] == [
        (0, 1, None),
        (1, None, ErrorCode.STRAY_TEXT),
        (2, 3, None),
    ]
    assert decode(outcomes[1])["error"]["position"] == payload.index("-- continued")
