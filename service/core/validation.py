"""Record validation: a scanned record's fields in, an ``ArticleData`` or a precise ``Problem`` out.

Cheap checks first give each failure an exact field, position and message; the pydantic model then
enforces the published contract. Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import unicodedata

from pydantic import ValidationError

from schemas.errors import ErrorCode
from schemas.events import ArticleData
from service.core.limits import Limits
from service.core.parser import FieldValue, Problem

REQUIRED = ("fn", "date", "title", "text")
_N_REQUIRED = len(REQUIRED)
_FN_MAX_DIGITS = 18

# The model's own validator: exactly the validation ``ArticleData(...)`` runs, minus the overhead
# of ``BaseModel.__init__`` (a third of the cost, measured).
_validate_article = ArticleData.__pydantic_validator__.validate_python
_from_iso = dt.date.fromisoformat
_sha256 = hashlib.sha256


def _invalid(name: str, fv: FieldValue, why: str) -> Problem:
    return Problem(ErrorCode.INVALID_FIELD, f"{name}: {why}", name, fv.position)


def _check_fn(fv: FieldValue) -> int | Problem:
    v = fv.value
    if not (v.isascii() and v.isdigit()):
        return _invalid("fn", fv, f"expected a non-negative integer, got {v[:40]!r}")
    if len(v) > _FN_MAX_DIGITS:
        # Leading zeros are dropped: only the significant digits count.
        v = v.lstrip("0") or "0"
        if len(v) > _FN_MAX_DIGITS:
            return _invalid("fn", fv, f"at most {_FN_MAX_DIGITS} digits allowed, got {len(v)}")
    return int(v)


_VISIBLE_CATEGORIES = frozenset("LNPS")
# Letters and symbols that draw nothing: the Hangul fillers and the blank Braille pattern.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_character(text: str) -> bool:
    """True when ``text`` has a character that draws something: a letter, digit, punctuation mark,
    symbol or private-use character. Spaces, control and format characters (U+200B, bidi
    overrides), lone combining marks and unassigned code points draw nothing on their own."""
    first = text[:1]
    if first.isalnum() and first not in _BLANK_LETTERS:
        return True
    for ch in text:
        category = unicodedata.category(ch)
        if (category[0] in _VISIBLE_CATEGORIES or category == "Co") and ch not in _BLANK_LETTERS:
            return True
    return False


def _check_date(fv: FieldValue) -> dt.date | Problem:
    v = fv.value
    if not (len(v) == 10 and v[4] == "-" and v[7] == "-" and v.isascii()):
        return _invalid("date", fv, f"expected YYYY-MM-DD, got {v[:40]!r}")
    y, m, d = v[:4], v[5:7], v[8:]
    if not (y.isdigit() and m.isdigit() and d.isdigit()):
        return _invalid("date", fv, f"expected YYYY-MM-DD, got {v!r}")
    try:
        return dt.date(int(y), int(m), int(d))
    except ValueError:
        return _invalid("date", fv, f"no such date: {v!r}")


def _check_text(name: str, fv: FieldValue, max_chars: int) -> Problem | None:
    if not fv.value:
        return _invalid(name, fv, "must not be empty")
    if len(fv.value) > max_chars:
        return _invalid(name, fv, f"{len(fv.value)} characters, over the limit of {max_chars}")
    if name == "title" and not has_visible_character(fv.value):
        return _invalid(name, fv, "has no visible character")
    return None


def _text_order(problem: Problem) -> int:
    return problem.position if problem.position is not None else -1


def content_digest(fn: int, date: str, title: str, text: str, extra: dict[str, str]) -> str:
    """SHA-256 (hex) of the normalized record, as documented on ``ArticleData.sha256``."""
    parts = [str(fn), date, title, text]
    parts.extend(f"{k}={extra[k]}" for k in sorted(extra))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def validate_record(
    fields: dict[str, FieldValue], limits: Limits, structural: Problem | None = None
) -> ArticleData | Problem:
    """Validate one record's fields into the article contract.

    The problem reported is the earliest in the text among ``structural`` (the scanner's, if any)
    and the invalid values; a missing field is reported only when nothing else is wrong.
    """
    problems = [structural] if structural is not None else []
    fn = date = None
    if "fn" in fields:
        checked_fn = _check_fn(fields["fn"])
        if isinstance(checked_fn, Problem):
            problems.append(checked_fn)
        else:
            fn = checked_fn
    if "date" in fields:
        checked_date = _check_date(fields["date"])
        if isinstance(checked_date, Problem):
            problems.append(checked_date)
        else:
            date = checked_date
    for name, max_chars in (("title", limits.max_title_chars), ("text", limits.max_text_chars)):
        if name in fields and (problem := _check_text(name, fields[name], max_chars)) is not None:
            problems.append(problem)
    if problems:
        return min(problems, key=_text_order)
    for name in REQUIRED:
        if name not in fields:
            return Problem(ErrorCode.MISSING_FIELD, f"required field {name!r} is missing", name, None)
    assert fn is not None
    assert date is not None
    extra = {k: fv.value for k, fv in fields.items() if k not in REQUIRED}
    title, text = fields["title"].value, fields["text"].value
    sha256 = content_digest(fn, fields["date"].value, title, text, extra)
    data = {"fn": fn, "date": date, "title": title, "text": text, "extra": extra, "sha256": sha256}
    try:
        article: ArticleData = _validate_article(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = str(err["loc"][0]) if err["loc"] else None
        position = fields[where].position if where in fields else None
        return Problem(ErrorCode.INVALID_FIELD, f"{where}: {err['msg']}", where, position)
    return article


def article_from_values(values: dict[str, str], limits: Limits) -> ArticleData | None:
    """``validate_record`` for a clean record's values (no positions): the article, or None.

    The same checks in a cheaper form, for the hot path. None means some check failed; the
    caller then runs ``validate_record`` on the scanned record for the precise problem.
    """
    try:
        fn_text, date_text = values["fn"], values["date"]
        title, text = values["title"], values["text"]
    except KeyError:
        return None
    if not (fn_text.isdigit() and fn_text.isascii() and len(fn_text) <= _FN_MAX_DIGITS):
        return None
    if not (0 < len(title) <= limits.max_title_chars and 0 < len(text) <= limits.max_text_chars):
        return None
    first = title[0]
    if not (first.isascii() and first.isalnum()) and not has_visible_character(title):
        return None
    if not (len(date_text) == 10 and date_text[4] == "-" and date_text[7] == "-" and date_text.isascii()):
        return None
    try:
        # Given that shape, fromisoformat accepts exactly the valid YYYY-MM-DD with ASCII digits.
        date = _from_iso(date_text)
    except ValueError:
        return None
    fn = int(fn_text)
    if len(values) == _N_REQUIRED:
        extra: dict[str, str] = {}
        sha256 = _sha256("\x1f".join((str(fn), date_text, title, text)).encode()).hexdigest()
    else:
        extra = {k: v for k, v in values.items() if k not in REQUIRED}
        sha256 = content_digest(fn, date_text, title, text, extra)
    data = {"fn": fn, "date": date, "title": title, "text": text, "extra": extra, "sha256": sha256}
    try:
        article: ArticleData = _validate_article(data)
    except ValidationError:
        return None
    return article
