"""``marker-ingest redrive``: re-publish dead-lettered input to the input topic, once it can be fixed.

The dead-letter topic is read to its end without joining a consumer group; the selected dead letters
are turned back into the input they came from (the record's text for a record-level dead letter, the
whole payload, byte for byte, for a payload-level one; read back from the input topic when the dead
letter's copy is incomplete, ``read_inputs``) and published with the original key and
headers, plus ``marker-ingest-redrive-count`` and ``marker-ingest-origin-id`` (the dead letter's id,
which the service gives the redriven records' events back when ``marker-ingest-origin-tag``, made
with ``INGEST_REDRIVE_KEY``, proves it). Each published dead letter gets a redrive marker on the
dead-letter topic, and marked ones are not selected again: with ``INGEST_DELIVERY=exactly-once``
input and marker commit in one transaction of a producer that fences earlier runs first
(``publish_in_transactions``); otherwise the markers follow the acknowledgements (``publish``).
``--dry-run`` re-parses instead of publishing and reports how many would now succeed; it alone runs
without the key.

Functional core, imperative shell: ``redrive_messages``, ``redrive_plan`` and ``redrive_report``
decide and never do I/O; ``redrive_read`` reads the topics and ``redrive_publish`` publishes;
``redrive`` here drives them, and ``cmd_redrive`` translates arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

from schemas.errors import ErrorCode
from schemas.events import (
    REDRIVE_COUNT_HEADER,
)
from service.errors import ExitStatus, TracingUnavailable
from service.ops.tracing import RedriveSpan, Tracer, start_tracing
from service.settings import Settings
from service.tools.command import (
    add_connection_flags,
    build_settings,
    describe_kafka_error,
    tool_logging,
    topic_name,
)
from service.tools.redrive_plan import (
    DEFAULT_MAX_REDRIVES,
    Filters,
    Plan,
    plan_redrive,
    recover,
    skip_too_large,
    traced,
    would_succeed,
)
from service.tools.redrive_publish import (
    Refused,
    publish,
    publish_in_transactions,
    transactional_producer,
)
from service.tools.redrive_read import read_dead_letters, read_inputs, record_limits
from service.tools.redrive_report import (
    Report,
    build_report,
    render_json,
    render_text,
)

T = TypeVar("T")
TRACE_FLUSH_SECONDS = 3.0
"""How long the command waits for its span to be exported (tracing on)."""

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


async def _plan(
    settings: Settings,
    options: RedriveOptions,
    target: str,
    limits: dict[str, int],
    tracer: Tracer | None = None,
) -> tuple[Plan, RedriveSpan | None]:
    """Read the dead-letter topic, select, complete what must be read back from the input, put the
    redrive's span on what it publishes (tracing on), and skip what the target topic would refuse
    (``limits``: ``record_limits``)."""
    plan = plan_redrive(
        await read_dead_letters(settings),
        options.filters,
        max_redrives=options.max_redrives,
        key=settings.redrive_key,
        target_topic=target,
    )
    if wanted := plan.inputs_wanted:
        found = await read_inputs(settings, wanted)
        recover(plan, found, max_redrives=options.max_redrives, key=settings.redrive_key)
    span = None
    if tracer is not None and not options.dry_run and plan.messages:
        # The span's context is known before it has links: they are added when it is made.
        span = tracer.redrive(target, len(plan.messages))
        for link in traced(plan, span.traceparent):
            span.link(link)
    if target in limits:
        skip_too_large(plan, limits[target])
    return plan, span


async def redrive(settings: Settings, options: RedriveOptions, tracer: Tracer | None = None) -> Report:
    """Read the dead-letter topic, then publish (or, in a dry run, re-parse) the selected input.

    With ``INGEST_DELIVERY=exactly-once`` the transactional producer starts first, fencing any
    earlier run, and each input is committed with its marker; otherwise markers follow the acks.
    Raises ``Refused`` when the broker refuses the producer or a write for good.
    """
    from aiokafka.errors import ProducerFenced

    asyncio.get_running_loop().set_exception_handler(functools.partial(_unless, ProducerFenced))
    target = options.target_topic or settings.input_topic
    now = dt.datetime.now(dt.UTC)
    failed: set[str] = set()
    succeeding: set[str] = set()
    unmarked = 0
    limits = await record_limits(settings, [target, settings.dlq_topic])
    span = None
    if options.dry_run:
        plan, _ = await _plan(settings, options, target, limits)
        core = settings.limits
        succeeding = {
            d.dead_letter_id for d, msg in plan.messages if would_succeed(msg, core, topic=target, now=now)
        }
    elif settings.delivery == "exactly-once":
        async with transactional_producer(settings, limits) as producer:
            plan, span = await _plan(settings, options, target, limits, tracer)
            failed = await _ending(
                span,
                publish_in_transactions(producer, settings.dlq_topic, target, plan.messages, now=now),
                lambda failed: failed,
            )
    else:
        plan, span = await _plan(settings, options, target, limits, tracer)
        failed, unmarked = await _ending(
            span,
            publish(settings, target, plan.messages, now=now, limits=limits),
            lambda result: result[0],
        )
    return build_report(
        plan,
        dlq_topic=settings.dlq_topic,
        target_topic=target,
        dry_run=options.dry_run,
        failed=failed,
        succeeding=succeeding,
        unmarked=unmarked,
    )


async def _ending(span: RedriveSpan | None, publishing: Awaitable[T], failures: Callable[[T], Sized]) -> T:
    """Await ``publishing``; the redrive's span (if any) ends with it, failed if it raised or
    ``failures`` of its result are not empty."""
    if span is None:
        return await publishing
    try:
        result = await publishing
    except BaseException as exc:
        span.end(repr(exc))
        raise
    failed = len(failures(result))
    span.end(f"{failed} message(s) not published" if failed else None)
    return result


def _unless(fenced: type[BaseException], loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler, without the fenced producer's own errors: aiokafka leaves
    ``ProducerFenced`` on futures nobody awaits once it has told the sends (``redrive.fenced``).
    The class is bound beforehand: the handler also runs as the interpreter shuts down."""
    if not isinstance(context.get("exception"), fenced):
        loop.default_exception_handler(context)


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
        "service's key; --dry-run needs none). Each dead letter is redriven once: a marker on the "
        "dead-letter topic says so (with INGEST_DELIVERY=exactly-once, in one transaction with the "
        "input). Exit 0 when every selected dead letter was redriven (or, with --dry-run, would "
        "be), 1 when some could not be, 2 on usage and configuration errors.",
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


@contextlib.contextmanager
def _shut_down(tracer: Tracer | None) -> Iterator[None]:
    """Export the command's span when it is done (within ``TRACE_FLUSH_SECONDS``)."""
    try:
        yield
    finally:
        if tracer is not None:
            tracer.shutdown(TRACE_FLUSH_SECONDS)


def cmd_redrive(args: argparse.Namespace) -> int:
    """Run ``marker-ingest redrive``."""
    from aiokafka.errors import KafkaError

    from service.kafka.clients import Kafka
    from service.kafka.connection import explain, preflight
    from service.kafka.failures import Stage
    from service.kafka.topics import TopicNotFound

    options = options_from(args)
    if isinstance(options, str):
        sys.stderr.write(f"marker-ingest redrive: {options}\n")
        return ExitStatus.USAGE
    settings = build_settings(args)
    if options.target_topic in (settings.output_topic, settings.dlq_topic):
        sys.stderr.write("marker-ingest redrive: --to-topic must not be the output or dead-letter topic\n")
        return ExitStatus.USAGE
    if settings.redrive_key is None and not options.dry_run:
        sys.stderr.write(f"marker-ingest redrive: {NO_KEY}\n")
        return ExitStatus.USAGE
    try:
        tracer = None if options.dry_run else start_tracing(os.environ, max_links=10_000)
    except TracingUnavailable as exc:
        sys.stderr.write(f"marker-ingest redrive: {exc}\n")
        return exc.exit_status
    with tool_logging(settings), _shut_down(tracer):
        if (failure := preflight(Kafka.of(settings))) is not None:
            sys.stderr.write(f"marker-ingest redrive: {failure.line}\n")
            return ExitStatus.USAGE
        try:
            report = asyncio.run(redrive(settings, options, tracer))
        except TopicNotFound as exc:
            given = "--dlq-topic" if args.dlq_topic is not None else "INGEST_DLQ_TOPIC"
            sys.stderr.write(
                f"marker-ingest redrive: the dead-letter topic {exc.topic!r} ({given}) does not exist\n"
            )
            return ExitStatus.USAGE
        except Refused as exc:
            if (failure := explain(exc.error, exc.stage, Kafka.of(settings), exc.resource)) is not None:
                sys.stderr.write(f"marker-ingest redrive: {failure.line}\n")
                return ExitStatus.USAGE
            sys.stderr.write(f"marker-ingest redrive: Kafka error: {describe_kafka_error(exc.error)}\n")
            return ExitStatus.FAILED  # the redrive is incomplete
        except KafkaError as exc:
            if (failure := explain(exc, Stage.FETCH, Kafka.of(settings))) is not None:
                sys.stderr.write(f"marker-ingest redrive: {failure.line}\n")
                return ExitStatus.USAGE
            sys.stderr.write(f"marker-ingest redrive: Kafka error: {describe_kafka_error(exc)}\n")
            return ExitStatus.FAILED  # the redrive is incomplete
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    sys.stdout.flush()
    return report.exit_status
