"""A dead letter's raw copy of the failing input, and cutting a dead letter down to a size.

Pure, like the rest of the core: ``raw_copy`` is what ``events`` puts in a dead letter's ``raw``,
``fit_dead_letter`` shortens that copy (marking it ``truncated``) until the event fits.
"""

from __future__ import annotations

import base64
import binascii

import orjson

MAX_MESSAGE_CHARS = 500
MAX_FIELD_CHARS = 64
MAX_KEY_COPY = 4096
"""Keys longer than this are not copied into ``source.key_base64`` (the dead letter's key has it)."""


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def raw_copy(text: str | None, payload: bytes | None, limit: int, *, binary: bool) -> dict[str, object]:
    """The failing input for the dead letter: text when it is UTF-8, else base64; cut at ``limit``.

    Without text or payload (a null message value) both ``text`` and ``base64`` are null.
    """
    if text is None and payload is None:
        return {"text": None, "base64": None, "truncated": False, "size_bytes": 0}
    data = text.encode() if text is not None else (payload or b"")
    cut = data[:limit]
    if binary:
        return {
            "text": None,
            "base64": base64.b64encode(cut).decode(),
            "truncated": len(data) > limit,
            "size_bytes": len(data),
        }
    try:
        as_text: str | None = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut through a multi-byte character is not an encoding error of the input.
        cut_character = len(data) > limit and exc.reason == "unexpected end of data"
        as_text = cut[: exc.start].decode("utf-8") if cut_character else None
    return {
        "text": as_text,
        "base64": None if as_text is not None else base64.b64encode(cut).decode(),
        "truncated": len(data) > limit,
        "size_bytes": len(data),
    }


def fit_dead_letter(dead_letter: bytes, max_bytes: int) -> bytes | None:
    """A serialized dead letter cut to at most ``max_bytes``: its raw copy is shortened (and marked
    ``truncated``) as far as needed; None when it is still too large with an empty copy.

    For the shell, which must fit the whole Kafka record (key and headers too) in
    ``INGEST_MAX_EVENT_BYTES``. A dead letter that already fits is returned unchanged.
    """
    if len(dead_letter) <= max_bytes:
        return dead_letter
    event = orjson.loads(dead_letter)
    raw = event["raw"]
    binary = raw["text"] is None
    if raw["text"] is not None:
        data: bytes = raw["text"].encode()
    elif raw["base64"] is not None:
        try:
            data = base64.b64decode(raw["base64"])
        except binascii.Error:
            data = b""
    else:
        return None
    size_bytes = raw["size_bytes"]

    def cut(limit: int) -> bytes:
        event["raw"] = {
            **raw_copy(None, data, limit, binary=binary),
            "truncated": True,
            "size_bytes": size_bytes,
        }
        return orjson.dumps(event)

    empty = len(cut(0))
    if empty > max_bytes:
        return None
    limit, size = len(data), len(dead_letter)
    for attempt in range(64):
        # JSON escapes make a copy up to 6 times its bytes: scale by what the last copy cost per byte.
        per_byte = (size - empty) / max(limit, 1)
        limit = max(0, min(limit - 1, int((max_bytes - empty) / per_byte) if attempt < 8 else limit // 2))
        fitted = cut(limit)
        size = len(fitted)
        if size <= max_bytes:
            return fitted
    return cut(0)
