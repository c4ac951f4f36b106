"""Differential fuzzing of the compiled record path against the Python reference. Not a test.

Every generated input (payload bytes, source, limits, traceparent) goes through both
``compiled_articles`` (``articles`` in ``service/core/_speedups.c``) and
``process_payload_reference`` (the Python path), and must satisfy:

* where the compiled path answers, its outcomes equal the reference's byte for byte: record indices,
  event ids, keys, event bytes, error (None) and FN, with the same types (an ``Outcome`` of int,
  str, bytes, bytes, None, int);
* it answers exactly where the conditions it documents hold (``should_compile``: valid UTF-8, a
  clean payload per the Python scanner, at most 64 fields per record, FN of 1-18 ASCII digits, an
  existing YYYY-MM-DD date, lengths within the limits, a title with a character the C check can
  prove visible, every event within its size limit, 64-bit partition and offset), and declines
  (None) everywhere else: no wrong answer, and no needless fallback either;
* ``process_payload`` (compiled first, then the reference) returns the reference's outcomes.

The generator is a plain seeded ``random.Random`` (fast: thousands of inputs a second) built to hit
the edges: every JSON escape, non-ASCII of 2, 3 and 4 bytes, BOMs (none, one, two, inside values),
every kind of white space around values and between fields, near-markers and glued markers, FN and
date edge cases, extra fields (empty, duplicated, named like required ones), many records, lengths
and the event size exactly at, under and over their limits, odd topics, partitions, offsets,
timestamps and redrive origins, valid and invalid traceparents; then byte-level mutations.

Usage::

    python scripts/fuzz_compiled.py --inputs 1000000 [--seconds S] [--seed N]

Prints the figures at the end (inputs, inputs/s, how many the compiled path took and declined, by
payload kind) and exits 1 with the first failing input, 0 when every input agreed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from service.core import events
from service.core.events import (
    Outcome,
    Source,
    compiled_articles,
    process_payload,
    process_payload_reference,
    valid_traceparent,
)
from service.core.limits import Limits
from service.core.message import ARTICLE_RECORD_RESERVE, strip_bom
from service.core.origin import Origin
from service.core.parser import _scan_clean_py
from service.core.validation import _BLANK_LETTERS, REQUIRED

NOW = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
VERSION = "fuzz"
BOM = "\ufeff"
MAX_FIELDS = 64
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# --- the expectations --------------------------------------------------------------------------------


def should_compile(payload: bytes, source: Source, limits: Limits, reference: list[Outcome]) -> bool:
    """Whether the compiled path must take this input: its documented conditions, in Python."""
    if len(payload) > limits.max_payload_bytes:
        return False
    if not all(-(2**63) <= n < 2**63 for n in (source.partition, source.offset)):
        return False
    try:
        text = strip_bom(payload).decode("utf-8")
    except UnicodeDecodeError:
        return False
    clean = _scan_clean_py(text, limits.max_records_per_payload)
    if clean is None:
        return False
    for rec in clean:
        values = rec.values
        if len(values) > MAX_FIELDS or any(name not in values for name in REQUIRED):
            return False
        fn, date, title, body = values["fn"], values["date"], values["title"], values["text"]
        if not (1 <= len(fn) <= 18 and all("0" <= c <= "9" for c in fn)):
            return False
        if not (len(date) == 10 and date[4] == date[7] == "-"):
            return False
        if not all("0" <= date[i] <= "9" for i in (0, 1, 2, 3, 5, 6, 8, 9)):
            return False
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            return False
        if not (1 <= len(title) <= limits.max_title_chars and 1 <= len(body) <= limits.max_text_chars):
            return False
        if not any("!" <= c <= "~" or (c.isalnum() and c not in _BLANK_LETTERS) for c in title):
            return False
    return all(o.error is None for o in reference)  # else an event over its size limit


class Disagreement(AssertionError):
    """The compiled path and the reference disagree on this input."""


_TYPES = [int, str, bytes, bytes, type(None), int]


def check(
    payload: bytes, source: Source, limits: Limits, traceparent: str | None, stats: Counter[str]
) -> None:
    """Run both paths on one input and hold the compiled one to the reference."""
    reference = process_payload_reference(
        payload, source, limits, now=NOW, version=VERSION, traceparent=traceparent
    )
    valid = valid_traceparent(traceparent)
    got = compiled_articles(payload, source, limits, now=NOW, traceparent=valid)
    expected = should_compile(payload, source, limits, reference)
    if got is not None:
        if got != reference:
            raise Disagreement(_diff(got, reference))
        for outcome in got:
            if type(outcome) is not Outcome or [type(v) for v in outcome] != _TYPES:
                raise Disagreement(f"wrong types: {type(outcome)} of {[type(v) for v in outcome]}")
            if outcome.value != reference[outcome.record_index].value:  # == above; bytes spelled out
                raise Disagreement("event bytes differ")
    if (got is not None) != expected:
        raise Disagreement(
            f"the compiled path {'took' if got is not None else 'declined'} an input it should "
            f"{'decline' if got is not None else 'take'} (reference: {[o.error for o in reference]})"
        )
    if (
        process_payload(payload, source, limits, now=NOW, version=VERSION, traceparent=traceparent)
        != reference
    ):
        raise Disagreement("process_payload differs from the reference")
    stats["taken" if got is not None else "declined"] += 1
    stats["articles"] += sum(o.error is None for o in reference)
    stats["dead letters"] += sum(o.error is not None for o in reference)
    if got is not None:
        stats["records taken"] += len(got)


def _diff(got: list[Outcome], reference: list[Outcome]) -> str:
    if len(got) != len(reference):
        return f"{len(got)} outcomes from the compiled path, {len(reference)} from the reference"
    for a, b in zip(got, reference, strict=True):
        for name, x, y in zip(Outcome._fields, a, b, strict=True):
            if x != y:
                if isinstance(x, bytes) and isinstance(y, bytes):
                    at = next(
                        (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
                    )
                    near = slice(max(0, at - 40), at + 40)
                    return f"record {a.record_index} {name} differs at byte {at}: {x[near]!r} vs {y[near]!r}"
                return f"record {a.record_index} {name}: {x!r} vs {y!r}"
    return "outcomes differ"


# --- the generator ------------------------------------------------------------------------------------

SPACES = [" ", "\n", "\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680"]
SPACES += [chr(c) for c in range(0x2000, 0x200B)] + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_SPACES = ["\u200b", "\ufeff", "\u180e", "\x00", "\u2060", "\x7f"]
CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f", '"', "\\", "/"]
WIDE = ["é", "ß", "ñ", "Ω", "東", "京", "€", "—", "“", "”", "…", "\u2028", "\u2029", "\ufeff", "\u0301"]
WIDE += ["🙂", "𝔘", "\U0010ffff", "\U0001f600", "١", "٣", "０", "\u115f", "\u1160", "\u3164", "\uffa0"]
WIDE += ["\u2800", "\ud7ff", "\ue000", "\U000e0001", "\u00ad", "\u200d", "\u0600"]
# Marker-like text that is no marker suffix (value text on either path), then text with a suffix
# (glued or not: the scanner of clean payloads leaves any of it to the full Python path).
NEAR = ["-", "--", "A-", "-A", "X-RAY", "F-N", "-S-T-A-R-T", "-E-N-D", "F-N-E-N-D"]
NEAR += ["T-E-X-T-S-T-A-R-T", "-E-N-D-", "A-B-C", "F-N-S-T-A-R-T", "T-E-X-T-E-N-D", "-S-T-A-R-T-."]
SUFFIXED = [
    "xT-E-X-T-E-N-D.",
    "-E-N-D.",
    "S-T-A-R-T.",
    "E-N-D.",
    "-S-T-A-R-T.",
    "9F-N-S-T-A-R-T.",
    "éT-I-T-L-E-E-N-D.",
]
SUFFIXED += ["F-N-S-T-A-R-T.", "D-A-T-E-E-N-D.", "T-I-T-L-E-E-N-D.", "A-B-C-E-N-D.", "-A-S-T-A-R-T."]
WORDS = ["Gaza", "ceasefire", "talks", "the", "a", "said", "2024", "x", "Reuters", "BBC", "Q", "7"]
FN_EDGES = ["0", "00", "7", "2433", "9" * 18, "0" * 17 + "1", "1" + "0" * 17, "9" * 19, "0" * 18 + "5"]
FN_EDGES += ["0" * 30, "", "-1", "+1", "1 2", "١٢", "１", "0x1", "12a", "1.0", "٣", "1\u00a02"]
DATE_EDGES = ["0000-01-01", "0001-01-01", "9999-12-31", "2023-02-29", "2024-02-29", "1900-02-29"]
DATE_EDGES += ["2000-02-29", "2100-02-29", "2024-13-01", "2024-00-10", "2024-01-00", "2024-01-32"]
DATE_EDGES += [
    "2024-04-31",
    "2024-1-01",
    "2024/01/01",
    "２０２４-01-01",
    "20240101",
    "2024-01-011",
    "2024-W01-1",
]
DATE_EDGES += ["2024-01-1 ", "2024-0a-01", "+024-01-01", "2024-01-٣1", "", "2024-02-28", "0004-02-29"]
EXTRA_NAMES = ["S-O-U-R-C-E", "A-U-T-H-O-R", "X", "Z", "A", "T-E-X-T-X", "F-N-X", "D-A-T-E-S", "B-Y"]
TOPICS = ["news.raw", "t", "a-b_c.d", 'q"uote', "back\\slash", "ctl\x01\x1f", "é東🙂", " ", "x" * 249]


@dataclass
class Gen:
    """Builds inputs from a seeded random source."""

    rng: random.Random
    kinds: Counter[str] = field(default_factory=Counter)
    edgy: bool = False
    """This payload draws its values from the edge cases, else mostly from valid ones."""

    def pick(self, items: list[str]) -> str:
        return items[self.rng.randrange(len(items))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def prose(self, max_parts: int = 12) -> str:
        parts = []
        for _ in range(self.rng.randint(1, max_parts)):
            r = self.rng.random()
            if r < 0.55:
                parts.append(self.pick(WORDS))
            elif r < 0.65:
                parts.append(self.pick(CONTROLS))
            elif r < 0.85:
                parts.append(self.pick(WIDE))
            elif r < 0.92:
                parts.append(self.pick(SUFFIXED if self.edgy and self.chance(0.1) else NEAR))
            elif r < 0.97:
                parts.append(self.pick(SPACES + NOT_SPACES))
            else:
                parts.append(chr(self.rng.randrange(0x20, 0x110000)))
        joiner = self.pick([" ", " ", "", "  ", "-", "\n"])
        text = joiner.join(parts)
        return "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)

    def title(self) -> str:
        r = self.rng.random()
        if r < 0.6 or not self.edgy:
            return self.pick(WORDS) + " " + self.prose(6)
        if r < 0.75:
            return self.pick(WIDE + NOT_SPACES + CONTROLS) + self.prose(3)
        if r < 0.85:
            return "".join(self.pick(WIDE + NOT_SPACES) for _ in range(self.rng.randint(1, 4)))
        return self.prose(6)

    def fn(self) -> str:
        r = self.rng.random()
        if r < 0.6 or not self.edgy:
            return str(self.rng.randrange(10 ** self.rng.randint(1, 18)))
        if r < 0.85:
            return self.pick(FN_EDGES)
        return "0" * self.rng.randint(0, 20) + str(self.rng.randrange(10**6))

    def date(self) -> str:
        r = self.rng.random()
        if r < 0.6 or (r < 0.95 and not self.edgy):
            day = dt.date(1, 1, 1) + dt.timedelta(days=self.rng.randrange(3_652_059))
            return day.isoformat()
        if r < 0.9:
            return self.pick(DATE_EDGES)
        y, m, d = self.rng.randrange(10000), self.rng.randrange(14), self.rng.randrange(33)
        return f"{y:04d}-{m:02d}-{d:02d}"

    def pad(self, before_end: bool = False) -> str:
        r = self.rng.random()
        if r < 0.5:
            return " "
        if r < 0.6:
            # Nothing: an END marker right after a letter or digit is glued, which is for the edgy.
            return "" if self.edgy or not before_end else "\n"
        return "".join(self.pick(SPACES) for _ in range(self.rng.randint(1, 3)))

    def fields(self, first: bool) -> list[tuple[str, str]]:
        fields = [("F-N", self.fn()), ("D-A-T-E", self.date()), ("T-I-T-L-E", self.title())]
        short = self.pick([*WIDE, "", " "]) if self.edgy else self.pick(WIDE)
        fields.append(("T-E-X-T", self.prose(40) if self.chance(0.9) else short))
        n_extra = self.rng.choice([0, 0, 0, 1, 2, 3]) if self.chance(0.98) else self.rng.randint(58, 64)
        for k in range(n_extra):
            if n_extra > 10:
                name = "-".join(f"{k:03d}".translate(str.maketrans("0123456789", "ABCDEFGHIJ")))
            else:
                name = self.pick(EXTRA_NAMES)
            fields.append((name, self.prose(4) if self.chance(0.8) else ""))
        if self.edgy and self.chance(0.1):
            fields.append(self.rng.choice(fields))  # a duplicate
        if self.edgy and self.chance(0.1):
            fields.pop(self.rng.randrange(len(fields)))  # a missing field
        if self.chance(0.5):
            rest = fields[1:]
            self.rng.shuffle(rest)
            fields = [fields[0], *rest]
        if first and self.chance(0.2):
            self.rng.shuffle(fields)
        return fields

    def payload(self) -> str:
        r = self.rng.random()
        n = 1 if r < 0.7 else self.rng.randint(2, 10) if r < 0.99 else self.rng.randint(50, 200)
        self.edgy = self.chance(0.35)
        out = []
        for i in range(n):
            parts = []
            for name, value in self.fields(i == 0):
                parts.append(f"{name}-S-T-A-R-T.{self.pad()}{value}{self.pad(before_end=True)}{name}-E-N-D.")
            out.append(self.pad().join(parts))
        body = self.pad().join(out)
        lead = self.pick(["", " ", "\n", "\u3000", BOM, "x "]) if self.chance(0.3) else ""
        tail = self.pick(["", "\n", " ", "\x85", " x", "F-N-E-N-D.", BOM]) if self.chance(0.3) else ""
        if not self.edgy:
            lead, tail = lead.strip(BOM + "x"), tail.strip(BOM + "xF-N-E-D.")
        self.kinds[f"{n if n < 11 else '50+'} records"] += 1
        return lead + body + tail

    def mutate(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(len(buf) + 1)
            op = self.rng.randrange(5)
            if op == 0:
                buf[at:at] = self.rng.randbytes(self.rng.randint(1, 3))
            elif op == 1:
                del buf[at : at + self.rng.randint(1, 12)]
            elif op == 2:
                buf[at:at] = self.pick(NEAR + SUFFIXED + SPACES + WIDE + CONTROLS).encode()
            elif op == 3 and buf:
                buf[min(at, len(buf) - 1)] ^= 1 << self.rng.randrange(8)
            else:
                buf[at:at] = buf[at : at + self.rng.randint(1, 30)]
        return bytes(buf)

    def source(self) -> Source:
        if self.chance(0.7):
            return Source("news.raw", self.rng.randrange(12), self.rng.randrange(10**7), 1_714_564_800_000)
        origin = None
        if self.chance(0.2):
            index = self.pick(["0", "1", "9999999999", str(self.rng.randrange(100))])
            origin = Origin(
                f"{self.pick(TOPICS)}:{self.rng.randrange(9)}:{self.rng.randrange(10**6)}", int(index)
            )
        big = [0, 1, 2**31 - 1, 2**63 - 1, 2**63, 2**64 - 1]
        return Source(
            self.pick(TOPICS),
            self.rng.choice(big[:3]) if self.chance(0.5) else self.rng.randrange(100),
            self.rng.choice(big) if self.chance(0.3) else self.rng.randrange(10**9),
            self.rng.choice([None, -1, 0, 253_402_300_799_999, 253_402_300_800_000, 2**63 - 1]),
            None,
            origin,
        )

    def traceparent(self) -> str | None:
        r = self.rng.random()
        if r < 0.8:
            return None
        if r < 0.9:
            trace, parent = self.rng.getrandbits(128), self.rng.getrandbits(64)
            return f"00-{trace:032x}-{parent:016x}-0{self.rng.randrange(2)}"
        return self.pick([TRACEPARENT.upper(), "ff" + TRACEPARENT[2:], TRACEPARENT[:-1], "x", ""])

    def limits(self, text: str) -> Limits:
        if self.chance(0.8):
            return Limits()
        # Around the lengths this payload has: at, under and over them.
        clean = _scan_clean_py(text, 10_000) or []
        titles = [len(r.values.get("title", "")) for r in clean] or [5]
        texts = [len(r.values.get("text", "")) for r in clean] or [5]
        delta = self.rng.choice([-1, 0, 0, 1])
        return Limits(
            max_payload_bytes=self.rng.choice([1_000_000, len(text.encode()) + delta + 3]),
            max_records_per_payload=self.rng.choice([10_000, max(1, len(clean) + delta), 1]),
            max_title_chars=max(1, self.rng.choice(titles) + delta),
            max_text_chars=max(1, self.rng.choice(texts) + delta),
        )

    def case(self) -> tuple[bytes, Source, Limits, str | None]:
        text = self.payload()
        payload = text.encode("utf-8")
        if self.chance(0.1):
            payload = b"\xef\xbb\xbf" + payload
        if self.edgy and self.chance(0.3):
            payload = self.mutate(payload)
            self.kinds["mutated"] += 1
        return payload, self.source(), self.limits(text), self.traceparent()


def at_the_size_limit(payload: bytes, source: Source, limits: Limits, rng: random.Random) -> Limits:
    """Limits whose article size limit is exactly, one under or one over the largest event's size."""
    reference = process_payload_reference(payload, source, limits, now=NOW, version=VERSION)
    if not reference or any(o.error is not None for o in reference):
        return limits
    largest = max(len(o.value) for o in reference)
    return Limits(
        max_payload_bytes=limits.max_payload_bytes,
        max_records_per_payload=limits.max_records_per_payload,
        max_title_chars=limits.max_title_chars,
        max_text_chars=limits.max_text_chars,
        max_event_bytes=largest + ARTICLE_RECORD_RESERVE + rng.choice([-1, 0, 1]),
    )


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Figures:
    inputs: int = 0
    seconds: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    failure: str | None = None

    def print(self) -> None:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        print(f"inputs            {self.inputs}")
        print(f"seconds           {self.seconds:.1f}")
        print(f"inputs/s          {rate:.0f}")
        print(f"failures          {0 if self.failure is None else 1}")
        print(f"compiled path     took {self.stats['taken']}, declined {self.stats['declined']}")
        print(f"records taken     {self.stats['records taken']}")
        print(
            f"reference         {self.stats['articles']} articles, {self.stats['dead letters']} dead letters"
        )
        print(f"payload kinds     {', '.join(f'{k}={n}' for k, n in sorted(self.kinds.items()))}")
        if self.failure is not None:
            print(self.failure)


def run(inputs: int, seconds: float | None, seed: int) -> Figures:
    """Fuzz until ``inputs`` inputs were checked (or ``seconds`` passed, or one failed)."""
    rng = random.Random(seed)
    gen = Gen(rng)
    figures = Figures(kinds=gen.kinds)
    started = time.monotonic()
    deadline = None if seconds is None else started + seconds
    while figures.inputs < inputs:
        payload, source, limits, traceparent = gen.case()
        if rng.random() < 0.1:
            limits = at_the_size_limit(payload, source, limits, rng)
        try:
            check(payload, source, limits, traceparent, figures.stats)
        except Exception as exc:
            figures.failure = (
                f"\nFAILURE (seed {seed}, input {figures.inputs}): {type(exc).__name__}: {exc}\n"
                f"  payload     = {payload!r}"[:4000]
                + f"\n  source      = {source!r}\n  limits      = {limits!r}\n  traceparent = {traceparent!r}"
            )
            break
        figures.inputs += 1
        if figures.inputs % 100_000 == 0:
            took = time.monotonic() - started
            print(f"  {figures.inputs} inputs in {took:.0f} s, {figures.stats['taken']} taken", flush=True)
        if deadline is not None and figures.inputs % 256 == 0 and time.monotonic() > deadline:
            break
    figures.seconds = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to check (default 100000)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long, if sooner")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (printed at the start)")
    args = parser.parse_args(argv)
    if not events.COMPILED:
        print("fuzz_compiled: the compiled record path is not built (no C compiler?): nothing to compare")
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fuzz_compiled: inputs={args.inputs} seed={seed}", flush=True)
    figures = run(args.inputs, args.seconds, seed)
    figures.print()
    return 1 if figures.failure else 0


if __name__ == "__main__":
    sys.exit(main())
