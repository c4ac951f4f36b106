"""Every dead-letter error code: what triggers it, and the exact code, field and position reported."""

from __future__ import annotations

import ast
import base64
import json
import re

import pytest
from markertext import decode, doc_section, end, error_of, fenced_blocks, fld, only, record, run, start

from schemas.errors import DESCRIPTIONS, PAYLOAD_LEVEL, ErrorCode
from service.core.limits import Limits

DOCUMENTED_CODES = {
    "invalid_encoding",
    "empty_payload",
    "payload_too_large",
    "no_markers",
    "unterminated_field",
    "unmatched_end",
    "duplicate_field",
    "missing_field",
    "stray_text",
    "invalid_field",
    "too_many_records",
}


# --- the contract of the codes themselves ---------------------------------------------------------


def test_the_error_codes_are_exactly_the_documented_eleven() -> None:
    assert {code.value for code in ErrorCode} == DOCUMENTED_CODES
    assert len(ErrorCode) == 11


def test_member_names_are_the_upper_cased_values() -> None:
    assert all(code.name == code.value.upper() for code in ErrorCode)


def test_every_code_has_a_one_line_description() -> None:
    assert set(DESCRIPTIONS) == set(ErrorCode)
    for code in ErrorCode:
        assert code.description == DESCRIPTIONS[code]
        assert code.description.strip()
        assert "\n" not in code.description


def test_the_payload_level_codes() -> None:
    assert {c.value for c in PAYLOAD_LEVEL} == {
        "invalid_encoding",
        "empty_payload",
        "payload_too_large",
        "no_markers",
        "too_many_records",
    }
    assert all(code.payload_level == (code in PAYLOAD_LEVEL) for code in ErrorCode)


def _scope(payload: bytes | str | None, limits: Limits | None = None) -> tuple[str, int]:
    event = only(payload, limits)
    return event["scope"], event["source"]["record_index"]


# --- payload-level codes --------------------------------------------------------------------------


def test_invalid_encoding_reports_the_byte_offset() -> None:
    payload = "F-N-S-T-A-R-T. é ".encode() + b"\xff rest"
    error = error_of(payload)
    assert error["code"] == "invalid_encoding"
    assert error["field"] is None
    assert error["position"] == len("F-N-S-T-A-R-T. é ".encode()) == 18
    assert _scope(payload) == ("payload", 0)


def test_invalid_encoding_offset_counts_from_the_start_of_the_message_bom_included() -> None:
    payload = b"\xef\xbb\xbfab\xc3"  # a truncated two-byte sequence at byte 5
    event = only(payload)
    assert event["error"]["code"] == "invalid_encoding"
    assert event["error"]["position"] == 5
    # The offset indexes the raw copy, which is the message as received.
    assert base64.b64decode(event["raw"]["base64"])[event["error"]["position"]] == 0xC3


@pytest.mark.parametrize(
    ("payload", "position"),
    [
        (b"\x80", 0),  # a lone continuation byte
        (b"ok \xed\xa0\x80", 3),  # an encoded surrogate
        (b"ok \xc0\xaf", 3),  # an overlong encoding
        (b"ok \xf4\x90\x80\x80", 3),  # above U+10FFFF
        (b"\xef\xbb\xbf\xef\xbb", 3),  # a BOM followed by a truncated second BOM
    ],
)
def test_invalid_encoding_variants(payload: bytes, position: int) -> None:
    error = error_of(payload)
    assert (error["code"], error["field"], error["position"]) == ("invalid_encoding", None, position)


@pytest.mark.parametrize(
    "payload",
    [None, b"", b" ", b"\n\t\r \x0b\x0c", "\u2003\u00a0\n".encode(), b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"],
)
def test_empty_payload(payload: bytes | None) -> None:
    error = error_of(payload)
    assert (error["code"], error["field"], error["position"]) == ("empty_payload", None, None)
    assert _scope(payload) == ("payload", 0)


def test_payload_too_large_is_judged_on_bytes_before_decoding() -> None:
    limits = Limits(max_payload_bytes=200)
    fits = record(title="é")
    fits = fits + " " * (200 - len(fits.encode()))
    assert len(fits.encode()) == 200
    assert len(fits) == 199
    assert only(fits, limits)["data"]["fn"] == 1
    too_big = fits + " "
    error = error_of(too_big, limits)
    assert (error["code"], error["field"], error["position"]) == ("payload_too_large", None, None)
    assert "201" in error["message"]
    assert _scope(too_big, limits) == ("payload", 0)
    # Checked before decoding: a large payload that is not UTF-8 is too large, not badly encoded.
    assert error_of(b"\xff" * 201, limits)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "payload",
    ["just some words", "F-N 2433 D-A-T-E", "xF-N-S-T-A-R-T. 1 xF-N-E-N-D.", "f-n-s-t-a-r-t. 1", "\ufeffhi"],
)
def test_no_markers(payload: str) -> None:
    error = error_of(payload)
    assert (error["code"], error["field"], error["position"]) == ("no_markers", None, None)
    assert _scope(payload) == ("payload", 0)


def test_too_many_records() -> None:
    payload = " ".join(record(fn=str(n)) for n in range(4))
    limits = Limits(max_records_per_payload=3)
    error = error_of(payload, limits)
    assert (error["code"], error["field"], error["position"]) == ("too_many_records", None, None)
    assert _scope(payload, limits) == ("payload", 0)


def test_too_many_records_counts_bad_records_too() -> None:
    payload = " ".join([record(fn="1"), start("fn"), start("fn"), "junk"])
    assert error_of(payload, Limits(max_records_per_payload=2))["code"] == "too_many_records"
    assert len(run(payload, Limits(max_records_per_payload=3))) == 3


# --- record-level codes ---------------------------------------------------------------------------


def _record_error(payload: str) -> dict[str, object]:
    event = only(payload)
    assert event["scope"] == "record"
    error: dict[str, object] = event["error"]
    return error


def test_unterminated_field_before_the_next_marker() -> None:
    payload = " ".join([fld("fn", "1"), start("date"), "2024-01-24", fld("title", "T"), fld("text", "B")])
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == (
        "unterminated_field",
        "date",
        payload.index(start("date")),
    )


def test_unterminated_field_at_the_end_of_the_payload() -> None:
    payload = " ".join([fld("fn", "1"), fld("date", "2024-01-24"), fld("title", "T"), start("text"), "body…"])
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == (
        "unterminated_field",
        "text",
        payload.index(start("text")),
    )


def test_unterminated_field_closed_by_another_fields_end() -> None:
    payload = " ".join([fld("fn", "1"), start("title"), "T", end("text"), fld("date", "2024-01-24")])
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == (
        "unterminated_field",
        "title",
        payload.index(start("title")),
    )


def test_unmatched_end() -> None:
    payload = " ".join([fld("fn", "1"), fld("date", "2024-01-24"), end("title"), fld("text", "B")])
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == (
        "unmatched_end",
        "title",
        payload.index(end("title")),
    )


def test_unmatched_end_of_an_already_closed_field() -> None:
    payload = record() + " " + end("text")
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == ("unmatched_end", "text", len(record()) + 1)


def test_duplicate_field_points_at_the_second_start() -> None:
    payload = " ".join([fld("fn", "1"), fld("title", "One"), fld("date", "2024-01-24"), fld("title", "Two")])
    payload += " " + fld("text", "B")
    error = _record_error(payload)
    second = payload.index(start("title"), payload.index(start("title")) + 1)
    assert (error["code"], error["field"], error["position"]) == ("duplicate_field", "title", second)


def test_duplicate_extra_field() -> None:
    payload = record(source="a") + " " + fld("source", "a")
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == (
        "duplicate_field",
        "source",
        payload.rindex(start("source")),
    )


REQUIRED_VALUES = {"fn": "1", "date": "2024-01-24", "title": "T", "text": "B"}


@pytest.mark.parametrize("missing", ["fn", "date", "title", "text"])
def test_missing_field_names_the_field(missing: str) -> None:
    payload = " ".join(fld(name, value) for name, value in REQUIRED_VALUES.items() if name != missing)
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == ("missing_field", missing, None)
    assert missing in str(error["message"])


def test_missing_field_reports_the_first_in_fn_date_title_text_order() -> None:
    error = _record_error(fld("text", "only a body") + " " + fld("source", "x"))
    assert (error["code"], error["field"]) == ("missing_field", "fn")


@pytest.mark.parametrize(
    ("payload", "stray"),
    [
        ("Breaking: " + record(), "Breaking"),
        (record() + "\n -- end of feed", "--"),
        (" ".join([fld("fn", "1"), fld("date", "2024-01-24"), "  and  ", fld("title", "T")]), "and"),
        (record() + " F-N-E-N-D" + " ", "F-N-E-N-D"),
    ],
)
def test_stray_text_points_at_its_first_non_space_character(payload: str, stray: str) -> None:
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == ("stray_text", None, payload.rindex(stray))


def _invalid(payload: str, field: str, value_at: int) -> None:
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == ("invalid_field", field, value_at)


@pytest.mark.parametrize(
    "fn",
    ["abc", "-1", "+5", "1.0", "1 2", "0x1F", "１２", "٣", "1000000000000000000", "0001000000000000000000"],
)
def test_invalid_fn(fn: str) -> None:
    payload = record(fn=fn)
    _invalid(payload, "fn", payload.index(fn))


def test_an_fn_over_18_digits_counts_the_significant_ones() -> None:
    error = error_of(record(fn="000" + "1" * 19))
    assert error["message"] == "fn: at most 18 digits allowed, got 19"


@pytest.mark.parametrize(
    "title",
    [
        "\u200b",
        "\x00\x00",
        "\u202e",
        "\u2066\u2069",
        "\ufeff",
        "\u3164",
        "\u2800",
        "\u0301",
        "\u200b\x7f\u00ad",
    ],
)
def test_a_title_with_no_visible_character_is_invalid(title: str) -> None:
    payload = record(title=title)
    _invalid(payload, "title", payload.index(title))
    assert error_of(payload)["message"] == "title: has no visible character"


@pytest.mark.parametrize(
    "date",
    [
        "2023-02-29",
        "2024-13-01",
        "2024-00-10",
        "2024-04-31",
        "0000-01-01",
        "24-01-2024",
        "2024/01/24",
        "2024-1-24",
        "2024-01-24T00:00",
        "２０２４-01-24",
        "20240124xx",
        "yesterday",
    ],
)
def test_invalid_date(date: str) -> None:
    payload = record(date=date)
    _invalid(payload, "date", payload.index(date))


@pytest.mark.parametrize("name", ["title", "text"])
def test_empty_value_points_at_its_end_marker(name: str) -> None:
    values = dict(REQUIRED_VALUES)
    payload = " ".join(fld(n, v) for n, v in values.items() if n != name) + f" {start(name)}  \n {end(name)}"
    _invalid(payload, name, payload.index(end(name)))


def test_empty_fn_is_invalid_not_missing() -> None:
    payload = record(fn="").replace("  ", " ")
    _invalid(payload, "fn", payload.index(end("fn")))


def test_title_over_the_limit() -> None:
    limits = Limits(max_title_chars=10)
    assert only(record(title="x" * 10), limits)["data"]["title"] == "x" * 10
    payload = record(title="x" * 11)
    error = error_of(payload, limits)
    assert (error["code"], error["field"], error["position"]) == (
        "invalid_field",
        "title",
        payload.index("x" * 11),
    )


def test_text_over_the_limit_counts_characters_not_bytes() -> None:
    limits = Limits(max_text_chars=5)
    assert only(record(text="ééééé"), limits)["data"]["text"] == "ééééé"
    payload = record(text="éééééé")
    error = error_of(payload, limits)
    assert (error["code"], error["field"], error["position"]) == ("invalid_field", "text", payload.index("é"))


def test_an_earlier_invalid_value_wins_over_a_later_structural_problem() -> None:
    payload = " ".join([fld("fn", "x"), fld("date", "2024-01-24"), fld("title", "T"), start("text"), "B"])
    _invalid(payload, "fn", payload.index(" x ") + 1)


def test_an_earlier_structural_problem_wins_over_a_later_invalid_value() -> None:
    payload = " ".join(
        [fld("fn", "1"), end("date"), fld("date", "2024-13-01"), fld("title", "T"), fld("text", "B")]
    )
    error = _record_error(payload)
    assert (error["code"], error["position"]) == ("unmatched_end", payload.index(end("date")))


def test_a_missing_field_is_reported_only_when_nothing_else_is_wrong() -> None:
    payload = " ".join([fld("fn", "1"), fld("date", "2024-13-01"), fld("text", "B")])
    _invalid(payload, "date", payload.index("2024-13-01"))


def test_the_first_structural_problem_in_text_order_wins() -> None:
    payload = " ".join(
        ["lead", fld("fn", "1"), end("date"), fld("title", "T"), fld("title", "T"), start("text"), "B"]
    )
    error = _record_error(payload)
    assert (error["code"], error["position"]) == ("stray_text", 0)
    payload = payload.removeprefix("lead ")
    error = _record_error(payload)
    assert (error["code"], error["field"], error["position"]) == (
        "unmatched_end",
        "date",
        payload.index(end("date")),
    )


# --- the earliest problem in the text wins ---------------------------------------------------------


def test_the_first_invalid_value_in_text_order_wins() -> None:
    payload = " ".join([fld("date", "2024-13-01"), fld("fn", "abc"), fld("title", "T"), fld("text", "B")])
    _invalid(payload, "date", payload.index("2024-13-01"))


def test_an_earlier_invalid_value_wins_over_later_stray_text() -> None:
    payload = record(fn="abc") + " trailing words"
    _invalid(payload, "fn", payload.index("abc"))


def test_dead_letters_of_every_code_carry_the_code_on_the_outcome() -> None:
    cases: dict[str, tuple[bytes | str | None, Limits | None]] = {
        "invalid_encoding": (b"\xff", None),
        "empty_payload": (b"", None),
        "payload_too_large": (b"x" * 11, Limits(max_payload_bytes=10)),
        "no_markers": ("words", None),
        "unterminated_field": (start("fn"), None),
        "unmatched_end": (end("fn"), None),
        "duplicate_field": (fld("x", "1") + fld("x", "2"), None),
        "missing_field": (fld("fn", "1"), None),
        "stray_text": ("w " + fld("fn", "1"), None),
        "invalid_field": (record(fn="x"), None),
        "too_many_records": (fld("fn", "1") + " " + fld("fn", "2"), Limits(max_records_per_payload=1)),
    }
    assert set(cases) == DOCUMENTED_CODES
    for code, (payload, limits) in cases.items():
        outcomes = run(payload, limits)
        assert len(outcomes) == 1, code
        assert outcomes[0].error == ErrorCode(code)
        assert not outcomes[0].is_article
        assert outcomes[0].fn is None
        event = decode(outcomes[0])
        assert event["error"]["code"] == code
        assert event["scope"] == ("payload" if ErrorCode(code).payload_level else "record")


# --- the examples of docs/format.md ---------------------------------------------------------------


def _documented_examples() -> dict[str, tuple[bytes, Limits, dict[str, object]]]:
    section = doc_section("## Error codes")
    examples = {}
    for part in re.split(r"^### ", section, flags=re.MULTILINE)[1:]:
        code = re.match(r"`(\w+)`\n", part)
        assert code is not None, part[:40]
        blocks = fenced_blocks(part)
        assert [info for info, _ in blocks][-1] == "json"
        info, body = blocks[0]
        assert info in ("text", "python")
        payload = body.encode("utf-8") if info == "text" else ast.literal_eval(body)
        limits = Limits(**{name.lower(): int(v) for name, v in re.findall(r"`INGEST_(MAX_\w+)=(\d+)`", part)})
        examples[code.group(1)] = (payload, limits, json.loads(blocks[-1][1]))
    return examples


def test_the_format_doc_has_an_example_for_every_code() -> None:
    assert set(_documented_examples()) == DOCUMENTED_CODES


@pytest.mark.parametrize("code", sorted(DOCUMENTED_CODES))
def test_the_format_doc_example_yields_its_documented_error(code: str) -> None:
    payload, limits, documented = _documented_examples()[code]
    error = error_of(payload, limits)
    assert documented["code"] == code
    # The message is for humans and may be reworded; code, field and position are the contract.
    assert {k: error[k] for k in ("code", "field", "position")} == {
        k: documented[k] for k in ("code", "field", "position")
    }
