"""Poison input: nothing a producer can put on the input topic may crash or stall the service.

The corpus covers every error code, invalid and overlong UTF-8, NUL and control characters, the
record-count and payload-size limits exactly and one past them, huge FNs, pathological repetitions
of markers and odd CreateTimes. Memory is watched through the service's peak RSS (VmHWM).
"""

from __future__ import annotations

import itertools
import random
import string

import pytest

from service.core.limits import Limits
from tests.conftest import BrokerHandle
from tests.faults.harness import Fleet, produce_at, wait_accounted
from tests.support import Ledger, Topics, expected_outcomes, mixed_feed, read_all, record, service_env

pytestmark = [pytest.mark.faults]

MAX_PAYLOAD = 2_000_000  # room for 10 000 well-formed records in one payload
RSS_BOUND_MIB = 300
LAST_VALID_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
ANY_CREATETIME = {
    # Apache Kafka 4 refuses CreateTimes more than an hour ahead of the broker's clock by default
    # (log.message.timestamp.after.max.ms); this input topic takes any, and payloads of MAX_PAYLOAD.
    "message.timestamp.after.max.ms": str(2**63 - 1),
    "message.timestamp.before.max.ms": str(2**63 - 1),
    "max.message.bytes": str(4 << 20),
}


def _short(fn: int) -> str:
    return (
        f"F-N-S-T-A-R-T.{fn} F-N-E-N-D.D-A-T-E-S-T-A-R-T.2024-01-24 D-A-T-E-E-N-D."
        "T-I-T-L-E-S-T-A-R-T.t T-I-T-L-E-E-N-D.T-E-X-T-S-T-A-R-T.x T-E-X-T-E-N-D."
    )


def _names(count: int) -> list[str]:
    """``count`` distinct marker names (capital letters joined by hyphens), none of them required."""
    letters = string.ascii_uppercase
    combos = ("-".join(c) for n in (2, 3) for c in itertools.product(letters, repeat=n))
    return list(itertools.islice(combos, count))


def poison_corpus(limit: int) -> dict[str, bytes | None]:
    """Hostile and borderline payloads, by name."""
    rng = random.Random(2433)
    good = record(1).encode()
    sized = record(2).encode()
    cases: dict[str, bytes | None] = {f"mixed:{k}": v for k, v in mixed_feed(limit).items()}
    cases.update(
        {
            # Encodings.
            "overlong_slash": b"\xc0\xaf",
            "surrogate_half": b"\xed\xa0\x80",
            "overlong_in_a_record": good.replace(b"Body", b"B\xc0\xafody"),
            "surrogate_in_a_title": good.replace(b"Title", b"\xed\xa0\x80Title"),
            "truncated_sequence_at_the_end": good + b"\xe2\x82",
            "bom_only": b"\xef\xbb\xbf",
            "two_boms": b"\xef\xbb\xbf\xef\xbb\xbf" + good,
            "random_bytes": rng.randbytes(100_000),
            "four_byte_characters": record(3, title="\U0001f600" * 200, text="\U00010348" * 5000).encode(),
            # NUL and control characters.
            "nuls": b"\x00" * 10_000,
            "nul_in_every_field": record("4", title="t\x00t", text="\x00body\x00").encode(),
            "nuls_between_fields": good.replace(b" D-A-T-E-S", b" \x00\x00 D-A-T-E-S"),
            "control_characters": record(5, text="".join(map(chr, range(1, 32))) * 100).encode(),
            # Limits, exactly and one past.
            "records_at_the_limit": " ".join(_short(i) for i in range(10_000)).encode(),
            "records_one_past_the_limit": " ".join(_short(i) for i in range(10_001)).encode(),
            "records_at_the_limit_half_bad": " ".join(
                _short(i) if i % 2 else _short(i).replace("2024-01-24", "2024-13-01") for i in range(10_000)
            ).encode(),
            "payload_at_the_limit": sized + b" " * (limit - len(sized)),
            "payload_one_past_the_limit": sized + b" " * (limit - len(sized) + 1),
            "whitespace_at_the_limit": b" \n\t" * (limit // 3),
            "title_one_past_its_limit": record(6, title="T" * 1001).encode(),
            "text_one_past_its_limit": record(7, text="x" * 500_001).encode(),
            # Huge FNs.
            "fn_of_5000_digits": record("9" * 5000, title="t", text="x").encode(),
            "fn_of_1_900_000_digits": record("7" * 1_900_000, title="t", text="x").encode(),
            "fn_of_19_digits": record("1" * 19).encode(),
            "fn_of_18_nines": record("9" * 18).encode(),
            "fn_negative": record("-1").encode(),
            "fn_of_arabic_indic_digits": record("\u0663\u0664").encode(),
            # Repeated and nested markers.
            "fn_start_x100000": b"F-N-S-T-A-R-T. " * 100_000,
            "text_start_x100000": b"T-E-X-T-S-T-A-R-T. " * 100_000,
            "text_end_x130000": b"T-E-X-T-E-N-D. " * 130_000,
            "nested_starts": (b"T-E-X-T-S-T-A-R-T. " * 5000) + good + (b" T-E-X-T-E-N-D." * 5000),
            "suffixes_only": b"-S-T-A-R-T." * 150_000,
            "hyphens_only": b"-" * 1_500_000,
            "marker_name_of_700000_letters": ("A-" * 700_000 + "S-T-A-R-T. x").encode(),
            "glued_markers": (b"XF-N-S-T-A-R-T. 1 F-N-E-N-D." * 20_000),
            "five_thousand_extra_fields": (
                record(8) + " " + " ".join(f"{n}-S-T-A-R-T. v {n}-E-N-D." for n in _names(5000))
            ).encode(),
            "duplicate_field_x5000": (
                record(9) + " T-I-T-L-E-S-T-A-R-T. again T-I-T-L-E-E-N-D." * 5000
            ).encode(),
        }
    )
    return cases


@pytest.mark.timeout(240)
async def test_poison_corpus_never_crashes_the_service_and_memory_stays_bounded(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """Every payload of the corpus, each as one message, some with odd CreateTimes (0, the last
    millisecond of year 9999), then good records: the service stays up, accounts for every record
    exactly once, exits 0 on SIGTERM, no event exceeds INGEST_MAX_EVENT_BYTES, and its peak RSS
    (VmHWM) stays under RSS_BOUND_MIB."""
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("poison").create(
        bootstrap, **fault_broker.topic_kwargs, input_configs=ANY_CREATETIME
    )
    corpus = poison_corpus(MAX_PAYLOAD)
    assert len(corpus["payload_at_the_limit"] or b"") == MAX_PAYLOAD
    items: list[tuple[bytes | None, int | None]] = [(v, None) for v in corpus.values()]
    items += [(record(10).encode(), 0), (record(11).encode(), LAST_VALID_MS)]
    items += [(record(100 + i).encode(), None) for i in range(20)]
    sent = await produce_at(bootstrap, topics.input, items)
    limits = Limits(max_payload_bytes=MAX_PAYLOAD)
    expected = expected_outcomes(sent, topics.input, limits)
    codes = {c for c in expected.values() if c}
    assert len(codes) == 11, f"every error code must be exercised: {codes}"

    env = service_env(
        bootstrap,
        topics,
        idempotence=fault_broker.idempotence,
        INGEST_MAX_PAYLOAD_BYTES=str(MAX_PAYLOAD),
    )
    svc = fleet.start(env, "poison")
    ledger = await wait_accounted(bootstrap, topics, expected, within=150, services=[svc])
    assert svc.alive, f"the service died on the corpus\n{svc.tail()}"
    peak_mib = svc.sample_rss() / 1024
    svc.terminate()
    assert await svc.wait_exit(within=40) == 0, svc.tail()
    assert not [e for e in svc.events() if e.get("level") in ("error", "critical")], svc.tail()

    ledger.check(expected, exactly_once=True)
    assert 0 < peak_mib < RSS_BOUND_MIB, f"peak RSS {peak_mib:.0f} MiB"
    largest = max((await _event_sizes(bootstrap, topics)).values())
    assert largest <= Limits().max_event_bytes, f"an event of {largest} bytes"
    print(
        f"{len(sent)} payloads, {len(expected)} records "
        f"({sum(c is None for c in expected.values())} articles); peak RSS {peak_mib:.0f} MiB; "
        f"largest event {largest} bytes"
    )


@pytest.mark.timeout(120)
async def test_a_createtime_past_year_9999_does_not_crash_the_service(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """Any int64 is a valid CreateTime. Records produced with the first millisecond of year 10000
    and with the largest int64 must become articles like any other, and the service exit 0.

    A bug found by this suite: ``datetime.fromtimestamp`` raised ``ValueError: year 10000 is out
    of range`` inside the core; it escaped the loop, the process exited 1 with a traceback, and
    every restart died on the same message (a poison pill for its partition)."""
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("year10000").create(
        bootstrap, **fault_broker.topic_kwargs, input_configs=ANY_CREATETIME
    )
    sent = await produce_at(
        bootstrap,
        topics.input,
        [
            (record(1).encode(), LAST_VALID_MS + 1),
            (record(2).encode(), 2**63 - 1),
            (b"no markers", LAST_VALID_MS + 1),
            (record(3).encode(), None),
        ],
    )
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence, INGEST_BURST="true")
    svc = fleet.start(env, "burst")
    code = await svc.wait_exit(within=90)
    assert code == 0, svc.tail(1500)
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)


def _escaping_payload() -> bytes:
    """Under 1 MB of input whose article event would be about 6 MB: JSON writes a NUL as 6 bytes."""
    head = (
        "F-N-S-T-A-R-T. 1 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-24 D-A-T-E-E-N-D. "
        "T-I-T-L-E-S-T-A-R-T. t T-I-T-L-E-E-N-D. "
    )
    text = "T-E-X-T-S-T-A-R-T. " + "\x00" * 490_000 + " T-E-X-T-E-N-D. "
    extra = "N-O-T-E-S-T-A-R-T. " + "\x00" * 490_000 + " N-O-T-E-E-N-D."
    return (head + text + extra).encode()


async def _event_sizes(bootstrap: str, topics: Topics) -> dict[str, int]:
    return {
        f"{topic}@{rec.offset}": len(rec.value)
        for topic in (topics.output, topics.dlq)
        for rec in await read_all(bootstrap, topic)
    }


@pytest.mark.timeout(120)
async def test_an_event_too_large_to_send_does_not_block_its_partition(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """A 980 KB payload (under INGEST_MAX_PAYLOAD_BYTES = 1 MB) with 490 000 NULs in TEXT and as
    many in an extra field, then a good record: the first becomes a dead letter within
    INGEST_MAX_EVENT_BYTES, the second its article; the burst run drains both and exits 0.

    A bug found by this suite: the article event came to about 5.9 MB, over the producer's
    ``max_request_size`` (2 x 1 MB + 1 MB); ``MessageSizeTooLargeError`` was retried forever, the
    partition blocked, and the good record's article re-sent with every retry."""
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("escaping").create(bootstrap, **fault_broker.topic_kwargs)
    payload = _escaping_payload()
    assert len(payload) < Limits().max_payload_bytes
    sent = await produce_at(bootstrap, topics.input, [(payload, None), (record(2).encode(), None)])
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence, INGEST_BURST="true")
    svc = fleet.start(env, "burst")
    assert await svc.wait_exit(within=60) == 0, svc.tail()
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
    sizes = await _event_sizes(bootstrap, topics)
    assert max(sizes.values()) <= Limits().max_event_bytes, sizes


@pytest.mark.timeout(120)
async def test_every_event_fits_the_size_the_input_topic_accepts(
    fault_broker: BrokerHandle, fleet: Fleet
) -> None:
    """No event is larger than INGEST_MAX_EVENT_BYTES (1 000 000 by default, under Kafka's default
    ``max.message.bytes`` of 1 048 588), whatever the input: stray text of 900 000 NULs (a raw copy
    that JSON-escapes to six times its size), a START marker whose name has 490 000 letters (the
    name is quoted in the error), a good record.

    A bug found by this suite: dead letters of these sub-1 MB inputs came to ~1.5 MB and ~1.2 MB;
    Tansu accepts them, Apache Kafka with the README's topic settings would refuse them and block
    the partition."""
    bootstrap = fault_broker.bootstrap_servers
    topics = await Topics.unique("event-size").create(bootstrap, **fault_broker.topic_kwargs)
    payloads = [
        ("F-N-S-T-A-R-T. 1 F-N-E-N-D. " + "\x00" * 900_000).encode(),
        ("A-" * 490_000 + "S-T-A-R-T. x").encode(),
        record(3).encode(),
    ]
    assert all(len(p) < Limits().max_payload_bytes for p in payloads)
    sent = await produce_at(bootstrap, topics.input, [(p, None) for p in payloads])
    env = service_env(bootstrap, topics, idempotence=fault_broker.idempotence, INGEST_BURST="true")
    svc = fleet.start(env, "burst")
    assert await svc.wait_exit(within=90) == 0, svc.tail()
    ledger = await Ledger.read(bootstrap, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
    sizes = await _event_sizes(bootstrap, topics)
    too_big = {where: size for where, size in sizes.items() if size > Limits().max_event_bytes}
    assert not too_big, f"events over {Limits().max_event_bytes} bytes: {too_big}"
