"""The checker: the whole history of a chaos run against the promise, from what the Java reader saw.

Pure: records in, a ``Verdict`` out (failures by kind, with examples, and the figures). The input
topic is the truth about what was sent: every record on it must come from the feed (its
``chaos-seq`` header and bytes are message *n*'s) and every message the feed saw acknowledged must be
on it, where the broker said. Then, for each input record (partition, offset, record index):

* exactly one event (exactly-once, read_committed) or at least one (at-least-once), on the right
  topic: an article for a good record, a dead letter with the code ``feed.message`` gives for a bad
  one; copies carry the same id;
* no event refers to an input record that does not exist or says something else than it (title,
  FN and key of an article; ``chaos-seq`` header, code and id of a dead letter);
* per output partition and key, the events of one input partition come in input order: the first
  copy of each in input-offset order (with no copies at all in exactly-once);
* the group's committed offset of every input partition is the partition's end;
* every instance stopped by the final SIGTERM exited 0, none exited by itself, a SIGTERM during
  the run gave 0 or 1 (1: the grace period ran out, as documented) and the service logged
  ``service.stopped`` within the grace period plus the documented 4 s (plus ``SLACK_SECONDS`` for a
  loaded machine). A SIGTERM that reaches an instance before it logged ``service.starting`` may end
  it by the signal's default action (-15): its handlers may not be installed yet, nothing is read.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.chaos.feed import SEQ_HEADER, STORIES, message, title
from tests.chaos.fleet import Stop
from tests.chaos.reader import Dump, Rec

Coord = tuple[int, int, int]
EXAMPLES = 5
HARD_STOP_SECONDS = 4.0
SLACK_SECONDS = 3.0


@dataclass
class Verdict:
    """Failures by kind (a count and a few examples each) and the run's figures."""

    failures: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.counts

    def fail(self, kind: str, example: object) -> None:
        """Count one failure of ``kind``; keep the first few examples."""
        self.counts[kind] += 1
        examples = self.failures.setdefault(kind, [])
        if len(examples) < EXAMPLES:
            examples.append(str(example))

    def report(self) -> str:
        """The failures, one kind a line."""
        return "\n".join(
            f"FAILED {kind}: {self.counts[kind]}, e.g. {'; '.join(self.failures[kind])}"
            for kind in self.counts
        )


@dataclass(frozen=True)
class Topics:
    """The run's topic names."""

    input: str
    output: str
    dlq: str


def _n(rec: Rec) -> int | None:
    raw = rec.header(SEQ_HEADER)
    return int(raw) if raw is not None and raw.isdigit() else None


def check_run(
    dump: Dump,
    topics: Topics,
    *,
    exactly_once: bool,
    attempted: int,
    acked: dict[int, tuple[int, int]],
    stops: list[Stop],
    grace: float,
) -> Verdict:
    """Check everything; return the verdict (never raises on bad data)."""
    v = Verdict()
    expected = _inputs(v, dump, topics.input, attempted, acked)
    iso = "read_committed" if exactly_once else "read_uncommitted"
    articles = _articles(v, dump.records[(iso, topics.output)], topics.input, expected)
    dead = _dead_letters(v, dump.records[(iso, topics.dlq)], topics.input, expected)
    _accounting(v, expected, articles, dead, exactly_once)
    for topic in (topics.output, topics.dlq):
        _order(v, dump.records[(iso, topic)], topics.input, expected)
    _committed(v, dump, topics.input)
    _stops(v, stops, grace)
    if exactly_once:
        v.figures["aborted_records"] = sum(
            len(dump.records[("read_uncommitted", t)]) - len(dump.records[("read_committed", t)])
            for t in (topics.output, topics.dlq)
            if ("read_uncommitted", t) in dump.records
        )
    return v


def _inputs(
    v: Verdict, dump: Dump, topic: str, attempted: int, acked: dict[int, tuple[int, int]]
) -> dict[Coord, tuple[int, str | None]]:
    """Input records → (message number, expected code) per record; checks the input against the feed."""
    at: dict[tuple[int, int], int] = {}
    copies: Counter[int] = Counter()
    for rec in dump.records[("read_uncommitted", topic)]:
        n = _n(rec)
        where = (rec.partition, rec.offset)
        if n is None or not 1 <= n <= attempted:
            v.fail("input record the feed never sent", where)
            continue
        msg = message(n)
        if rec.value != msg.value or rec.key != msg.key:
            v.fail("input record differs from what the feed sent", (where, n))
            continue
        at[where] = n
        copies[n] += 1
    for n, where in sorted(acked.items()):
        if at.get(where) != n:
            v.fail("acknowledged input message missing from the input topic", (n, where))
    expected: dict[Coord, tuple[int, str | None]] = {}
    for (p, o), n in at.items():
        for i, code in enumerate(message(n).expected):
            expected[(p, o, i)] = (n, code)
    v.figures.update(
        messages_attempted=attempted,
        messages_acknowledged=len(acked),
        messages_on_input=len(at),
        messages_on_input_twice=sum(1 for c in copies.values() if c > 1),
        records=len(expected),
    )
    return expected


def _articles(
    v: Verdict, recs: list[Rec], input_topic: str, expected: dict[Coord, tuple[int, str | None]]
) -> dict[Coord, list[Rec]]:
    found: dict[Coord, list[Rec]] = defaultdict(list)
    for rec in recs:
        try:
            ev = orjson.loads(rec.value or b"")
            coord = (int(ev["kafkapartition"]), int(ev["kafkaoffset"]), int(ev["recordindex"]))
            ev_topic, ev_id, ev_title = ev["kafkatopic"], ev["id"], ev["data"]["title"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            v.fail("article event that is not one", (rec.partition, rec.offset))
            continue
        if ev_topic != input_topic or coord not in expected:
            v.fail("article for an input record that was never sent", (ev_topic, coord))
            continue
        n, _ = expected[coord]
        p, o, i = coord
        if (
            ev_id != f"{input_topic}:{p}:{o}:{i}"
            or ev_title != title(n, i)
            or rec.key != str(n % STORIES).encode()
        ):
            v.fail("article that does not match its input record", (coord, ev_id, ev_title, rec.key))
            continue
        found[coord].append(rec)
    return found


def _dead_letters(
    v: Verdict, recs: list[Rec], input_topic: str, expected: dict[Coord, tuple[int, str | None]]
) -> dict[Coord, list[Rec]]:
    found: dict[Coord, list[Rec]] = defaultdict(list)
    for rec in recs:
        try:
            ev = orjson.loads(rec.value or b"")
            src = ev["source"]
            coord = (int(src["partition"]), int(src["offset"]), int(src["record_index"]))
            ev_topic, ev_id, code = src["topic"], ev["id"], ev["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            v.fail("dead letter that is not one", (rec.partition, rec.offset))
            continue
        if ev_topic != input_topic or coord not in expected:
            v.fail("dead letter for an input record that was never sent", (ev_topic, coord))
            continue
        n, want = expected[coord]
        p, o, i = coord
        if ev_id != f"{input_topic}:{p}:{o}:{i}" or _n(rec) != n:
            v.fail("dead letter that does not match its input record", (coord, ev_id, _n(rec)))
            continue
        if want is not None and code != want:
            v.fail("dead letter with the wrong error code", (coord, code, want))
        found[coord].append(rec)
    return found


def _accounting(
    v: Verdict,
    expected: dict[Coord, tuple[int, str | None]],
    articles: dict[Coord, list[Rec]],
    dead: dict[Coord, list[Rec]],
    exactly_once: bool,
) -> None:
    codes: Counter[str] = Counter()
    for coord, (_, code) in sorted(expected.items()):
        a, d = len(articles.get(coord, ())), len(dead.get(coord, ()))
        if a + d == 0:
            v.fail("input record with no event (lost)", coord)
        elif code is None and d:
            v.fail("good record dead-lettered", coord)
        elif code is not None and a:
            v.fail("bad record published as an article", (coord, code))
        elif exactly_once and a + d > 1:
            copies = [_where(r) for r in [*articles.get(coord, ()), *dead.get(coord, ())]]
            v.fail("record with more than one event in exactly-once", f"{coord}: {', '.join(copies)}")
        if code is not None:
            codes[code] += 1
    redelivered: dict[int, set[int]] = defaultdict(set)
    for coord in expected:
        if len(articles.get(coord, ())) + len(dead.get(coord, ())) > 1:
            redelivered[coord[0]].add(coord[1])
    v.figures.update(
        largest_redelivery=_longest_run(redelivered),
        articles=sum(1 for c, (_, code) in expected.items() if code is None and c in articles),
        dead_letters=dict(sorted(codes.items())),
        article_events=sum(map(len, articles.values())),
        dead_letter_events=sum(map(len, dead.values())),
        duplicates=sum(max(0, len(articles.get(c, ())) + len(dead.get(c, ())) - 1) for c in expected),
    )


def _longest_run(offsets: dict[int, set[int]]) -> str:
    """The longest run of consecutive input messages delivered more than once, ``p:first-last (n)``:
    a crash repeats a batch or two; a partition read again from its start repeats far more."""
    best = (0, -1, -1, -1)
    for p, found in offsets.items():
        ordered = sorted(found)
        start = prev = ordered[0]
        for o in [*ordered[1:], None]:
            if o is not None and o == prev + 1:
                prev = o
                continue
            best = max(best, (prev - start + 1, p, start, prev))
            if o is not None:
                start = prev = o
    length, p, first, last = best
    return "none" if length == 0 else f"{length} messages (input partition {p}, offsets {first}-{last})"


def _order(
    v: Verdict,
    recs: list[Rec],
    input_topic: str,
    expected: dict[Coord, tuple[int, str | None]],
) -> None:
    """Per (output partition, key, input partition): first copies in input order (copies themselves
    are the accounting's business)."""
    sequences: dict[tuple[int, bytes | None, int], list[tuple[int, int]]] = defaultdict(list)
    for rec in sorted(recs, key=lambda r: (r.partition, r.offset)):
        coord = _coord(rec, input_topic)
        if coord is None or coord not in expected:
            continue  # reported by the accounting
        sequences[(rec.partition, rec.key, coord[0])].append((coord[1], coord[2]))
    for (out_partition, key, in_partition), seq in sequences.items():
        firsts, seen = [], set()
        for item in seq:
            if item not in seen:
                seen.add(item)
                firsts.append(item)
        swapped = next(((a, b) for a, b in itertools.pairwise(firsts) if b < a), None)
        if swapped is not None:
            v.fail(
                "events out of input order",
                f"output partition {out_partition}, key {key!r}, input partition {in_partition}: "
                f"(offset, index) {swapped[1]} first seen after {swapped[0]}",
            )


def _where(rec: Rec) -> str:
    """Where a copy is: output partition, offset and (UTC) time."""
    at = dt.datetime.fromtimestamp(rec.timestamp / 1000, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"{rec.topic}[{rec.partition}]@{rec.offset} {at}"


def _coord(rec: Rec, input_topic: str) -> Coord | None:
    try:
        ev = orjson.loads(rec.value or b"")
        if "source" in ev and isinstance(ev["source"], dict):
            src = ev["source"]
            return (int(src["partition"]), int(src["offset"]), int(src["record_index"]))
        return (int(ev["kafkapartition"]), int(ev["kafkaoffset"]), int(ev["recordindex"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _committed(v: Verdict, dump: Dump, topic: str) -> None:
    ends = dump.ends[("read_uncommitted", topic)]
    committed = dump.committed.get(topic, {})
    for p, end in sorted(ends.items()):
        got = committed.get(p, 0 if end == 0 else None)
        if got != end:
            v.fail("committed offset not at the end of the input", f"partition {p}: {got} of {end}")
    v.figures["input_end_offsets"] = dict(sorted(ends.items()))


def _stops(v: Verdict, stops: list[Stop], grace: float) -> None:
    limit = grace + HARD_STOP_SECONDS + SLACK_SECONDS
    by_how: Counter[str] = Counter()
    for stop in stops:
        by_how[f"{stop.how}:{stop.code}"] += 1
        # The service's own stop is timed to its service.stopped line: after it, only the
        # interpreter's teardown is left, which a loaded machine can stretch by seconds.
        took = stop.stopped if stop.stopped is not None else stop.seconds
        if stop.how == "crash":
            v.fail("instance exited by itself", stop)
        elif stop.how == "final" and stop.code != 0:
            v.fail("final SIGTERM did not exit 0", stop)
        elif stop.how != "kill" and stop.code == -15 and stop.early:
            continue  # SIGTERM before the service could install its handlers: the default action
        elif stop.how != "kill" and stop.code not in (0, 1):
            v.fail("SIGTERM exit status neither 0 nor 1", stop)
        elif stop.how != "kill" and took is not None and took > limit:
            v.fail(f"SIGTERM took longer than the grace period + {HARD_STOP_SECONDS:g} s", stop)
    sigterms = [s for s in stops if s.how not in ("kill", "crash")]
    v.figures["stops"] = dict(sorted(by_how.items()))
    v.figures["slowest_stop_seconds"] = max(
        (s.stopped if s.stopped is not None else s.seconds or 0.0 for s in sigterms), default=0.0
    )
    v.figures["slowest_exit_seconds"] = max((s.seconds or 0.0 for s in sigterms), default=0.0)
