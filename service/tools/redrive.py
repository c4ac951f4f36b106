"""``marker-ingest redrive``: re-publish dead-lettered input to the input topic, once it can be fixed.

The dead-letter topic is read to its end without joining a consumer group; the selected dead letters
are turned back into the input they came from (the record's text for a record-level dead letter, the
whole payload, byte for byte, for a payload-level one; read back from the input topic when the dead
letter's copy is incomplete, ``read_inputs``) and published with the original key and
headers, plus ``marker-ingest-redrive-count`` and ``marker-ingest-origin-id`` (the dead letter's id,
which the service gives the redriven records' events back when ``marker-ingest-origin-tag``, made
with ``INGEST_REDRIVE_KEY``, proves it). ``--dry-run`` re-parses instead of publishing and reports
how many would now succeed; it alone runs without the key.

Functional core, imperative shell: ``redrive_plan`` and ``redrive_report`` decide and never do
I/O; ``redrive`` reads the topic and publishes; ``cmd_redrive`` translates arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import ErrorCode
from schemas.events import (
    REDRIVE_COUNT_HEADER,
)
from service.settings import Settings
from service.tools.command import (
    EXIT_USAGE,
    add_connection_flags,
    build_settings,
    describe_kafka_error,
    topic_name,
)
from service.tools.redrive_plan import (
    DEFAULT_MAX_REDRIVES,
    EXIT_INCOMPLETE,
    DeadLetterRecord,
    Decision,
    Filters,
    InputRecord,
    InputRef,
    RedriveMessage,
    plan_redrive,
    recover,
    would_succeed,
)
from service.tools.redrive_report import (
    Report,
    build_report,
    render_json,
    render_text,
)

NO_KEY = (
    "INGEST_REDRIVE_KEY is not set: redriven messages must carry an origin tag that the service, "
    "given the same key, can verify (--dry-run needs none)"
)

# --------------------------------------------------------------------------------------- the shell


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    """Everything a redrive is told besides the settings."""

    filters: Filters = field(default_factory=Filters)
    target_topic: str | None = None
    max_redrives: int = DEFAULT_MAX_REDRIVES
    dry_run: bool = False


async def read_dead_letters(settings: Settings) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic, without joining a consumer group."""
    from service.delivery.topics import read_topic

    kwargs = settings.kafka_client_kwargs()
    bootstrap = kwargs.pop("bootstrap_servers")
    kwargs["max_partition_fetch_bytes"] = max(1024 * 1024, settings.max_event_bytes + 65536)
    # Dead letters of aborted transactions (INGEST_DELIVERY=exactly-once) never happened: skip them.
    kwargs["isolation_level"] = "read_committed"
    records = await read_topic(bootstrap, settings.dlq_topic, client_kwargs=kwargs)
    return [DeadLetterRecord(r.partition, r.offset, r.key, r.value, tuple(r.headers or ())) for r in records]


INPUT_QUIET_SECONDS = 6.0
"""How long a partition may answer no fetch with records or a watermark before reading it stops."""


async def read_inputs(settings: Settings, wanted: Iterable[InputRef]) -> dict[InputRef, InputRecord]:
    """The input messages at ``wanted`` (topic, partition, offset), read back without a consumer
    group, as a read_committed consumer sees them; one that is gone (a topic or partition that does
    not exist, an offset retention deleted or compaction removed) is missing from the result."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import OffsetOutOfRangeError

    from service.delivery.clients import max_request_size
    from service.delivery.topics import started

    by_partition: dict[tuple[str, int], set[int]] = {}
    for topic, partition, offset in wanted:
        by_partition.setdefault((topic, partition), set()).add(offset)
    found: dict[InputRef, InputRecord] = {}
    if not by_partition:
        return found
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="none",  # an offset out of range is gone: say so, never read elsewhere
        max_partition_fetch_bytes=max(1024 * 1024, max_request_size(settings)),
        **settings.kafka_client_kwargs(),
    )
    loop = asyncio.get_running_loop()
    async with started(consumer):
        for (topic, partition), offsets in sorted(by_partition.items()):
            if partition not in await _partitions(consumer, topic):
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            for offset in sorted(offsets):
                if (topic, partition, offset) in found:
                    continue
                consumer.seek(tp, offset)
                quiet_since = loop.time()
                while loop.time() - quiet_since < INPUT_QUIET_SECONDS:
                    try:
                        batch = await consumer.getmany(tp, timeout_ms=200)
                    except OffsetOutOfRangeError:
                        break
                    records = batch.get(tp, [])
                    for r in records:
                        if r.offset in offsets:
                            found[(topic, partition, r.offset)] = InputRecord(
                                r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ())
                            )
                    if records and records[-1].offset >= offset:
                        break
                    if records:
                        quiet_since = loop.time()
                        continue
                    end = consumer.last_stable_offset(tp)
                    if end is not None and await consumer.position(tp) >= end:
                        break
    return found


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """The partitions of ``topic``; none when the cluster's metadata does not name it within 2 s."""
    for _ in range(20):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return set()


async def publish(
    settings: Settings, topic: str, messages: Sequence[tuple[Decision, RedriveMessage]]
) -> set[str]:
    """Publish every message and wait for the acknowledgements; return the ids that failed."""
    from aiokafka.errors import KafkaError

    from service.delivery.topics import started
    from service.tools.produce import producer_for

    failed: set[str] = set()
    if not messages:
        return failed
    async with started(producer_for(settings)) as producer:
        pending: list[tuple[str, asyncio.Future[Any]]] = []
        for decision, msg in messages:
            try:
                future = await producer.send(topic, msg.value, key=msg.key, headers=list(msg.headers))
            except KafkaError:
                failed.add(decision.dead_letter_id)
                continue
            pending.append((decision.dead_letter_id, future))
        for dead_letter_id, future in pending:
            try:
                await future
            except KafkaError:
                failed.add(dead_letter_id)
    return failed


async def redrive(settings: Settings, options: RedriveOptions) -> Report:
    """Read the dead-letter topic, then publish (or, in a dry run, re-parse) the selected input."""
    target = options.target_topic or settings.input_topic
    plan = plan_redrive(
        await read_dead_letters(settings),
        options.filters,
        max_redrives=options.max_redrives,
        key=settings.redrive_key,
    )
    if wanted := plan.inputs_wanted:
        found = await read_inputs(settings, wanted)
        recover(plan, found, max_redrives=options.max_redrives, key=settings.redrive_key)
    failed: set[str] = set()
    succeeding: set[str] = set()
    if options.dry_run:
        now = dt.datetime.now(dt.UTC)
        limits = settings.limits
        succeeding = {
            d.dead_letter_id for d, msg in plan.messages if would_succeed(msg, limits, topic=target, now=now)
        }
    else:
        failed = await publish(settings, target, plan.messages)
    return build_report(
        plan,
        dlq_topic=settings.dlq_topic,
        target_topic=target,
        dry_run=options.dry_run,
        failed=failed,
        succeeding=succeeding,
    )


# ------------------------------------------------------------------------------------ the command


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 date or date-time; without a zone it is UTC. For ``--since`` and ``--until``."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time: {text!r} (e.g. 2024-01-24T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return value

    return parse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``redrive`` to the ``marker-ingest`` command."""
    p = sub.add_parser(
        "redrive",
        help="re-publish dead-lettered input to the input topic",
        description="Re-publish the input of dead letters (read from INGEST_DLQ_TOPIC without a "
        "consumer group) to the input topic, with the original key and headers and "
        f"{REDRIVE_COUNT_HEADER} incremented and an origin tagged with INGEST_REDRIVE_KEY (the "
        "service's key; --dry-run needs none). Exit 0 when every selected dead letter was redriven "
        "(or, with --dry-run, would be), 1 when some could not be, 2 on usage errors.",
    )
    add_connection_flags(p)
    p.add_argument("--dlq-topic", metavar="TOPIC", help="overrides INGEST_DLQ_TOPIC")
    p.add_argument(
        "--to-topic", type=topic_name, metavar="TOPIC", help="publish here instead of the input topic"
    )
    p.add_argument(
        "--code",
        action="append",
        choices=[c.value for c in ErrorCode],
        metavar="CODE",
        help="only dead letters with this error code (repeatable)",
    )
    p.add_argument(
        "--since",
        type=parse_time,
        metavar="TIME",
        help="only dead letters whose time is at or after TIME (ISO 8601; UTC without a zone)",
    )
    p.add_argument(
        "--until", type=parse_time, metavar="TIME", help="only dead letters whose time is before TIME"
    )
    p.add_argument("--partition", type=_count(0), metavar="P", help="only input partition P")
    p.add_argument("--from-offset", type=_count(0), metavar="N", help="only input offsets >= N")
    p.add_argument("--to-offset", type=_count(0), metavar="N", help="only input offsets <= N")
    p.add_argument("--limit", type=_count(1), metavar="N", help="select at most N dead letters")
    p.add_argument(
        "--max-redrives",
        type=_count(1),
        default=DEFAULT_MAX_REDRIVES,
        metavar="N",
        help=f"never redrive a message that was redriven N times already (default {DEFAULT_MAX_REDRIVES})",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="re-parse with the current limits, report, publish nothing"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(handler=cmd_redrive)


def options_from(args: argparse.Namespace) -> RedriveOptions | str:
    """The options of a redrive, or a usage error message."""
    if args.since and args.until and args.since >= args.until:
        return "--since must be before --until"
    if args.from_offset is not None and args.to_offset is not None and args.from_offset > args.to_offset:
        return "--from-offset must not be after --to-offset"
    filters = Filters(
        codes=frozenset(ErrorCode(c) for c in args.code or ()),
        since=args.since,
        until=args.until,
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        limit=args.limit,
    )
    return RedriveOptions(filters, args.to_topic, args.max_redrives, args.dry_run)


def cmd_redrive(args: argparse.Namespace) -> int:
    """Run ``marker-ingest redrive``."""
    from aiokafka.errors import KafkaError

    from service.delivery.connection import explain, preflight
    from service.delivery.failures import EXIT_MISCONFIGURED, Stage
    from service.delivery.topics import TopicNotFound
    from service.tools.produce import tool_logging

    options = options_from(args)
    if isinstance(options, str):
        sys.stderr.write(f"marker-ingest redrive: {options}\n")
        return EXIT_USAGE
    settings = build_settings(args)
    if options.target_topic in (settings.output_topic, settings.dlq_topic):
        sys.stderr.write("marker-ingest redrive: --to-topic must not be the output or dead-letter topic\n")
        return EXIT_USAGE
    if settings.redrive_key is None and not options.dry_run:
        sys.stderr.write(f"marker-ingest redrive: {NO_KEY}\n")
        return EXIT_MISCONFIGURED
    with tool_logging(settings):
        if (failure := preflight(settings)) is not None:
            sys.stderr.write(f"marker-ingest redrive: {failure.line}\n")
            return EXIT_MISCONFIGURED
        try:
            report = asyncio.run(redrive(settings, options))
        except TopicNotFound as exc:
            given = "--dlq-topic" if args.dlq_topic is not None else "INGEST_DLQ_TOPIC"
            sys.stderr.write(
                f"marker-ingest redrive: the dead-letter topic {exc.topic!r} ({given}) does not exist\n"
            )
            return EXIT_USAGE
        except KafkaError as exc:
            if (failure := explain(exc, Stage.FETCH, settings)) is not None:
                sys.stderr.write(f"marker-ingest redrive: {failure.line}\n")
                return EXIT_MISCONFIGURED
            sys.stderr.write(f"marker-ingest redrive: Kafka error: {describe_kafka_error(exc)}\n")
            return EXIT_INCOMPLETE
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    sys.stdout.flush()
    return report.exit_status
