"""Who may choose an event id: only a message whose origin carries the tag of ``INGEST_REDRIVE_KEY``
(``origin_of``, ``origin_tag``), which ``redrive`` stamps and nothing else can forge."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from markertext import NOW, VERSION, record
from pydantic import SecretStr

from schemas.events import ORIGIN_HEADER, ORIGIN_TAG_HEADER, ORIGIN_TRACEPARENT_HEADER
from service.cli import main
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.core.origin import Origin, origin_of, origin_tag
from service.settings import Settings, SettingsError, load_settings
from service.tools.redrive_messages import DeadLetterRecord
from service.tools.redrive_plan import Filters, plan_redrive

KEY = SecretStr("redrive-key-0123456789-abcdefghij")
OTHER_KEY = SecretStr("redrive-key-9876543210-jihgfedcba")
PAYLOAD = record(fn="12").encode()
ORIGIN = "news.raw:7:12345:0"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)


def _stamp(origin: str, tag: str | bytes) -> list[tuple[str, bytes]]:
    return [
        (ORIGIN_HEADER, origin.encode()),
        (ORIGIN_TAG_HEADER, tag if isinstance(tag, bytes) else tag.encode()),
    ]


def _article_id(value: bytes, headers: list[tuple[str, bytes]], key: SecretStr | None) -> str:
    """The id the service gives the one record of ``value`` read at news.raw:0:99 with ``headers``."""
    source = Source("news.raw", 0, 99, None, b"k", origin_of(headers, value, key))
    [outcome] = process_payload(value, source, Limits(), now=NOW, version=VERSION)
    assert outcome.is_article
    return outcome.event_id


def test_a_valid_tag_gives_the_records_the_ids_of_their_origin() -> None:
    headers = _stamp(ORIGIN, origin_tag(KEY, ORIGIN, PAYLOAD))
    assert origin_of(headers, PAYLOAD, KEY) == Origin("news.raw:7:12345", 0)
    assert _article_id(PAYLOAD, headers, KEY) == ORIGIN


def test_an_origin_header_alone_chooses_no_id() -> None:
    """The issue's case: any producer (or a mirror copying headers) named another record's id."""
    headers = [(ORIGIN_HEADER, ORIGIN.encode())]
    assert origin_of(headers, PAYLOAD, KEY) is None
    assert _article_id(PAYLOAD, headers, KEY) == "news.raw:0:99:0"


def test_without_a_key_the_service_honours_no_origin() -> None:
    headers = _stamp(ORIGIN, origin_tag(KEY, ORIGIN, PAYLOAD))
    assert origin_of(headers, PAYLOAD, None) is None
    assert _article_id(PAYLOAD, headers, None) == "news.raw:0:99:0"


@pytest.mark.parametrize(
    ("origin", "tag", "value"),
    [
        pytest.param(ORIGIN, origin_tag(OTHER_KEY, ORIGIN, PAYLOAD), PAYLOAD, id="made with another key"),
        pytest.param(ORIGIN, origin_tag(KEY, ORIGIN, PAYLOAD + b" "), PAYLOAD, id="made for another payload"),
        pytest.param(
            ORIGIN, origin_tag(KEY, "news.raw:7:12345:1", PAYLOAD), PAYLOAD, id="made for another origin"
        ),
        pytest.param(ORIGIN, origin_tag(KEY, ORIGIN, None), b"", id="made for a null value"),
        pytest.param(ORIGIN, origin_tag(KEY, ORIGIN, b""), None, id="made for an empty value"),
        pytest.param(ORIGIN, origin_tag(KEY, ORIGIN, PAYLOAD).upper(), PAYLOAD, id="upper-case hex"),
        pytest.param(ORIGIN, origin_tag(KEY, ORIGIN, PAYLOAD)[:32], PAYLOAD, id="cut short"),
        pytest.param(ORIGIN, "", PAYLOAD, id="empty"),
        pytest.param(ORIGIN, b"\xff" * 64, PAYLOAD, id="not text"),
        pytest.param(ORIGIN, hashlib.sha256(PAYLOAD).hexdigest(), PAYLOAD, id="a plain SHA-256"),
    ],
)
def test_a_tag_that_does_not_prove_this_origin_and_payload_is_ignored(
    origin: str, tag: str | bytes, value: bytes | None
) -> None:
    assert origin_of(_stamp(origin, tag), value, KEY) is None


def test_the_last_origin_and_the_last_tag_count() -> None:
    good = _stamp(ORIGIN, origin_tag(KEY, ORIGIN, PAYLOAD))
    forged = _stamp("news.raw:0:1:0", "0" * 64)
    assert origin_of([*forged, *good], PAYLOAD, KEY) == Origin("news.raw:7:12345", 0)
    assert origin_of([*good, *forged], PAYLOAD, KEY) is None
    assert origin_of([*good, good[0]], PAYLOAD, KEY) == Origin("news.raw:7:12345", 0)


def test_the_tag_is_hmac_sha256_of_the_documented_input() -> None:
    """The construction is a contract (docs/contracts.md): another implementation can make and check
    tags from this alone."""
    secret = KEY.get_secret_value().encode()
    origin = ORIGIN.encode()
    message = b"marker-ingest origin tag v1\x00" + len(origin).to_bytes(4, "big") + origin
    assert (
        origin_tag(KEY, ORIGIN, PAYLOAD)
        == hmac.new(secret, message + b"\x01" + PAYLOAD, "sha256").hexdigest()
    )
    assert origin_tag(KEY, ORIGIN, None) == hmac.new(secret, message + b"\x00", "sha256").hexdigest()


# --- the origin's trace: bound into the tag --------------------------------------------------------

TRACE = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER_TRACE = b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"


def _traced_stamp(tag: str, trace: bytes | None) -> list[tuple[str, bytes]]:
    """The headers ``redrive`` writes: origin, then the origin's trace (when given), then the tag."""
    headers = [(ORIGIN_HEADER, ORIGIN.encode())]
    if trace is not None:
        headers.append((ORIGIN_TRACEPARENT_HEADER, trace))
    headers.append((ORIGIN_TAG_HEADER, tag.encode()))
    return headers


def test_a_proven_origin_traceparent_comes_back_with_the_origin() -> None:
    headers = _traced_stamp(origin_tag(KEY, ORIGIN, PAYLOAD, TRACE), TRACE)
    assert origin_of(headers, PAYLOAD, KEY) == Origin("news.raw:7:12345", 0, TRACE.decode())
    assert _article_id(PAYLOAD, headers, KEY) == ORIGIN
    assert origin_of(headers, PAYLOAD, OTHER_KEY) is None


@pytest.mark.parametrize(
    ("tagged", "carried"),
    [
        pytest.param(None, TRACE, id="added after tagging"),
        pytest.param(TRACE, OTHER_TRACE, id="changed after tagging"),
        pytest.param(TRACE, None, id="removed after tagging"),
        pytest.param(TRACE, TRACE.upper(), id="changed case"),
        pytest.param(b"garbage", TRACE, id="a malformed one replaced"),
    ],
)
def test_an_origin_traceparent_changed_after_tagging_unproves_the_origin(
    tagged: bytes | None, carried: bytes | None
) -> None:
    headers = _traced_stamp(origin_tag(KEY, ORIGIN, PAYLOAD, tagged), carried)
    assert origin_of(headers, PAYLOAD, KEY) is None
    assert _article_id(PAYLOAD, headers, KEY) == "news.raw:0:99:0", "the message keeps its own id"


def test_the_last_origin_traceparent_is_the_one_proven() -> None:
    tag = origin_tag(KEY, ORIGIN, PAYLOAD, TRACE).encode()
    first = [(ORIGIN_HEADER, ORIGIN.encode()), (ORIGIN_TRACEPARENT_HEADER, OTHER_TRACE)]
    good = [*first, (ORIGIN_TRACEPARENT_HEADER, TRACE), (ORIGIN_TAG_HEADER, tag)]
    assert origin_of(good, PAYLOAD, KEY) == Origin("news.raw:7:12345", 0, TRACE.decode())
    bad = [(ORIGIN_HEADER, ORIGIN.encode()), (ORIGIN_TRACEPARENT_HEADER, TRACE), *first[1:]]
    assert origin_of([*bad, (ORIGIN_TAG_HEADER, tag)], PAYLOAD, KEY) is None


def test_a_tag_without_a_traceparent_cannot_be_reused_with_one() -> None:
    assert origin_tag(KEY, ORIGIN, PAYLOAD, TRACE) != origin_tag(KEY, ORIGIN, PAYLOAD)
    assert origin_tag(KEY, ORIGIN, None, TRACE) != origin_tag(KEY, ORIGIN, None)
    assert origin_tag(KEY, ORIGIN, PAYLOAD, b"") != origin_tag(KEY, ORIGIN, PAYLOAD), "empty is not none"


def test_the_tag_of_a_traced_origin_is_hmac_sha256_of_the_documented_input() -> None:
    secret = KEY.get_secret_value().encode()
    origin = ORIGIN.encode()
    message = b"marker-ingest origin tag v1\x00" + len(origin).to_bytes(4, "big") + origin
    traced = message + b"\x02" + len(TRACE).to_bytes(4, "big") + TRACE
    assert (
        origin_tag(KEY, ORIGIN, PAYLOAD, TRACE)
        == hmac.new(secret, traced + b"\x01" + PAYLOAD, "sha256").hexdigest()
    )
    assert origin_tag(KEY, ORIGIN, None, TRACE) == hmac.new(secret, traced + b"\x00", "sha256").hexdigest()


def test_a_tag_without_a_traceparent_is_the_one_earlier_versions_made() -> None:
    """Tags stamped by an earlier ``redrive`` (before origin traces) must still prove their origin.
    The vectors were made by the earlier version of ``origin_tag`` (``git show HEAD~1:service/core/
    origin.py``, before the commit that added tracing), not by the code under test."""
    key = SecretStr("compat-vector-key-0123456789abcdef")
    origin = "news.raw:7:12345:0"
    value = b"F-N-S-T-A-R-T. 12 F-N-E-N-D."
    v1_value = "af00d5c4403f925e1806a2c2fafbe8655921601ca98eebc31c8341a08db924a5"
    v1_null = "83b4e9e858a4f6fb384bceab40e39d0f13b3871297c4c924a9c3a7d979e306f4"
    v1_empty = "8d56eb0d6b4c474bd1d629b431933c8239923cfb2a522e545ee2c7e50aa029f2"
    assert origin_tag(key, origin, value) == v1_value
    assert origin_tag(key, origin, value, None) == v1_value
    assert origin_tag(key, origin, None) == v1_null
    assert origin_tag(key, origin, b"") == v1_empty
    headers = [(ORIGIN_HEADER, origin.encode()), (ORIGIN_TAG_HEADER, v1_value.encode())]
    assert origin_of(headers, value, key) == Origin("news.raw:7:12345", 0, None)


@pytest.mark.parametrize(
    "trace",
    [
        pytest.param(b"garbage", id="not a traceparent"),
        pytest.param(b"", id="empty"),
        pytest.param(TRACE.upper(), id="upper-case hex"),
        pytest.param(b"00-00000000000000000000000000000000-b7ad6b7169203331-01", id="zero trace id"),
        pytest.param(b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", id="version ff"),
        pytest.param(TRACE + b"-extra", id="version 00 with more"),
        pytest.param(b"01" + TRACE[2:] + b"-extra", id="a later version, longer than 55"),
        pytest.param(b"\xff" * 55, id="not text"),
    ],
)
def test_a_proven_but_malformed_origin_traceparent_is_left_out(trace: bytes) -> None:
    headers = _traced_stamp(origin_tag(KEY, ORIGIN, PAYLOAD, trace), trace)
    assert origin_of(headers, PAYLOAD, KEY) == Origin("news.raw:7:12345", 0, None)


# --- redrive stamps what the service checks --------------------------------------------------------


def _dead_letter(payload: bytes) -> DeadLetterRecord:
    source = Source("news.raw", 0, 5, None, b"k")
    [outcome] = process_payload(payload, source, Limits(), now=NOW, version=VERSION)
    assert outcome.error is not None
    return DeadLetterRecord(0, 0, outcome.key, outcome.value, (("marker-ingest-error-code", b"x"),))


def test_a_redriven_message_carries_a_tag_the_service_accepts_with_the_same_key_only() -> None:
    bad = b"no markers at all"
    [(decision, msg)] = plan_redrive([_dead_letter(bad)], Filters(), key=KEY).messages
    assert decision.dead_letter_id == "news.raw:0:5:0"
    headers = dict(msg.headers)
    assert headers[ORIGIN_TAG_HEADER] == origin_tag(KEY, "news.raw:0:5:0", bad).encode()
    assert origin_of(msg.headers, msg.value, KEY) == Origin("news.raw:0:5", 0)
    assert origin_of(msg.headers, msg.value, OTHER_KEY) is None
    assert origin_of(msg.headers, msg.value + b" " if msg.value else b"", KEY) is None


def test_a_plan_without_a_key_stamps_no_tag() -> None:
    [(_, msg)] = plan_redrive([_dead_letter(b"no markers")], Filters()).messages
    assert ORIGIN_TAG_HEADER not in dict(msg.headers)
    assert origin_of(msg.headers, msg.value, KEY) is None


def _traced_dead_letter(payload: bytes, trace: bytes) -> DeadLetterRecord:
    rec = _dead_letter(payload)
    headers = (("feed", b"bbc"), *rec.headers, (ORIGIN_TRACEPARENT_HEADER, trace))
    return DeadLetterRecord(rec.partition, rec.offset, rec.key, rec.value, headers)


def test_a_redriven_message_carries_its_origins_trace_bound_into_the_tag() -> None:
    bad = b"no markers at all"
    [(_, msg)] = plan_redrive([_traced_dead_letter(bad, TRACE)], Filters(), key=KEY).messages
    tag = origin_tag(KEY, "news.raw:0:5:0", bad, TRACE)
    assert [(n, v) for n, v in msg.headers if n.startswith("marker-ingest-origin")] == [
        (ORIGIN_HEADER, b"news.raw:0:5:0"),
        (ORIGIN_TRACEPARENT_HEADER, TRACE),
        (ORIGIN_TAG_HEADER, tag.encode()),
    ]
    assert origin_of(msg.headers, msg.value, KEY) == Origin("news.raw:0:5", 0, TRACE.decode())
    stripped = [(n, v) for n, v in msg.headers if n != ORIGIN_TRACEPARENT_HEADER]
    assert origin_of(stripped, msg.value, KEY) is None


def test_a_malformed_origin_traceparent_on_a_dead_letter_is_not_redriven() -> None:
    bad = b"no markers at all"
    [(_, msg)] = plan_redrive([_traced_dead_letter(bad, b"00-garbage")], Filters(), key=KEY).messages
    assert ORIGIN_TRACEPARENT_HEADER not in dict(msg.headers)
    assert dict(msg.headers)[ORIGIN_TAG_HEADER] == origin_tag(KEY, "news.raw:0:5:0", bad).encode()
    assert origin_of(msg.headers, msg.value, KEY) == Origin("news.raw:0:5", 0, None)


# --- the key: a secret of its own -----------------------------------------------------------------


def test_the_key_is_read_from_its_variable_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_REDRIVE_KEY", KEY.get_secret_value())
    settings = load_settings()
    assert settings.redrive_key == KEY
    assert KEY.get_secret_value() not in repr(settings)
    assert KEY.get_secret_value() not in str(settings.redacted())
    assert Settings().redrive_key is not None
    monkeypatch.delenv("INGEST_REDRIVE_KEY")
    assert Settings().redrive_key is None, "no key unless one is set"


def test_a_short_key_is_refused_in_one_line_that_does_not_echo_it(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-but-short"
    monkeypatch.setenv("INGEST_REDRIVE_KEY", secret)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    line = str(caught.value)
    assert line.startswith("invalid setting INGEST_REDRIVE_KEY: must be at least 32 characters")
    assert "\n" not in line
    assert secret not in line
    assert str(len(secret)) not in line


def test_redrive_without_a_key_refuses_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1: a connection attempt would fail differently (exit 1).
    assert main(["redrive", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "marker-ingest redrive: INGEST_REDRIVE_KEY is not set: redriven messages must carry an origin "
        "tag that the service, given the same key, can verify (--dry-run needs none)\n"
    )
