"""The implementations under test: the passthrough, marker-ingest in its modes and log set-ups, the
peers, and the ``--variant`` rows (marker-ingest with other settings, or from another tree)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.children import has

EXACTLY_ONCE = ("INGEST_DELIVERY", "exactly-once")


@dataclass
class Impl:
    """One implementation under test: what runs, with which logs and settings."""

    name: str
    label: str
    kind: str  # passthrough | marker-ingest | faststream | confluent
    log: str = "file"  # file | null
    log_level: str = "INFO"
    available: bool = True
    why_not: str = ""
    datasets: tuple[str, ...] = ()  # empty: every dataset
    env: tuple[tuple[str, str], ...] = ()  # extra settings of a marker-ingest run
    service_path: Path | None = None  # None: --service-path

    @property
    def transactional(self) -> bool:
        return EXACTLY_ONCE in self.env


def parse_variant(spec: str) -> Impl:
    """``NAME[@DIR]:ENV=VALUE,...``: marker-ingest with extra settings (from the tree at DIR).

    ``tracing-off:INGEST_TRACING=false``; ``before@/tmp/mi-70153cc`` (no settings, another tree);
    ``eos-big:INGEST_DELIVERY=exactly-once,INGEST_BATCH_MAX_MESSAGES=2000``. Values cannot hold a comma.
    """
    head, _, settings = spec.partition(":")
    name, at, path = head.partition("@")
    if not name or (at and not path):
        raise ValueError(f"--variant {spec!r}: expected NAME[@DIR]:ENV=VALUE,...")
    env = []
    for item in filter(None, (s.strip() for s in settings.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--variant {spec!r}: {item!r} is not ENV=VALUE")
        env.append((key, value))
    label = ", ".join(f"{k}={v}" for k, v in env) or "as shipped"
    if path:
        label += f", from {path}"
    return Impl(
        name, f"{name} ({label})", "marker-ingest", env=tuple(env), service_path=Path(path) if path else None
    )


def implementations(args: argparse.Namespace, idempotence: bool) -> list[Impl]:
    """The implementations of this sitting, in run order: the built-in ones (``--impls``), then the
    ``--variant`` ones."""
    mi = "marker-ingest"
    impls = [
        Impl("passthrough", "passthrough (aiokafka, no parsing)", "passthrough"),
        Impl(mi, "marker-ingest (INFO, JSON logs to a file)", mi),
        Impl("marker-ingest-devnull", "marker-ingest (INFO, logs to /dev/null)", mi, log="null"),
        Impl("marker-ingest-warning", "marker-ingest (WARNING: no record lines)", mi, log="null",
             log_level="WARNING", datasets=("dl10",)),
        Impl("marker-ingest-eos", "marker-ingest exactly-once (INFO, file)", mi, env=(EXACTLY_ONCE,)),
        Impl("faststream", "FastStream (defaults, same core)", "faststream"),
        Impl("confluent", "confluent-kafka (poll/produce/commit)", "confluent"),
    ]  # fmt: skip
    if args.quick:
        impls = [i for i in impls if i.name not in ("marker-ingest-devnull", "marker-ingest-warning")]
    if not idempotence:  # Tansu: no transactions
        impls = [i for i in impls if i.name != "marker-ingest-eos"]
    if args.impls:
        wanted = set(args.impls.split(","))
        impls = [i for i in impls if i.name in wanted]
    impls += [parse_variant(spec) for spec in args.variant or ()]
    for impl in impls:
        module = {"faststream": "faststream", "confluent": "confluent_kafka"}.get(impl.kind)
        if module and not has(module):
            impl.available = False
            impl.why_not = f"{module} is not installed (pip install -e '.[bench]')"
        if impl.transactional and not idempotence:
            impl.available, impl.why_not = False, "exactly-once needs Apache Kafka (--broker kafka)"
    return impls
