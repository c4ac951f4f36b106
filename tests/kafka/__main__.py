"""Start a local Apache Kafka in the foreground, for trying marker-ingest by hand; Ctrl-C stops it.

    python -m tests.kafka                 # one node on 127.0.0.1:9092, the service's topics created
    python -m tests.kafka --brokers 3     # a controller and three brokers on 9092, 9093, 9094
    python -m tests.kafka --kafka-version 3.9.1

``python -m`` finds ``tests`` from the checkout's root only; from anywhere else give the folder's
path instead (``python tests/kafka``, ``python ../tests/kafka``). The first start of a version fetches
its jars with Maven (about 50 MB, cached in ~/.cache/marker-ingest). Data lives in a temporary folder
(``--dir`` to choose one) and is gone after the stop.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python tests/kafka): import from the checkout, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import argparse
import asyncio
import signal
import tempfile

from service.kafka.topics import create_topics
from tests.kafka.cluster import VERSION_ENV, KafkaCluster, KafkaUnavailable, check_version, kafka_version

DEFAULT_TOPICS = ("news.raw", "news.articles", "news.dead-letters")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka", description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", type=int, default=1, help="number of brokers (default 1)")
    parser.add_argument("--port", type=int, default=9092, help="first broker's port (default 9092)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the created topics")
    parser.add_argument("--topics", nargs="*", default=list(DEFAULT_TOPICS), help="topics to create")
    parser.add_argument("--dir", type=Path, help="data and logs folder (default: a temporary one)")
    parser.add_argument(
        "--kafka-version",
        metavar="X.Y.Z",
        help=f"the Apache Kafka release to run (default: ${VERSION_ENV}, else the one pom.xml pins)",
    )
    args = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="marker-ingest-kafka."))
    ports = [args.port + i for i in range(args.brokers)]
    try:
        version = (
            check_version(args.kafka_version, "--kafka-version") if args.kafka_version else kafka_version()
        )
        cluster = KafkaCluster(workdir, brokers=args.brokers, ports=ports, version=version).start()
    except KafkaUnavailable as exc:
        print(f"cannot start Apache Kafka: {exc}", file=sys.stderr)
        return 1
    try:
        replicas = min(3, args.brokers)
        configs = {"min.insync.replicas": str(min(2, replicas))}
        topics = dict.fromkeys(args.topics, args.partitions)
        asyncio.run(
            create_topics(cluster.bootstrap_servers, topics, replication_factor=replicas, configs=configs)
        )
        print(f"Apache Kafka {cluster.version} is up: KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
        print(f"topics: {', '.join(args.topics) or '(none)'}; logs in {workdir}; Ctrl-C stops it")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping Apache Kafka ...", file=sys.stderr)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
