"""The chaos run's checker and feed, without a broker: a consistent history passes, and each broken
promise in it (lost, invented, duplicated, misrouted, reordered events, offsets committed short, a
bad exit) is reported. The feed's table of error codes is held to the service's core."""

from __future__ import annotations

import base64
import copy
from collections import Counter
from typing import Any

import orjson
import pytest

from tests.chaos.check import Topics, Verdict, check_run
from tests.chaos.feed import SEQ_HEADER, STORIES, message, title
from tests.chaos.fleet import Stop
from tests.chaos.reader import ReaderFailed, parse
from tests.support import Sent, expected_outcomes

TOPICS = Topics("t.raw", "t.articles", "t.dlq")
PARTITIONS = 3
GRACE = 10.0


def _b64(data: bytes | None) -> str:
    return "-" if data is None else base64.b64encode(data).decode()


class History:
    """A consistent run: ``count`` messages on the input, one event each record, all committed."""

    def __init__(self, count: int = 150) -> None:
        self.count = count
        self.inputs: list[tuple[int, int, int]] = []  # (partition, offset, n)
        self.acked: dict[int, tuple[int, int]] = {}
        offsets: Counter[int] = Counter()
        self.events: list[dict[str, Any]] = []
        for n in range(1, count + 1):
            msg = message(n)
            p = msg.partition(PARTITIONS)
            o = offsets[p]
            offsets[p] += 1
            self.inputs.append((p, o, n))
            self.acked[n] = (p, o)
            for i, code in enumerate(msg.expected):
                self.events.append(self._event(p, o, n, i, code))
        self.ends = dict(offsets)
        self.committed = dict(offsets)
        self.stops = [Stop("i0-s0", "kill", -9), Stop("i1-s1", "final", 0, 1.2)]

    @staticmethod
    def _event(p: int, o: int, n: int, i: int, code: str | None) -> dict[str, Any]:
        ident = f"{TOPICS.input}:{p}:{o}:{i}"
        story = n % STORIES
        if code is None:
            value = {
                "id": ident,
                "kafkatopic": TOPICS.input,
                "kafkapartition": p,
                "kafkaoffset": o,
                "recordindex": i,
                "data": {"title": title(n, i), "fn": str(story)},
            }
            return {
                "topic": TOPICS.output,
                "partition": story % 3,
                "key": str(story).encode(),
                "value": value,
            }
        value = {
            "id": ident,
            "source": {"topic": TOPICS.input, "partition": p, "offset": o, "record_index": i},
            "error": {"code": code},
        }
        return {
            "topic": TOPICS.dlq,
            "partition": story % 3,
            "key": message(n).key,
            "headers": [(SEQ_HEADER, str(n).encode())],
            "value": value,
        }

    def text(self) -> str:
        """The history as the Java reader writes it."""
        lines = []
        for p in range(PARTITIONS):
            lines.append(f"END\tread_uncommitted\t{TOPICS.input}\t{p}\t{self.ends.get(p, 0)}")
        for p, o, n in self.inputs:
            msg = message(n)
            headers = ",".join(f"{_b64(k.encode())}={_b64(v)}" for k, v in msg.headers)
            lines.append(
                f"REC\tread_uncommitted\t{TOPICS.input}\t{p}\t{o}\t-1\t{_b64(msg.key)}\t{headers}\t{_b64(msg.value)}"
            )
        offsets: Counter[tuple[str, int]] = Counter()
        for ev in self.events:
            where = (ev["topic"], ev["partition"])
            headers = ",".join(f"{_b64(k.encode())}={_b64(v)}" for k, v in ev.get("headers", []))
            at = 1_796_292_357_610 + offsets[where]
            rec = f"{ev['topic']}\t{ev['partition']}\t{offsets[where]}\t{at}\t{_b64(ev['key'])}\t{headers}"
            offsets[where] += 1
            for iso in ("read_committed", "read_uncommitted"):
                lines.append(f"REC\t{iso}\t{rec}\t{_b64(orjson.dumps(ev['value']))}")
        for p in range(PARTITIONS):
            lines.append(f"COMMITTED\t{TOPICS.input}\t{p}\t{self.committed[p]}")
        lines.append("DONE")
        return "\n".join(lines) + "\n"

    def check(self, *, exactly_once: bool = True) -> Verdict:
        """The checker's verdict on this history."""
        return check_run(
            parse(self.text()),
            TOPICS,
            exactly_once=exactly_once,
            attempted=self.count,
            acked=self.acked,
            stops=self.stops,
            grace=GRACE,
        )

    def index(self, *, dead: bool, story: int | None = None) -> int:
        """The position of an event (a dead letter or an article; of ``story`` if given)."""
        return next(
            k
            for k, ev in enumerate(self.events)
            if (ev["topic"] == TOPICS.dlq) == dead and (story is None or ev["key"] in (str(story).encode(),))
        )


def _failed(verdict: Verdict) -> set[str]:
    return set(verdict.counts)


@pytest.mark.parametrize("exactly_once", [True, False])
def test_a_consistent_history_passes_with_every_figure(exactly_once: bool) -> None:
    verdict = History().check(exactly_once=exactly_once)
    assert verdict.ok, verdict.report()
    assert verdict.figures["messages_on_input"] == 150
    assert verdict.figures["duplicates"] == 0
    assert set(verdict.figures["dead_letters"]) == {
        "empty_payload",
        "invalid_encoding",
        "invalid_field",
        "missing_field",
        "no_markers",
    }


def test_a_duplicate_fails_exactly_once_and_is_counted_in_at_least_once() -> None:
    history = History()
    history.events.append(copy.deepcopy(history.events[-1]))
    assert _failed(history.check(exactly_once=True)) == {"record with more than one event in exactly-once"}
    verdict = history.check(exactly_once=False)
    assert verdict.ok, verdict.report()
    assert verdict.figures["duplicates"] == 1
    assert verdict.figures["largest_redelivery"].startswith("1 messages")


@pytest.mark.parametrize("dead", [True, False])
def test_a_lost_event_is_reported(dead: bool) -> None:
    history = History()
    del history.events[history.index(dead=dead)]
    assert _failed(history.check(exactly_once=False)) == {"input record with no event (lost)"}


def test_an_event_for_a_record_never_sent_is_reported() -> None:
    history = History()
    ghost = copy.deepcopy(history.events[history.index(dead=False)])
    ghost["value"]["kafkaoffset"] = 10_000
    history.events.append(ghost)
    assert _failed(history.check()) == {"article for an input record that was never sent"}


def test_an_article_that_says_something_else_than_its_input_is_reported() -> None:
    history = History()
    history.events[history.index(dead=False)]["value"]["data"]["title"] = "chaos 999999.0"
    assert "article that does not match its input record" in _failed(history.check())


def test_a_wrong_code_and_a_misrouted_record_are_reported() -> None:
    history = History()
    history.events[history.index(dead=True)]["value"]["error"]["code"] = "stray_text"
    assert _failed(history.check()) == {"dead letter with the wrong error code"}
    history = History()
    p, o, n = next((p, o, n) for p, o, n in history.inputs if message(n).expected == (None,))
    history.events = [
        e for e in history.events if e["value"].get("kafkaoffset") != o or e["partition"] != n % 3
    ]
    history.events.append(History._event(p, o, n, 0, "invalid_field"))
    assert "good record dead-lettered" in _failed(history.check())


def test_events_out_of_input_order_per_key_are_reported_even_with_duplicates() -> None:
    history = History()
    story = 5
    first = history.index(dead=False, story=story)
    later = next(
        k for k in range(first + 1, len(history.events)) if history.events[k]["key"] == str(story).encode()
    )
    history.events[first], history.events[later] = history.events[later], history.events[first]
    assert _failed(history.check(exactly_once=False)) == {"events out of input order"}
    # A redelivery (an earlier copy again after later events) is not a reordering in at-least-once.
    history = History()
    history.events.append(copy.deepcopy(history.events[history.index(dead=False, story=story)]))
    assert history.check(exactly_once=False).ok


def test_input_not_from_the_feed_or_an_acknowledged_message_missing_is_reported() -> None:
    history = History()
    p, o, _ = history.inputs.pop()
    history.ends[p] -= 1
    history.committed[p] -= 1
    history.events = [
        e for e in history.events if not e["value"]["id"].startswith(f"{TOPICS.input}:{p}:{o}:")
    ]
    assert _failed(history.check()) == {"acknowledged input message missing from the input topic"}
    history = History()
    history.count = 100  # messages above 100 were never handed to the producer
    assert "input record the feed never sent" in _failed(history.check())


def test_offsets_committed_short_of_the_end_are_reported() -> None:
    history = History()
    history.committed[1] -= 1
    assert _failed(history.check()) == {"committed offset not at the end of the input"}


@pytest.mark.parametrize(
    ("stop", "failure"),
    [
        (Stop("i2-s2", "final", 1, 11.0), "final SIGTERM did not exit 0"),
        (Stop("i2-s2", "crash", 1), "instance exited by itself"),
        (Stop("i2-s2", "remove", 2, 1.0), "SIGTERM exit status neither 0 nor 1"),
        (Stop("i2-s2", "remove", None, 45.0), "SIGTERM exit status neither 0 nor 1"),
        (Stop("i2-s2", "sigterm-while-cut-off", 1, 30.0), "SIGTERM took longer than the grace period + 4 s"),
        (Stop("i2-s2", "remove", 0, 30.0, 18.0), "SIGTERM took longer than the grace period + 4 s"),
        (Stop("i2-s2", "remove", -15, 0.1, None, early=False), "SIGTERM exit status neither 0 nor 1"),
    ],
)
def test_bad_exits_are_reported(stop: Stop, failure: str) -> None:
    history = History()
    history.stops.append(stop)
    assert _failed(history.check()) == {failure}


@pytest.mark.parametrize(
    "stop",
    [
        Stop("i2-s2", "sigterm-while-cut-off", 1, GRACE + 2.5),  # the grace period ran out: exit 1
        Stop("i2-s2", "remove", 0, 25.0, GRACE + 1.0),  # stopped in time, a slow interpreter teardown
        Stop("i2-s2", "remove", -15, 0.1, None, early=True),  # before its handlers were installed
    ],
)
def test_documented_sigterm_outcomes_are_accepted(stop: Stop) -> None:
    history = History()
    history.stops.append(stop)
    assert history.check().ok, history.check().report()


def test_a_dump_that_did_not_finish_is_refused() -> None:
    with pytest.raises(ReaderFailed):
        parse(History().text().replace("DONE\n", ""))


def test_the_feed_expects_what_the_core_decides() -> None:
    """The feed's own table of codes (from docs/contracts.md) agrees with the service's core."""
    sent = []
    for n in range(1, 1500):
        msg = message(n)
        sent.append(Sent(0, n, msg.key, msg.value))
    core = expected_outcomes(sent, TOPICS.input)
    table = {(0, n, i): code for n in range(1, 1500) for i, code in enumerate(message(n).expected)}
    assert core == table
    assert len(set(table.values())) == 6  # articles and five error codes
