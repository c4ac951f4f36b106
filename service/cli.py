"""The ``marker-ingest`` command: translates arguments into calls, and nothing more.

Sub-commands: ``run`` (the service), ``parse`` (the core over files, offline), ``demo``, and the
operator tools registered by their modules (``produce``, ``redrive``). What they share (connection
flags, settings) is in ``service.tools.command``; how they end, in ``service.errors.ExitStatus``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from service import __version__
from service.core.events import Source, describe_dead_letter, process_payload
from service.core.limits import Limits
from service.errors import ExitStatus, MarkerIngestError
from service.tools.command import (
    CONFIGURATION_EPILOG,
    add_connection_flags,
    build_settings,
    display_name,
)

__all__ = ["main", "make_parser"]

DESCRIPTION = (
    "marker-ingest reads marker-text news records from a Kafka topic and publishes one article event "
    "(CloudEvents JSON) per good record and one dead-letter event, saying what was wrong, per bad "
    "record. Start with 'marker-ingest demo'."
)

Command = Callable[[argparse.Namespace], int]


def _write(stream: IO[str], line: str) -> None:
    stream.write(line + "\n")


class _CannotWrite(Exception):
    """An output of ``parse`` failed: ``str()`` names it and says why."""


class _Output:
    """A binary output of ``parse`` whose failures say which output it was."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.stream, self.name = stream, name

    def write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
        except OSError as exc:
            raise _CannotWrite(self, exc) from exc

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise _CannotWrite(self, exc) from exc


def cmd_parse(args: argparse.Namespace) -> int:
    """Run the core over files; article events to stdout, dead letters to a file or a summary.

    An output that cannot be written (a missing folder, a directory, a full disk) ends it with one
    line and status 2; stdout closed by its reader (``| head``) ends it quietly, also with 2.
    """
    settings = build_settings(args)
    dead_out: IO[bytes] | None = None
    if args.dead_letters:
        try:
            dead_out = open(args.dead_letters, "wb")  # noqa: SIM115 - closed in _parse_to
        except OSError as exc:
            name = display_name(args.dead_letters)
            _write(sys.stderr, f"marker-ingest parse: cannot write {name}: {exc.strerror}")
            return ExitStatus.USAGE
    try:
        return _parse_to(args.files, settings.limits, dead_out)
    except _CannotWrite as exc:
        output, error = exc.args
        if output.stream is sys.stdout.buffer:
            # The interpreter flushes stdout again at exit: let that go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(error, BrokenPipeError):
            _write(sys.stderr, f"marker-ingest parse: cannot write {output.name}: {error.strerror}")
        return ExitStatus.USAGE


def _parse_to(paths: list[str], limits: Limits, dead_file: IO[bytes] | None) -> int:
    out = _Output(sys.stdout.buffer, "stdout")
    dead_out = None if dead_file is None else _Output(dead_file, display_name(dead_file.name))
    codes: Counter[str] = Counter()
    articles = 0
    now = dt.datetime.now(dt.UTC)
    try:
        for index, path in enumerate(paths):
            try:
                payload = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
            except OSError as exc:
                _write(sys.stderr, f"marker-ingest parse: cannot read {display_name(path)}: {exc.strerror}")
                return ExitStatus.USAGE
            name = "stdin" if path == "-" else display_name(path)
            source = Source(topic=name, partition=0, offset=index)
            for outcome in process_payload(payload, source, limits, now=now, version=__version__):
                if outcome.error is None:
                    articles += 1
                    out.write(outcome.value + b"\n")
                    continue
                codes[outcome.error.value] += 1
                if dead_out is not None:
                    dead_out.write(outcome.value + b"\n")
                else:
                    _write(
                        sys.stderr,
                        f"{name}: record {outcome.record_index}: {describe_dead_letter(outcome.value)}",
                    )
        out.flush()
        if dead_out is not None:
            dead_out.flush()
    finally:
        if dead_file is not None:
            with contextlib.suppress(OSError):  # a failed flush was reported above
                dead_file.close()
    dead = sum(codes.values())
    by_code = ", ".join(f"{code}={n}" for code, n in sorted(codes.items()))
    _write(
        sys.stderr,
        f"{len(paths)} file(s), {articles + dead} record(s): {articles} article(s), {dead} dead letter(s)"
        + (f" ({by_code})" if by_code else ""),
    )
    return ExitStatus.FAILED if dead else ExitStatus.OK  # FAILED: a record was dead-lettered


def cmd_run(args: argparse.Namespace) -> int:
    """Run the service until a signal, or until a burst or --max-messages is done."""
    import structlog

    from service.delivery.app import run_service
    from service.ops.logs import configure_logging

    unknown: list[tuple[str, str | None]] = []
    settings = build_settings(args, warn=lambda name, nearest: unknown.append((name, nearest)))
    configure_logging(settings.log_format, settings.log_level)
    log = structlog.get_logger()
    for name, nearest in unknown:
        log.warning("settings.unknown_variable", variable=name, nearest=nearest)
    return run_service(settings)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="marker-ingest", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"marker-ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "parse",
        help="run the parser over files, offline (lint a feed)",
        description="Parse marker-text files offline, as the service would: article events as JSON "
        "Lines on stdout, dead letters described on stderr (or written to --dead-letters). Exit 0 "
        "when every record is good, 1 when any was dead-lettered, 2 on usage errors and when an "
        "input cannot be read or an output written.",
        epilog="The INGEST_MAX_* environment variables set the limits, as for the service.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="marker-text files; - reads stdin")
    p.add_argument("--dead-letters", metavar="PATH", help="write dead-letter events here (JSON Lines)")
    p.add_argument("--max-payload-bytes", type=int, help="overrides INGEST_MAX_PAYLOAD_BYTES")
    p.set_defaults(handler=cmd_parse)

    p = sub.add_parser(
        "run",
        help="run the service",
        description="Run the service: consume marker text from the input topic, publish article "
        "events to the output topic and dead letters to the dead-letter topic, commit after the "
        "broker acknowledged them. Runs until SIGTERM or SIGINT (exit 0 after a clean stop), or "
        "with --burst until the input is drained. Exit 2 on invalid settings.",
        epilog=CONFIGURATION_EPILOG,
    )
    add_connection_flags(p)
    p.add_argument("--output-topic", metavar="TOPIC", help="overrides INGEST_OUTPUT_TOPIC")
    p.add_argument("--dlq-topic", metavar="TOPIC", help="overrides INGEST_DLQ_TOPIC")
    p.add_argument("--group-id", help="overrides INGEST_GROUP_ID")
    p.add_argument("--http-port", type=int, metavar="PORT", help="overrides INGEST_HTTP_PORT")
    p.add_argument(
        "--max-messages", type=int, metavar="N", help="stop after N input messages (INGEST_MAX_MESSAGES)"
    )
    p.add_argument(
        "--burst", action="store_true", default=None, help="drain the input topic, then exit (INGEST_BURST)"
    )
    p.set_defaults(handler=cmd_run)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Sub-commands that live in their own modules register themselves here."""
    from service.tools import produce, redrive

    return [_register_demo, produce.register, redrive.register]


def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole job on the embedded broker with the sample feed",
        description="Start the bundled Tansu broker (or use --bootstrap-servers), create the demo "
        "topics, push the sample feed (or PATHs), run the service until the input is drained, and "
        "print the article events and dead letters that came out.",
    )
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories to push (default: the samples)"
    )
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT,...",
        help="use this broker instead of starting the embedded one",
    )
    p.add_argument("--verbose", action="store_true", help="show the service's log lines")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from service.tools.demo import run_demo

    return run_demo(args.paths, args.bootstrap_servers, args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marker-ingest`` console script."""
    args = make_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except MarkerIngestError as exc:
        _write(sys.stderr, f"marker-ingest: {exc}")
        return exc.exit_status
