"""Pushing marker-text files to the input topic: ``marker-ingest produce``, and what the demo uses.

One message per file (key = the file's path as named: ``d1/a.txt`` and ``d2/a.txt`` differ; stdin,
``-``, has no key), or with ``--per-record`` one per record as the core's scanner splits it (key =
the record's FN). ``--lint`` runs the core over every message first and
refuses a file whose messages it would dead-letter. A progress bar is drawn on a terminal.

The files and the messages they become are ``produce_messages``; this module sends them and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import ExitStatus
from service.settings import Settings
from service.tools.command import (
    add_connection_flags,
    build_settings,
    describe_kafka_error,
    display_name,
    tool_logging,
    topic_name,
)
from service.tools.produce_messages import (
    STDIN,
    BadPath,
    Message,
    NothingToPush,
    collect_files,
    file_messages,
    first_problem,
    key_of,
    shown,
)

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from service.tools.progress import ProgressBar


@dataclass
class PushReport:
    """What a push did."""

    files: int = 0
    messages: int = 0
    bytes: int = 0
    refused: list[tuple[Path, str]] = field(default_factory=list)
    """Files not sent: unreadable, or refused by ``--lint``."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Files of which a message could not be sent or was not acknowledged."""
    seconds: float = 0.0

    @property
    def messages_per_second(self) -> float:
        """Throughput over the whole push, acknowledgements included."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def render_summary(report: PushReport, topic: str) -> str:
    """The summary printed at the end."""
    refused = f"; refused {len(report.refused)} file(s)" if report.refused else ""
    failed = f"; failed {len(report.failed)} file(s)" if report.failed else ""
    return (
        f"pushed {report.files} file(s) as {report.messages} message(s), {report.bytes} bytes, "
        f"to {topic} in {report.seconds:.2f} s ({report.messages_per_second:.1f} messages/s)"
        f"{refused}{failed}\n"
    )


# --------------------------------------------------------------------------------------- the shell


def _read(path: Path) -> bytes:
    return sys.stdin.buffer.read() if path == STDIN else path.read_bytes()


def producer_for(settings: Settings) -> AIOKafkaProducer:
    """A producer with the service's connection, security and durability settings."""
    from aiokafka import AIOKafkaProducer

    from service.kafka.clients import TOOL_LINGER_MS, Kafka

    return AIOKafkaProducer(**Kafka.of(settings).producer_config(linger_ms=TOOL_LINGER_MS))


@dataclass
class _Sending:
    """One file's messages handed to the producer, and what became of them."""

    path: Path
    messages: int
    bytes: int
    acks: list[tuple[int, asyncio.Future[Any]]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    """(index of the message in the file, why it was not sent)."""


async def _send_file(
    producer: AIOKafkaProducer,
    topic: str,
    path: Path,
    batch: list[Message],
    on_sent: Callable[[int], None] | None,
) -> _Sending:
    """Hand a file's messages to the producer. A message too large for the producer is noted and
    the rest go on; any other error of the client is raised (it would fail every file alike)."""
    from aiokafka.errors import MessageSizeTooLargeError

    sending = _Sending(path, len(batch), sum(len(v) for _, v in batch))
    for index, (key, value) in enumerate(batch):
        try:
            sending.acks.append((index, await producer.send(topic, value, key=key)))
        except MessageSizeTooLargeError as exc:
            sending.errors.append(
                (index, f"{len(value)} bytes, too large to send: {describe_kafka_error(exc)}")
            )
            continue
        if on_sent is not None:
            on_sent(len(value))
    return sending


async def _settle(sending: _Sending, report: PushReport) -> None:
    """Wait for a file's acknowledgements; count it as pushed, or as failed with the first reason."""
    from aiokafka.errors import KafkaError

    results = await asyncio.gather(*(ack for _, ack in sending.acks), return_exceptions=True)
    for (index, _), result in zip(sending.acks, results, strict=True):
        if isinstance(result, KafkaError):
            sending.errors.append((index, f"not acknowledged: {describe_kafka_error(result)}"))
        elif isinstance(result, BaseException):
            raise result
    if not sending.errors:
        report.files += 1
        report.messages += sending.messages
        report.bytes += sending.bytes
        return
    index, why = min(sending.errors)
    if sending.messages > 1:
        why = (
            f"{len(sending.errors)} of {sending.messages} message(s) not sent; first: message {index}: {why}"
        )
    report.failed.append((sending.path, why))


async def produce_files(
    settings: Settings,
    files: list[Path],
    *,
    topic: str | None = None,
    per_record: bool = False,
    lint: bool = False,
    progress: ProgressBar | None = None,
) -> PushReport:
    """Push ``files`` one message per file (or per record); with ``lint``, refuse bad files whole.

    Each file is reported on its own: pushed (every message acknowledged), refused (unreadable, or
    by ``lint``) or failed (a message too large to send, or not acknowledged), and the next file goes
    on. An error of the client that is no one file's (a send timed out) stops the push: that file and
    the next ones fail with it, the files handed over before are settled. A producer that cannot
    start (the broker unreachable) raises.
    """
    from aiokafka.errors import KafkaError

    from service.kafka.topics import started

    report = PushReport()
    limits = settings.limits
    target = topic or settings.input_topic
    on_sent = progress.message_sent if progress is not None else None
    begun = time.monotonic()
    try:
        async with started(producer_for(settings)) as producer:
            sendings: list[_Sending] = []
            for number, path in enumerate(files):
                try:
                    data = await asyncio.to_thread(_read, path)  # a FIFO or stdin may keep it waiting
                except OSError as exc:
                    report.refused.append((path, f"cannot read: {exc.strerror}"))
                    continue
                batch = file_messages(data, key_of(path), per_record=per_record)
                problem = first_problem(batch, limits, name=shown(path)) if lint else None
                if progress is not None:
                    progress.file_done(len(data))
                if problem is not None:
                    report.refused.append((path, problem))
                    continue
                try:
                    sendings.append(await _send_file(producer, target, path, batch, on_sent))
                except KafkaError as exc:
                    why = f"not sent, the push stopped: {describe_kafka_error(exc)}"
                    report.failed.extend((p, why) for p in files[number:])
                    break
            for sending in sendings:
                await _settle(sending, report)
    finally:
        report.seconds = time.monotonic() - begun
        if progress is not None:
            progress.close()
    return report


# ------------------------------------------------------------------------------------ the command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``produce`` to the ``marker-ingest`` command."""
    p = sub.add_parser(
        "produce",
        help="push marker-text files or directories to the input topic",
        description="Push files (directories: every file under them; - reads stdin) to the input "
        "topic, one message per file keyed by its path as named, or one per record keyed by its FN. "
        "Exit 0 when everything was pushed, 1 when a file was refused by --lint or a send failed, 2 "
        "on usage errors.",
    )
    add_connection_flags(p)
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="files or directories of marker text; - reads stdin"
    )
    p.add_argument("--topic", type=topic_name, metavar="TOPIC", help="push here instead of the input topic")
    p.add_argument(
        "--per-record", action="store_true", help="one message per record (key = its FN) instead of per file"
    )
    p.add_argument(
        "--lint",
        action="store_true",
        help="refuse (and do not send) a file of which the parser would dead-letter anything",
    )
    p.set_defaults(handler=cmd_produce)


def cmd_produce(args: argparse.Namespace) -> int:
    """Run ``marker-ingest produce``."""
    from aiokafka.errors import KafkaError

    from service.kafka.clients import Kafka
    from service.kafka.connection import explain, preflight
    from service.kafka.failures import Stage

    settings = build_settings(args)
    topic: str = args.topic or settings.input_topic
    if topic in (settings.output_topic, settings.dlq_topic):
        sys.stderr.write("marker-ingest produce: --topic must not be the output or dead-letter topic\n")
        return ExitStatus.USAGE
    try:
        files = collect_files(args.paths)
    except BadPath as exc:
        path, why = exc.args
        sys.stderr.write(f"marker-ingest produce: cannot read {display_name(path)}: {why}\n")
        return ExitStatus.USAGE
    except NothingToPush as exc:
        sys.stderr.write(
            f"marker-ingest produce: nothing to push under {display_name(str(exc))} "
            "(no files; hidden files and directories are skipped)\n"
        )
        return ExitStatus.USAGE
    total = 0
    for path in files:
        with contextlib.suppress(OSError):
            if path != STDIN and stat.S_ISREG((info := path.stat()).st_mode):
                total += info.st_size
    with tool_logging(settings):
        if (failure := preflight(Kafka.of(settings))) is not None:
            sys.stderr.write(f"marker-ingest produce: {failure.line}\n")
            return ExitStatus.USAGE
        # Drawn from here on (its first frame at 0 %), closed by produce_files.
        from service.tools.progress import ProgressBar  # tqdm only when pushing: other commands start faster

        progress = ProgressBar(sys.stderr, total, len(files))
        try:
            report = asyncio.run(
                produce_files(
                    settings,
                    files,
                    topic=topic,
                    per_record=args.per_record,
                    lint=args.lint,
                    progress=progress,
                )
            )
        except KafkaError as exc:
            if (failure := explain(exc, Stage.SEND, Kafka.of(settings), topic)) is not None:
                sys.stderr.write(f"marker-ingest produce: {failure.line}\n")
                return ExitStatus.USAGE
            sys.stderr.write(f"marker-ingest produce: send failed: {describe_kafka_error(exc)}\n")
            return ExitStatus.FAILED
    for path, why in report.refused:
        sys.stderr.write(f"refused {shown(path)}: {why}\n")
    for path, why in report.failed:
        sys.stderr.write(f"failed {shown(path)}: {why}\n")
    sys.stdout.write(render_summary(report, topic))
    sys.stdout.flush()
    # FAILED: a file was refused (unreadable, or by --lint) or a send failed.
    return ExitStatus.FAILED if report.refused or report.failed else ExitStatus.OK
