"""Fetch, build or run the tests' backends by hand.

    python -m tests.backends fetch          # Zipkin's jar into the cache (what CI's install step runs)
    python -m tests.backends build-jaeger   # build Jaeger once (about 9 minutes, 3 GB of Go caches)
    python -m tests.backends zipkin         # run Zipkin on loopback in the foreground; Ctrl-C stops it
    python -m tests.backends jaeger         # the same for Jaeger (needs the built binary)

``fetch`` needs only the standard library (CI runs it before the virtualenv exists).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from tests.backends.process import BackendUnavailable


def _foreground(name: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"marker-ingest-{name}."))
    if name == "zipkin":
        from tests.backends.zipkin import Zipkin

        zipkin = Zipkin(workdir).start()
        stop = zipkin.stop
        print(f"Zipkin is up: UI and API at {zipkin.url}, spans to {zipkin.spans_endpoint}")
    else:
        from tests.backends.jaeger import Jaeger

        jaeger = Jaeger(workdir).start()
        stop = jaeger.stop
        print(f"Jaeger is up: UI and API at {jaeger.url}; OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_endpoint}")
    print(f"logs in {workdir}; Ctrl-C stops it")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch", "build-jaeger", "zipkin", "jaeger"])
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            from tests.backends.zipkin import ensure_jar

            print(f"Zipkin: {ensure_jar()}")
        elif args.command == "build-jaeger":
            from tests.backends.jaeger import build

            print(f"Jaeger: {build()}")
        else:
            _foreground(args.command)
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
