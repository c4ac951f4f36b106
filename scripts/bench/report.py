"""What a sitting measured, as medians, ratios, the goals of issue 18, tables and JSON. No I/O.

Every figure of a table is the median of the rounds (``--repeat``); a ratio between two
implementations is the median of the ratios within each round (the passthrough of the same round,
at-least-once of the same round), so a round disturbed by other work on the machine moves both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.profile import IDLE
from bench.run import Sitting
from bench.runner import RunResult
from bench.stats import INF, median, median_ratio

DISTURBED_PCT = 20
"""Other work on the machine above this share of a CPU marks a measurement as disturbed."""
ALO, EOS, PASSTHROUGH, FASTSTREAM = "marker-ingest", "marker-ingest-eos", "passthrough", "faststream"


def num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return "never" if x == INF else f"{x:,.1f} ms"


def case_label(case: tuple[str, int, int]) -> str:
    dataset, partitions, instances = case
    share = {"dl0": "no dead letters", "dl10": "10% dead letters"}.get(dataset, dataset)
    plural = "s" if partitions > 1 else ""
    inst = f", {instances} instances in one group" if instances > 1 else ""
    return f"{share}, {partitions} input partition{plural}{inst}"


@dataclass
class Row:
    """One implementation in one case: the medians of its rounds."""

    impl: str
    runs: list[RunResult]
    vs_passthrough: float | None = None
    figures: dict[str, float | None] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float | None:
        return self.figures.get(key)


MEDIANS = (
    "msgs_per_s",
    "mb_per_s",
    "drain_s",
    "cpu_pct",
    "cpu_us_per_msg",
    "broker_cpu_pct",
    "others_cpu_pct",
)


def paired(
    runs: Iterable[RunResult], a: str, b: str, case: tuple[str, int, int]
) -> list[tuple[float | None, float | None]]:
    """(a's msgs/s, b's msgs/s) of each round in which both ran ``case`` without a problem."""
    by: dict[tuple[str, int], RunResult] = {
        (r.impl, r.repetition): r for r in runs if r.case == case and r.ok
    }
    rounds = sorted({rep for _, rep in by})
    return [
        (by[a, rep].msgs_per_s, by[b, rep].msgs_per_s) for rep in rounds if (a, rep) in by and (b, rep) in by
    ]


def table(runs: list[RunResult]) -> dict[tuple[str, int, int], list[Row]]:
    """Per case, in run order, a row per implementation with its medians."""
    out: dict[tuple[str, int, int], dict[str, Row]] = {}
    for r in runs:
        out.setdefault(r.case, {}).setdefault(r.impl, Row(r.impl, [])).runs.append(r)
    for case, rows in out.items():
        for row in rows.values():
            good = [r for r in row.runs if r.ok] or row.runs
            row.figures = {key: median(getattr(r, key) for r in good) for key in MEDIANS}
            row.figures["peak_rss_mb"] = max((r.peak_rss_mb for r in row.runs if r.peak_rss_mb), default=None)
            row.figures["log_mb"] = median(r.log_bytes / 1e6 for r in good if r.log_bytes is not None)
            row.vs_passthrough = median_ratio(paired(runs, row.impl, PASSTHROUGH, case))
    return {case: list(rows.values()) for case, rows in out.items()}


def latency_rows(runs: list[RunResult]) -> list[tuple[str, list[RunResult], dict[str, float | None]]]:
    """Per timed implementation (run order): its rounds and the medians of their percentiles."""
    grouped: dict[str, list[RunResult]] = {}
    for r in runs:
        grouped.setdefault(r.impl, []).append(r)
    out = []
    for impl, rs in grouped.items():
        timed = [r for r in rs if not r.latency.get("skipped")]

        def med(get: Callable[[RunResult], float | None], among: list[RunResult] = timed) -> float | None:
            return median(get(r) for r in among)

        figures = {
            "rate": rs[0].latency.get("rate"),
            "achieved_rate": med(lambda r: r.latency.get("achieved_rate")),
            **{
                f"e2e_{p}": med(lambda r, p=p: r.latency.get("e2e_ms", {}).get(p))
                for p in ("p50", "p90", "p99", "max")
            },
            "out_ts_p50": med(lambda r: r.latency.get("out_ts_ms", {}).get("p50")),
            "out_ts_p99": med(lambda r: r.latency.get("out_ts_ms", {}).get("p99")),
            "input_ack_p99": med(lambda r: r.latency.get("input_ack_ms", {}).get("p99")),
            "missing": med(lambda r: r.latency.get("missing")),
            "cpu_pct": med(lambda r: r.cpu_pct),
            "cpu_us_per_msg": med(lambda r: r.cpu_us_per_msg),
            "others_cpu_pct": med(lambda r: r.others_cpu_pct),
            "peak_rss_mb": max((r.peak_rss_mb for r in timed if r.peak_rss_mb), default=None),
        }
        out.append((impl, rs, figures))
    return out


# ----------------------------------------------------------------- the goals of issue 18


@dataclass(frozen=True)
class Goal:
    """A target of issue 18: ``what`` compared (``at_most`` or not) with ``limit``."""

    key: str
    what: str
    limit: float
    at_most: bool
    unit: str = ""
    rate: float | None = None
    """For a latency goal: the input rate it is stated at (msgs/s)."""

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


GOALS = (
    Goal("cpu", "CPU per message, at-least-once", 75, True, " µs"),
    Goal("throughput", "at-least-once msgs/s over the passthrough's (same round)", 0.8, False, "x"),
    Goal("exactly_once", "exactly-once msgs/s over at-least-once's (same round)", 0.8, False, "x"),
    Goal("latency", "p99 end-to-end, at-least-once, at 4,000 msgs/s", 100, True, " ms", rate=4000),
    Goal("latency_eos", "p99 end-to-end, exactly-once, at 2,000 msgs/s", 250, True, " ms", rate=2000),
    Goal("memory", "peak RSS of every marker-ingest run", 200, True, " MB"),
    Goal("faststream", "marker-ingest msgs/s over FastStream's (same round)", 15, False, "x"),
)


def goal_values(goal: Goal, sitting: Sitting) -> list[tuple[str, float | None, str]]:
    """(scope, value, note) of a goal in each case where it was measured."""
    cases = table(sitting.runs)
    runs = sitting.runs

    def each(
        value: Callable[[tuple[str, int, int], dict[str, Row]], float | None], *needs: str
    ) -> list[tuple[str, float | None, str]]:
        out = []
        for case, rows in cases.items():
            by = {row.impl: row for row in rows}
            if all(n in by for n in needs):
                out.append((case_label(case), value(case, by), ""))
        return out

    if goal.key == "cpu":
        return each(lambda c, by: by[ALO]["cpu_us_per_msg"], ALO)
    if goal.key == "throughput":
        return each(lambda c, by: by[ALO].vs_passthrough, ALO, PASSTHROUGH)
    if goal.key == "exactly_once":
        return each(lambda c, by: median_ratio(paired(runs, EOS, ALO, c)), ALO, EOS)
    if goal.key == "faststream":
        return each(lambda c, by: median_ratio(paired(runs, ALO, FASTSTREAM, c)), ALO, FASTSTREAM)
    if goal.key == "memory":
        rss = [
            r.peak_rss_mb
            for r in [*runs, *sitting.latency_runs, *sitting.profiles]
            if r.impl.startswith("marker-ingest") and r.peak_rss_mb
        ]
        return [("every run", max(rss), "")] if rss else []
    impl = ALO if goal.key == "latency" else EOS
    out = []
    for name, rs, figures in latency_rows(sitting.latency_runs):
        if name != impl:
            continue
        rate = figures["rate"]
        low = rate is not None and goal.rate is not None and rate < goal.rate
        note = rs[0].problem if rs[0].latency.get("skipped") else "below the goal's rate" if low else ""
        out.append((f"at {num(rate)} msgs/s", figures["e2e_p99"], note))
    return out


def verdict(goal: Goal, values: list[tuple[str, float | None, str]]) -> str:
    """PASS when every value meets the goal; MISS when one does not; ---- when it was not measured
    (or a latency not at the goal's rate)."""
    known = [(v, note) for _, v, note in values if v is not None]
    if not known:
        return "----"
    if not all(goal.met(v) for v, _ in known):
        return "MISS"
    return "PASS" if all(not note for _, note in known) and len(known) == len(values) else "----"


def goals(sitting: Sitting) -> list[dict[str, Any]]:
    out = []
    for goal in GOALS:
        values = goal_values(goal, sitting)
        out.append(
            {
                "key": goal.key,
                "what": goal.what,
                "limit": goal.limit,
                "at_most": goal.at_most,
                "values": [{"scope": s, "value": v, "note": n} for s, v, n in values],
                "verdict": verdict(goal, values),
            }
        )
    return out


def _shown(value: float | None, unit: str, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value == INF:
        return "never (backlog)"
    return f"{value:,.{digits}f}x" if unit == "x" else f"{value:,.1f}{unit}"


# ----------------------------------------------------------------- text

DRAIN_COLUMNS = (
    ("implementation", 46), ("msgs/s", 8), ("MB/s", 6), ("vs pass", 7), ("cpu %", 6), ("us/msg", 7),
    ("broker %", 8), ("other %", 7), ("RSS MB", 7), ("log MB", 7),
)  # fmt: skip
PROFILE_COLUMNS = (("stage", 36), ("samples", 8), ("%", 6), ("us/msg", 7), ("cpu us/msg", 10))
LATENCY_COLUMNS = (
    ("implementation", 46), ("rate", 7), ("p50", 9), ("p90", 9), ("p99", 9), ("max", 9), ("out-ts p50", 10),
    ("p99", 9), ("in-ack p99", 10), ("missing", 7), ("cpu %", 6), ("other %", 7), ("RSS MB", 7),
)  # fmt: skip


def columns(spec: Sequence[tuple[str, int]], cells: Sequence[str] | None = None) -> str:
    """One line of a table: the first cell left-aligned, the others right-aligned, each in its
    column's width (the headings when ``cells`` is None)."""
    cells = [name for name, _ in spec] if cells is None else cells
    widths = [width for _, width in spec]
    first = f"{cells[0]:<{widths[0]}}"
    return " ".join([first, *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))])


def _tail(each: str, runs: Iterable[RunResult]) -> str:
    problems = "; ".join(sorted({r.problem for r in runs if r.problem}))
    return (f"  {each}" if each else "") + (f"  !! {problems}" if problems else "")


def render(sitting: Sitting, meta: dict[str, Any]) -> str:
    """The report as text: the drains per case, the latency runs, the profiles, ratios and goals."""
    lines: list[str] = []
    put = lines.append
    put(
        f"marker-ingest service benchmark: Python {meta.get('python')}, {meta.get('cpus')} CPUs; broker "
        f"{meta.get('broker')} (replication {sitting.replication}); aiokafka {meta.get('aiokafka')}, "
        f"faststream {meta.get('faststream')}, confluent-kafka {meta.get('confluent-kafka')}"
    )
    commit = meta.get("service_commit") or "not a git checkout"
    dirty = ", with uncommitted changes" if meta.get("service_dirty") else ""
    load = ", ".join(f"{x:.2f}" for x in meta.get("load_average") or [])
    rounds = meta.get("repeat", 1)
    put(
        f"service: {meta.get('service_path')} ({commit}{dirty}); load average at the end {load}; "
        + (f"medians of {rounds} alternating rounds" if rounds > 1 else "one round")
    )
    labels = {i.name: i.label for i in sitting.impls}
    for impl in sitting.impls:
        if not impl.available:
            put(f"skipped {impl.name}: {impl.why_not}")
    sizes = {ds.name: ds for ds in sitting.datasets}
    for case, rows in table(sitting.runs).items():
        ds = sizes.get(case[0])
        put("")
        size = (
            f"{ds.messages:,} messages ({ds.bytes / 1e6:.1f} MB, mean {ds.bytes / ds.messages:,.0f} B)"
            if ds
            else ""
        )
        put(f"drain of {size}: {case_label(case)}")
        put(columns(DRAIN_COLUMNS) + ("  msgs/s of each round" if rounds > 1 else ""))
        put("-" * len(columns(DRAIN_COLUMNS)))
        for row in rows:
            cells = [labels.get(row.impl, row.impl), num(row["msgs_per_s"]), num(row["mb_per_s"], 1)]
            cells += [_shown(row.vs_passthrough, "x"), num(row["cpu_pct"]), num(row["cpu_us_per_msg"])]
            cells += [num(row[k]) for k in ("broker_cpu_pct", "others_cpu_pct", "peak_rss_mb")]
            cells.append(num(row["log_mb"], 1))
            each = " / ".join(num(r.msgs_per_s) for r in row.runs) if rounds > 1 else ""
            put(columns(DRAIN_COLUMNS, cells) + _tail(each, row.runs))
    if sitting.latency_runs:
        first = sitting.latency_runs[0]
        put("")
        put(
            f"end-to-end latency, paced for {meta.get('latency_seconds', 0):.0f}s per run, "
            f"{case_label(first.case)}; paced and read with {meta.get('instruments')}"
        )
        put(
            "latency = when a separate consumer got the event - the input message's timestamp; out-ts = "
            "the event's own timestamp - the input's; in-ack = the pacer's own acknowledgement"
        )
        put(columns(LATENCY_COLUMNS) + ("  p99 of each round" if rounds > 1 else ""))
        put("-" * len(columns(LATENCY_COLUMNS)))
        for impl, rs, f in latency_rows(sitting.latency_runs):
            cells = [labels.get(impl, impl), num(f["achieved_rate"] or f["rate"])]
            cells += [
                ms(f[k]) for k in ("e2e_p50", "e2e_p90", "e2e_p99", "e2e_max", "out_ts_p50", "out_ts_p99")
            ]
            cells += [ms(f["input_ack_p99"]), num(f["missing"])]
            cells += [num(f[k]) for k in ("cpu_pct", "others_cpu_pct", "peak_rss_mb")]
            timed = [r for r in rs if "e2e_ms" in r.latency]
            each = " / ".join(ms(r.latency["e2e_ms"]["p99"]) for r in timed) if len(timed) > 1 else ""
            put(columns(LATENCY_COLUMNS, cells) + _tail(each, rs))
    for run in sitting.profiles:
        lines += render_profile(run, labels.get(run.impl, run.impl))
    disturbed = [r for r in [*sitting.runs, *sitting.latency_runs] if (r.others_cpu_pct or 0) > DISTURBED_PCT]
    if disturbed:
        worst = max(r.others_cpu_pct or 0 for r in disturbed)
        put("")
        measured = len(sitting.runs) + len(sitting.latency_runs)
        put(
            f"note: {len(disturbed)} of {measured} measurements shared the machine with other work using "
            f"more than {DISTURBED_PCT}% of a CPU (column other %, up to {worst:.0f}%): their figures are low"
        )
    put("")
    for g in goals(sitting):
        unit = next(goal.unit for goal in GOALS if goal.key == g["key"])
        limit = ("<= " if g["at_most"] else ">= ") + _shown(g["limit"], unit)
        shown = (
            "; ".join(
                f"{_shown(v['value'], unit, 3)} ({v['scope']}" + (f", {v['note']})" if v["note"] else ")")
                for v in g["values"]
            )
            or "not measured"
        )
        put(f"{g['verdict']}  {g['what']} {limit}: {shown}")
    return "\n".join(lines)


def render_profile(run: RunResult, label: str) -> list[str]:
    """The per-stage budget of one profiled drain: samples, share, µs per message."""
    p = run.profile
    lines = ["", f"profile of a drain from its first event on ({label}; py-spy at {p.get('rate')} Hz):"]
    if "stage_samples" not in p:
        return [*lines, f"  {p.get('problem', 'no profile')}"]
    lines.append(
        f"  {num(run.msgs_per_s)} msgs/s; {p['samples']:,} samples of the main thread over "
        f"{p['window_s']:.2f}s ({p['other_thread_samples']:,} of other threads left out); {p['file']}"
    )
    lines += ["  " + columns(PROFILE_COLUMNS), "  " + "-" * len(columns(PROFILE_COLUMNS))]
    total = sum(p["stage_samples"].values()) or 1
    shares = p.get("stage_cpu_us_per_msg") or {}
    for stage, n in p["stage_samples"].items():
        cells = [stage, f"{n:,}", f"{100 * n / total:.1f}", f"{p['stage_us_per_msg'][stage]:.1f}"]
        lines.append("  " + columns(PROFILE_COLUMNS, [*cells, num(shares.get(stage), 1)]))
    busy = sum(v for k, v in p["stage_us_per_msg"].items() if k != IDLE)
    lines.append(
        f"  the busy stages' samples come to {busy:.1f} us/msg; the process's CPU time over the same "
        f"window to {num(p.get('cpu_us_per_msg'), 1)} us/msg (split over the busy stages: cpu us/msg)"
    )
    lines.append(f"  {'self %':>8}  function")
    lines += [f"  {pct:>8.1f}  {name}" for name, pct in p["self_pct"][:12]]
    return lines


# ----------------------------------------------------------------- JSON


def document(sitting: Sitting, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything as one JSON-ready document (inf, an event that never arrived, becomes null)."""
    medians = [
        {"case": list(case), "impl": row.impl, "vs_passthrough": row.vs_passthrough, **row.figures}
        for case, rows in table(sitting.runs).items()
        for row in rows
    ]
    doc = {
        "info": meta,
        "replication": sitting.replication,
        "datasets": [
            {
                "name": d.name,
                "topic": d.topic,
                "partitions": d.partitions,
                "messages": d.messages,
                "bytes": d.bytes,
                "dead_letter_share": d.dl_share,
            }
            for d in sitting.datasets
        ],
        "skipped": {i.name: i.why_not for i in sitting.impls if not i.available},
        "medians": medians,
        "drain": [asdict(r) for r in sitting.runs],
        "latency_medians": [{"impl": impl, **f} for impl, _, f in latency_rows(sitting.latency_runs)],
        "latency": [asdict(r) for r in sitting.latency_runs],
        "profiles": [asdict(r) for r in sitting.profiles],
        "goals": goals(sitting),
    }
    return finite(doc)


def finite(x: Any) -> Any:
    """JSON has no Infinity: an event that never arrived is null."""
    if isinstance(x, float) and x == INF:
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x
