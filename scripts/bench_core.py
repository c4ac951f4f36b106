"""Benchmark the functional core (``process_payload``) on ~5 KB marker records. Not a test.

Measures, in one run and on the same records:

* ``full``: ``process_payload``, one record per payload, as the service does for each Kafka message:
  the compiled record path (scan, checks, SHA-256 and the event's JSON in C) where it was built;
* ``full-ref``: the same payloads through ``process_payload_reference``, the Python path (decode,
  scan, validate with pydantic ``ArticleData``, build and serialize with orjson): the compiled path
  forced off, in the same run;
* ``multi`` and ``multi-ref``: the same two with several records per payload;
* ``baseline``: a naive parser, four non-greedy regexes (FN, DATE, TITLE, TEXT) and a pydantic
  model validate, with no envelope, id, hash or serialization;
* ``floor``: only the library calls every record needs, back to back in one flat function: decode,
  ``scan_clean``, SHA-256 of the joined fields, ``date.fromisoformat``, the pydantic validate,
  orjson of a constant envelope, the Outcome tuple. No checks, no error handling: not a parser,
  the ceiling any Python implementation built on these libraries can reach.

Records are the seed fixture and generated variants of the same size with distinct FNs, ASCII like
the seed unless ``--unicode-share`` gives a share with non-ASCII typography (curly quotes, dashes).
Each variant is timed ``--repeat`` times, with the garbage collector on as in the service; the best
and median of the repetitions are reported. ``--components`` adds the cost of the parts every
record must pay whatever the parser (decode, SHA-256, pydantic, orjson, the Outcome), and of the
compiled record path's C call alone, measured on the seed record. Usage::

    python scripts/bench_core.py [--records N] [--repeat R] [--per-payload K] [--unicode-share F]
                                 [--components] [--clock wall|cpu] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import orjson
import pydantic
from pydantic import BaseModel, Field

from schemas.events import ArticleData
from service.core import events
from service.core.events import Outcome, Source, process_payload, process_payload_reference
from service.core.limits import Limits
from service.core.message import new_outcome
from service.core.parser import SPEEDUPS, scan_clean
from service.core.validation import content_digest

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "seed_2433.txt"
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
VERSION = "bench"
TOPIC = "bench.articles"

_FIELD = re.compile(r"([A-Z](?:-[A-Z])*)-S-T-A-R-T\.(.*?)\1-E-N-D\.", re.S)
# Typographic characters that make a record non-ASCII, as copy from a real newsroom often is.
_TYPOGRAPHY = {"'": "\u2019", " - ": " \u2014 ", '"': "\u201c"}


# --- the records ---------------------------------------------------------------------------------


def _seed_fields() -> dict[str, str]:
    text = SEED.read_text(encoding="utf-8")
    return {m.group(1): m.group(2).strip() for m in _FIELD.finditer(text)}


def _record(fn: int, date: str, title: str, body: str) -> str:
    return (
        f"F-N-S-T-A-R-T. {fn} F-N-E-N-D.  D-A-T-E-S-T-A-R-T. {date} D-A-T-E-E-N-D.  "
        f"T-I-T-L-E-S-T-A-R-T. {title} T-I-T-L-E-E-N-D.  T-E-X-T-S-T-A-R-T. {body} T-E-X-T-E-N-D.\n"
    )


def make_records(count: int, unicode_share: float, rng: random.Random) -> list[str]:
    """The seed record first, then variants of the same size: distinct FN, date, sentence order."""
    seed = SEED.read_text(encoding="utf-8")
    fields = _seed_fields()
    sentences = re.split(r"(?<=[.!?]) +", fields["T-E-X-T"])
    records = [seed]
    for i in range(1, count):
        shuffled = sentences[:]
        rng.shuffle(shuffled)
        body = " ".join(shuffled)
        title = fields["T-I-T-L-E"]
        if rng.random() < unicode_share:
            for ascii_char, typographic in _TYPOGRAPHY.items():
                body = body.replace(ascii_char, typographic)
            title = title.replace(" but ", " \u2014 ")
        date = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        records.append(_record(100_000 + i, date, title, body))
    return records


# --- the naive baseline --------------------------------------------------------------------------

_NAIVE = {
    name: re.compile(rf"{marker}-S-T-A-R-T\.(.*?){marker}-E-N-D\.", re.S)
    for name, marker in (("fn", "F-N"), ("date", "D-A-T-E"), ("title", "T-I-T-L-E"), ("text", "T-E-X-T"))
}


class NaiveArticle(BaseModel):
    """What a naive parser would validate: the four fields, nothing else."""

    fn: Annotated[int, Field(ge=0)]
    date: dt.date
    title: Annotated[str, Field(min_length=1)]
    text: Annotated[str, Field(min_length=1)]


def naive_parse(value: bytes) -> NaiveArticle | None:
    """Four regex searches and a pydantic validate; no envelope, id, hash or serialization."""
    text = value.decode("utf-8")
    found: dict[str, str] = {}
    for name, pattern in _NAIVE.items():
        m = pattern.search(text)
        if m is None:
            return None
        found[name] = m.group(1).strip()
    return NaiveArticle.model_validate(found)


# --- timing --------------------------------------------------------------------------------------


def pin_to_one_core() -> str:
    """Pin this process to one CPU so that the figures are for one core; say what was done."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (os.sched_setaffinity is not available on this platform)"
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1]  # the last allowed CPU: CPU 0 tends to take more interrupts
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return f"not pinned ({exc.strerror})"
    return f"pinned to CPU {cpu} (of {len(cpus)} allowed)"


CLOCK = time.perf_counter
"""Wall time; ``--clock cpu`` makes it this process's CPU time (steadier on a shared machine)."""


def time_runs(run: Callable[[], object], repeat: int) -> list[float]:
    """Time of ``repeat`` calls of ``run`` by ``CLOCK``, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeat):
        gc.collect()
        start = CLOCK()
        run()
        times.append(CLOCK() - start)
    return times


def summarize(name: str, what: str, times: list[float], records: int, size: int) -> dict[str, Any]:
    best, median = min(times), statistics.median(times)
    return {
        "name": name,
        "what": what,
        "records": records,
        "bytes": size,
        "repeat": len(times),
        "best_s": best,
        "median_s": median,
        "records_per_s_best": records / best,
        "records_per_s_median": records / median,
        "mb_per_s_best": size / best / 1e6,
        "mb_per_s_median": size / median / 1e6,
        "us_per_record_best": best / records * 1e6,
        "us_per_record_median": median / records * 1e6,
    }


def run_full(
    payloads: Sequence[bytes],
    sources: Sequence[Source],
    expected: int,
    process: Callable[..., list[Outcome]] = process_payload,
) -> Callable[[], None]:
    limits = Limits()

    def run() -> None:
        articles = 0
        for value, source in zip(payloads, sources, strict=True):
            for outcome in process(value, source, limits, now=NOW, version=VERSION):
                articles += outcome.error is None
        if articles != expected:
            raise SystemExit(f"bench: expected {expected} article events, got {articles}")

    return run


def run_naive(payloads: Sequence[bytes]) -> Callable[[], None]:
    def run() -> None:
        for value in payloads:
            if naive_parse(value) is None:
                raise SystemExit("bench: the naive baseline failed to parse a record")

    return run


def floor_record(value: bytes) -> Outcome:
    """The calls one clean record needs and nothing else (see ``floor`` in the module docstring)."""
    text = value.decode("utf-8")
    values = scan_clean(text, 1)[0].values  # type: ignore[index]
    fn, date, title, body = values["fn"], values["date"], values["title"], values["text"]
    sha256 = hashlib.sha256("\x1f".join((fn, date, title, body)).encode()).hexdigest()
    data = {
        "fn": int(fn),
        "date": _from_iso(date),
        "title": title,
        "text": body,
        "extra": {},
        "sha256": sha256,
    }
    article = _validate(data)
    event = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "t:0:0:0",
            "source": "urn:marker-ingest:topic:t",
            "type": "io.markeringest.article.ingested.v1",
            "subject": fn,
            "time": "2024-05-01T12:00:00.000Z",
            "datacontenttype": "application/json",
            "dataschema": "urn:marker-ingest:schema:article-ingested:v1",
            "kafkatopic": "t",
            "kafkapartition": 0,
            "kafkaoffset": 0,
            "recordindex": 0,
            "data": {
                "fn": article.fn,
                "date": date,
                "title": title,
                "text": body,
                "extra": {},
                "sha256": sha256,
            },
        }
    )
    return new_outcome(Outcome, (0, "t:0:0:0", b"k", event, None, article.fn))


_from_iso = dt.date.fromisoformat
_validate = ArticleData.__pydantic_validator__.validate_python


def run_floor(payloads: Sequence[bytes]) -> Callable[[], None]:
    def run() -> None:
        for value in payloads:
            floor_record(value)

    return run


# --- the fixed parts -----------------------------------------------------------------------------

_COMPILED_PART = "the compiled record path alone (C call)"


def time_components(repeat: int) -> list[dict[str, Any]]:
    """Per-record cost of what every record pays whatever the parser, on the seed record.

    Each part is the same call the core makes, on the core's own output for the seed: what is left
    of the full path's time after these is the parsing, the checks and the glue.
    """
    value = SEED.read_bytes()
    outcome = process_payload(
        value, Source(TOPIC, 0, 0, 1_714_564_800_000), Limits(), now=NOW, version=VERSION
    )[0]
    event = orjson.loads(outcome.value)
    data = event["data"]
    date = dt.date.fromisoformat(data["date"])
    fields = {**data, "date": date}
    validate = ArticleData.__pydantic_validator__.validate_python
    text = value.decode("utf-8")
    parts: list[tuple[str, Callable[[], object]]] = [
        ("decode the payload (UTF-8)", lambda: value.decode("utf-8")),
        (
            "scan the record (scan_clean, C scanner)" if SPEEDUPS else "scan the record (scan_clean, Python)",
            lambda: scan_clean(text, 1),
        ),
        (
            "SHA-256 of the record (content_digest)",
            lambda: content_digest(data["fn"], data["date"], data["title"], data["text"], data["extra"]),
        ),
        ("validate ArticleData (pydantic)", lambda: validate(fields)),
        ("serialize the event (orjson)", lambda: orjson.dumps(event)),
        (
            "build the Outcome",
            lambda: new_outcome(Outcome, (0, event["id"], b"2433", outcome.value, None, data["fn"])),
        ),
    ]
    compiled = events._compiled
    if compiled is not None:
        uri = f"urn:marker-ingest:topic:{TOPIC}"
        args: tuple[object, ...] = (Outcome, value, f"{TOPIC}:0:0:", 0, uri, event["time"], TOPIC, 0, 0, None)
        args += (10_000, 1_000, 500_000, 999_744)
        parts.append((_COMPILED_PART, lambda: compiled(*args)))
    n = 2000
    results = []
    for name, call in parts:

        def run(call: Callable[[], object] = call) -> None:
            for _ in range(n):
                call()

        best = min(time_runs(run, repeat))
        results.append({"part": name, "us_per_record": best / n * 1e6})
    return results


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=5000, help="records per variant (default 5000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions per variant (default 7)")
    parser.add_argument(
        "--per-payload", type=int, default=10, help="records per payload in the multi variant (default 10)"
    )
    parser.add_argument(
        "--unicode-share",
        type=float,
        default=0.0,
        help="share of generated records with non-ASCII typography (default 0: ASCII, like the seed)",
    )
    parser.add_argument(
        "--components",
        action="store_true",
        help="also time the fixed parts of a record (decode, SHA-256, pydantic, orjson, Outcome)",
    )
    parser.add_argument("--seed", type=int, default=2433, help="random seed for the variants")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time by the wall clock (default) or by this process's CPU time, steadier when other "
        "work shares the machine",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args(argv)
    if args.records < 1 or args.repeat < 1 or args.per_payload < 1:
        parser.error("--records, --repeat and --per-payload must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    pinning = "not pinned (--no-pin)" if args.no_pin else pin_to_one_core()
    records = make_records(args.records, args.unicode_share, random.Random(args.seed))
    singles = [r.encode() for r in records]
    k = args.per_payload
    multis = [b"".join(singles[i : i + k]) for i in range(0, len(singles), k)]
    size = sum(map(len, singles))
    # One Source per message, built outside the timed loop: the consumer builds it, not the core.
    single_sources = [Source(TOPIC, 0, i, 1_714_564_800_000 + i, None) for i in range(len(singles))]
    multi_sources = [Source(TOPIC, 1, i, 1_714_564_800_000 + i, None) for i in range(len(multis))]

    n = len(singles)
    path = "compiled" if events.COMPILED else "Python"
    results = [
        summarize(
            "full",
            f"process_payload ({path}), 1 record/payload",
            time_runs(run_full(singles, single_sources, n), args.repeat),
            n,
            size,
        ),
        summarize(
            "full-ref",
            "Python path (reference), 1 record/payload",
            time_runs(run_full(singles, single_sources, n, process_payload_reference), args.repeat),
            n,
            size,
        ),
        summarize(
            "multi",
            f"process_payload ({path}), {k} records/payload",
            time_runs(run_full(multis, multi_sources, n), args.repeat),
            n,
            size,
        ),
        summarize(
            "multi-ref",
            f"Python path (reference), {k} records/payload",
            time_runs(run_full(multis, multi_sources, n, process_payload_reference), args.repeat),
            n,
            size,
        ),
        summarize(
            "baseline",
            "naive 4 regexes + pydantic",
            time_runs(run_naive(singles), args.repeat),
            n,
            size,
        ),
        summarize(
            "floor",
            "the library calls alone, no checks",
            time_runs(run_floor(singles), args.repeat),
            n,
            size,
        ),
    ]
    by_name = {r["name"]: r for r in results}
    ratios = {
        f"{name}/{other}": {
            "best": by_name[name]["records_per_s_best"] / by_name[other]["records_per_s_best"],
            "median": by_name[name]["records_per_s_median"] / by_name[other]["records_per_s_median"],
        }
        for name, other in [
            ("full", "full-ref"),
            ("multi", "multi-ref"),
            *((name, other) for other in ("baseline", "floor") for name in ("full", "multi")),
        ]
    }
    info = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pydantic": pydantic.VERSION,
        "orjson": orjson.__version__,
        "scanner": "C (service.core._speedups)" if SPEEDUPS else "Python (service.core._speedups not built)",
        "record_path": "compiled (service.core._speedups.articles)" if events.COMPILED else "Python",
        "machine": platform.machine(),
        "cpu_pinning": pinning,
        "records": n,
        "mean_record_bytes": size / n,
        "non_ascii_records": sum(not r.isascii() for r in records),
        "per_payload": k,
        "repeat": args.repeat,
        "clock": args.clock,
    }

    components = time_components(args.repeat) if args.components else None

    if args.json:
        doc: dict[str, Any] = {"info": info, "results": results, "ratios": ratios}
        if components is not None:
            doc["components"] = components
        print(json.dumps(doc, indent=2))
        return 0

    print(f"marker-ingest core benchmark: Python {info['python']}, pydantic {info['pydantic']}, ", end="")
    print(f"orjson {info['orjson']}, {info['machine']}")
    print(f"CPU: {pinning}; scanner: {info['scanner']}; record path: {info['record_path']}")
    print(f"clock: {args.clock} time")
    print(
        f"records: {n} ({info['non_ascii_records']} non-ASCII), mean {info['mean_record_bytes']:.0f} bytes, "
        f"{size / 1e6:.1f} MB per pass; {args.repeat} timed passes after a warm-up"
    )
    print()
    header = f"{'variant':<10} {'what':<44} {'records/s best':>15} {'median':>10} {'MB/s best':>10} "
    header += f"{'median':>8} {'us/rec best':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['name']:<10} {r['what']:<44} {r['records_per_s_best']:>15,.0f} "
            f"{r['records_per_s_median']:>10,.0f} {r['mb_per_s_best']:>10.1f} {r['mb_per_s_median']:>8.1f} "
            f"{r['us_per_record_best']:>12.2f}"
        )
    print()
    for name, ratio in ratios.items():
        print(f"ratio {name} (records/s): best {ratio['best']:.2f}x, median {ratio['median']:.2f}x")
    if components is not None:
        print()
        print("fixed parts of one record (seed record, best of the repetitions):")
        fixed_parts = [part for part in components if part["part"] != _COMPILED_PART]
        for part in fixed_parts:
            print(f"  {part['part']:<40} {part['us_per_record']:7.2f} us")
        fixed = sum(part["us_per_record"] for part in fixed_parts)
        ceiling = f"at most {1e6 / fixed:,.0f} records/s with no checks and no glue"
        print(f"  {'sum':<40} {fixed:7.2f} us  ({ceiling})")
        for part in components:
            if part["part"] == _COMPILED_PART:
                print(f"  {part['part']:<40} {part['us_per_record']:7.2f} us  (checks and glue included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
