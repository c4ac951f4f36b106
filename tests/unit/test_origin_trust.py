"""Who may choose an event id: only a message whose origin carries the tag of ``INGEST_REDRIVE_KEY``
(``origin_of``, ``origin_tag``), which ``redrive`` stamps and nothing else can forge."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from markertext import NOW, VERSION, record
from pydantic import SecretStr

from schemas.events import ORIGIN_HEADER, ORIGIN_TAG_HEADER
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
