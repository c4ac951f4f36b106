"""Benchmark the whole service against a broker: marker-ingest beside a passthrough and peers. Not a test.

The entry point of the ``bench`` package beside this file (``scripts/bench/``); ``--help`` says what
it measures. Usage::

    python scripts/bench_service.py [--broker kafka] [--bootstrap-servers HOST:PORT] [--quick]
        [--messages N] [--repeat N] [--partitions 1,4] [--instances 1,2,3] [--impls A,B,...]
        [--variant NAME[@DIR]:ENV=VALUE,...] [--latency-seconds S] [--latency-rate R[,NAME=R]]
        [--profile DIR] [--service-path DIR] [--keep-logs DIR] [--json] [--json-out FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
