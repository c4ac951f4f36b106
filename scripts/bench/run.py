"""One sitting against one broker: the datasets loaded once, then every implementation drained in
turn (A B C A B C ... for ``--repeat``), then the profiled drains, then the paced latency runs, also
in turn. Every topic made is deleted again.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.data import Dataset, broker_count, delete_topics, make_dataset, preload
from bench.impls import Impl, implementations
from bench.runner import Runner, RunResult
from bench.stats import median

OWN_RATE = "marker-ingest-own-rate"
OWN_RATE_EOS = "marker-ingest-eos-own-rate"


@dataclass
class Sitting:
    """Everything one sitting measured."""

    impls: list[Impl]
    datasets: list[Dataset]
    preload_s: dict[str, float]
    runs: list[RunResult]
    latency_runs: list[RunResult]
    profiles: list[RunResult]
    replication: int


def parse_rates(spec: str | None) -> tuple[float | None, dict[str, float]]:
    """``--latency-rate``: ``4000`` (every implementation) or ``4000,marker-ingest-eos=2000`` (a default
    and per-implementation rates) -> (the default or None, {name: rate})."""
    default: float | None = None
    rates: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, eq, value = item.rpartition("=")
        rate = float(value)
        if rate <= 0:
            raise ValueError(f"--latency-rate {spec!r}: a rate must be positive")
        if eq:
            rates[name] = rate
        else:
            default = rate
    return default, rates


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def brief(r: RunResult) -> str:
    """One line on a run, for the progress log."""
    from bench.report import ms, num

    if r.phase == "latency":
        e2e = r.latency.get("e2e_ms", {})
        return (
            f"p50 {ms(e2e.get('p50'))}, p99 {ms(e2e.get('p99'))}, RSS {num(r.peak_rss_mb, 0)} MB {r.problem}"
        )
    return (
        f"{num(r.msgs_per_s, 0)} msgs/s, cpu {num(r.cpu_pct, 0)} %, {num(r.cpu_us_per_msg, 0)} us/msg, "
        f"RSS {num(r.peak_rss_mb, 0)} MB, other {num(r.others_cpu_pct, 0)} % {r.problem}"
    )


def _usable(impl: Impl, ds: Dataset) -> bool:
    return impl.available and (not impl.datasets or ds.name in impl.datasets)


async def sitting(args: argparse.Namespace, bootstrap: str, broker_pids: list[int], logdir: Path) -> Sitting:
    """Load the datasets, then: the drains in turn (``--repeat`` rounds), the profiled drains, the
    latency runs in turn; every topic made is deleted again."""
    bench = Runner(args, bootstrap, broker_pids, logdir)
    bench.replication = args.replication_factor or min(3, await broker_count(bootstrap))
    impls = implementations(args, bench.idempotence)
    shares = (("dl10", 0.10),) if args.quick else (("dl0", 0.0), ("dl10", 0.10))
    datasets: list[Dataset] = []
    preload_s: dict[str, float] = {}
    try:
        for partitions in args.partitions:
            for name, share in shares:
                topic = f"{bench.tag}.input.{name}.p{partitions}"
                ds = make_dataset(name, args.messages, share, topic, partitions)
                ds.traced = args.traced_input
                await bench.create({ds.topic: partitions})
                progress(f"pre-loading {ds.messages:,} messages ({ds.bytes / 1e6:.0f} MB) into {ds.topic}")
                preload_s[ds.topic] = await preload(bootstrap, ds)
                datasets.append(ds)
        runs: list[RunResult] = []
        for rep in range(1, args.repeat + 1):
            for ds in datasets:
                for n in args.instances:
                    for impl in (i for i in impls if _usable(i, ds)):
                        progress(
                            f"drain {ds.name}, {ds.partitions} partition(s), {n} instance(s): {impl.name}"
                            + (f" (round {rep} of {args.repeat})" if args.repeat > 1 else "")
                        )
                        res = await bench.drain(impl, ds, n)
                        res.repetition = rep
                        progress(f"  {brief(res)}")
                        runs.append(res)
        lat_ds = next(ds for ds in datasets if ds.name == "dl10")
        profiles = []
        if args.profile:
            # Extra drains under py-spy, kept out of the tables (sampling costs the process a little).
            args.profile.mkdir(parents=True, exist_ok=True)
            for impl in (i for i in impls if _usable(i, lat_ds) and i.kind == "marker-ingest"):
                if impl.log == "null":
                    continue
                path = args.profile / f"{impl.name}.{lat_ds.name}.p{lat_ds.partitions}.raw.txt"
                progress(f"profiled drain {lat_ds.name}: {impl.name} (py-spy -> {path})")
                res = await bench.drain(impl, lat_ds, 1, profile=path)
                progress(f"  {brief(res)}")
                profiles.append(res)
        latency_runs = await _latency_phase(args, bench, impls, runs, lat_ds)
    finally:
        await delete_topics(bootstrap, [ds.topic for ds in datasets])
    return Sitting(impls, datasets, preload_s, runs, latency_runs, profiles, bench.replication)


def latency_plan(
    args: argparse.Namespace, impls: list[Impl], runs: list[RunResult], lat_ds: Dataset
) -> tuple[list[tuple[Impl, float]], list[RunResult]]:
    """Which implementations the paced phase times, at which rate; and those it skips, as results.

    The rate: ``--latency-rate`` (a default and per-implementation rates), else half the
    passthrough's median drain rate on the same case, and then marker-ingest (and exactly-once)
    also at half marker-ingest's own rate. An implementation whose median drain rate is below its
    paced rate is skipped (its backlog would only grow) unless ``--latency-all``.
    """
    n = args.instances[0]

    def drained(name: str) -> float | None:
        return median(
            r.msgs_per_s for r in runs if r.impl == name and r.case == (lat_ds.name, lat_ds.partitions, n)
        )

    default, named = parse_rates(args.latency_rate)
    if default is None and not named:
        ceiling = drained("passthrough")
        default = ceiling / 2 if ceiling else None
    plan: list[tuple[Impl, float]] = []
    skipped: list[RunResult] = []
    for impl in impls:
        rate = named.get(impl.name, default)
        if not impl.available or impl.log == "null" or rate is None:
            continue
        own = drained(impl.name)
        if own is not None and own < rate and not args.latency_all:
            res = RunResult(
                impl.name,
                "latency",
                lat_ds.name,
                lat_ds.partitions,
                n,
                messages=int(rate * args.latency_seconds),
            )
            res.problem = f"not run: it drains {own:,.0f} msgs/s < the input rate"
            res.latency = {"rate": rate, "seconds": args.latency_seconds, "skipped": True}
            skipped.append(res)
            continue
        plan.append((impl, rate))
    if args.latency_rate is None and default is not None:
        mi = next((i for i in impls if i.name == "marker-ingest" and i.available), None)
        own = drained("marker-ingest")
        if mi is not None and own and own / 2 < default * 0.9:
            plan.append(
                (Impl(OWN_RATE, "marker-ingest at half its own drain rate", "marker-ingest"), own / 2)
            )
            eos = next((i for i in impls if i.name == "marker-ingest-eos" and i.available), None)
            if eos is not None:  # the same rate, so that the two delivery modes compare at one load
                label = "exactly-once at half at-least-once's drain rate"
                plan.append((Impl(OWN_RATE_EOS, label, "marker-ingest", env=eos.env), own / 2))
    return plan, skipped


async def _latency_phase(
    args: argparse.Namespace, bench: Runner, impls: list[Impl], runs: list[RunResult], lat_ds: Dataset
) -> list[RunResult]:
    if args.latency_seconds <= 0:
        return []
    plan, results = latency_plan(args, impls, runs, lat_ds)
    for res in results:
        progress(f"latency: {res.impl} {res.problem}")
    for impl, _ in plan:
        if impl not in impls:
            impls.append(impl)
    for rep in range(1, args.repeat + 1):
        for impl, rate in plan:
            progress(
                f"latency at {rate:,.0f} msgs/s for {args.latency_seconds:.0f}s: {impl.name}"
                + (f" (round {rep} of {args.repeat})" if args.repeat > 1 else "")
            )
            res = await bench.latency(impl, lat_ds, rate, args.latency_seconds, args.instances[0])
            res.repetition = rep
            progress(f"  {brief(res)}")
            results.append(res)
    return results
