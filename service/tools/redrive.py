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

Functional core, imperative shell: ``redrive_plan`` and ``redrive_report`` decide and never do
I/O; ``redrive`` reads the topic and publishes; ``cmd_redrive`` translates arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from schemas.errors import ErrorCode
from schemas.events import (
    REDRIVE_COUNT_HEADER,
)
from service.errors import ExitStatus
from service.settings import Settings
from service.tools.command import (
    add_connection_flags,
    build_settings,
    describe_kafka_error,
    tool_logging,
    topic_name,
)
from service.tools.redrive_messages import (
    DeadLetterRecord,
    InputRecord,
    InputRef,
    MarkerMessage,
    RedriveMessage,
)
from service.tools.redrive_plan import (
    DEFAULT_MAX_REDRIVES,
    Decision,
    Filters,
    Plan,
    plan_redrive,
    recover,
    redrive_marker,
    skip_too_large,
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

if TYPE_CHECKING:
    from service.kafka.failures import Stage

log = structlog.get_logger("marker_ingest")

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
    from service.kafka.topics import read_topic

    kwargs = _client_kwargs(settings)
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

    from service.kafka.clients import max_request_size
    from service.kafka.topics import started

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
        **_client_kwargs(settings),
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


async def record_limits(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker enforces it; a topic whose configuration
    cannot be read (no DESCRIBE_CONFIGS, a broker without DescribeConfigs) is left out."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    wanted = [
        ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in sorted(set(topics))
    ]
    admin = AIOKafkaAdminClient(**_client_kwargs(settings))
    limits: dict[str, int] = {}
    try:
        await admin.start()
        for response in await admin.describe_configs(wanted):
            for error, _, _, name, entries, *_ in response.resources:
                values = [entry[1] for entry in entries if entry[0] == "max.message.bytes"]
                if error == 0 and values and str(values[0]).isdigit():
                    limits[name] = int(values[0])
    except KafkaError:
        return {}
    finally:
        await admin.close()
    return limits


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """The partitions of ``topic``; none when the cluster's metadata does not name it within 2 s."""
    for _ in range(20):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return set()


class Refused(Exception):
    """The broker refused what ``redrive`` must do (an ACL, or no transactions): for ``explain``."""

    def __init__(self, error: BaseException, stage: Stage, resource: str) -> None:
        super().__init__(str(error))
        self.error, self.stage, self.resource = error, stage, resource


def _refusal(error: BaseException) -> bool:
    """True for an error no retry cures that the operator must hear about (a missing ACL)."""
    from aiokafka import errors as ke

    return isinstance(
        error,
        ke.TopicAuthorizationFailedError
        | ke.TransactionalIdAuthorizationFailed
        | ke.ClusterAuthorizationFailedError,
    )


async def _send(producer: Any, topic: str, msg: RedriveMessage | MarkerMessage) -> asyncio.Future[Any]:
    partition = msg.partition if isinstance(msg, MarkerMessage) else None
    future: asyncio.Future[Any] = await producer.send(
        topic, msg.value, key=msg.key, headers=list(msg.headers), partition=partition
    )
    return future


async def _outcomes(futures: Sequence[asyncio.Future[Any]]) -> list[BaseException | None]:
    """Each future's exception, or None once it was acknowledged."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


def _producer_config(settings: Settings, limits: dict[str, int]) -> dict[str, Any]:
    """The tools' producer, its batches no larger than any topic it writes to accepts: the broker
    refuses a whole batch over ``max.message.bytes``, and aiokafka neither splits it nor recovers
    the partition's idempotent sequence after it."""
    from service.kafka.clients import TOOL_LINGER_MS, Kafka

    config = Kafka.of(settings).producer_config(linger_ms=TOOL_LINGER_MS)
    config["max_batch_size"] = min([config["max_batch_size"], *limits.values()])
    return config


async def publish(
    settings: Settings,
    topic: str,
    messages: Sequence[tuple[Decision, RedriveMessage]],
    *,
    now: dt.datetime,
    limits: dict[str, int],
) -> tuple[set[str], int]:
    """At-least-once: publish every message and wait for the acknowledgements, then write the marker
    of each one acknowledged (never before: a marker must not claim a redrive that failed). Returns
    the ids that failed and how many were published but left without a marker."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from service.kafka.failures import Stage
    from service.kafka.topics import started

    failed: set[str] = set()
    if not messages:
        return failed, 0
    async with started(AIOKafkaProducer(**_producer_config(settings, limits))) as producer:
        sent: list[tuple[Decision, RedriveMessage, asyncio.Future[Any]]] = []
        for decision, msg in messages:
            try:
                sent.append((decision, msg, await _send(producer, topic, msg)))
            except KafkaError:
                failed.add(decision.dead_letter_id)
        done = []
        for (decision, _, _), error in zip(sent, await _outcomes([f for *_, f in sent]), strict=True):
            if error is None:
                done.append(decision)
            elif _refusal(error):
                raise Refused(error, Stage.SEND, topic)
            else:
                failed.add(decision.dead_letter_id)
        markers = []
        for decision in done:
            try:
                markers.append(await _send(producer, settings.dlq_topic, _marker(decision, topic, now)))
            except KafkaError:
                continue
        errors = await _outcomes(markers)
        if refused := next((e for e in errors if e is not None and _refusal(e)), None):
            raise Refused(refused, Stage.SEND, settings.dlq_topic)
        return failed, len(done) - errors.count(None)


def _marker(decision: Decision, topic: str, now: dt.datetime) -> MarkerMessage:
    return redrive_marker(decision, target_topic=topic, now=now)


TRANSACTION_SIZE = 500
"""Dead letters redriven per transaction: a failure costs at most this many a retry."""


def redrive_transactional_id(settings: Settings) -> str:
    """The one transactional id of every ``redrive`` over a dead-letter topic (exactly-once): a run
    fences the last one, finished, crashed or still running, before it reads."""
    prefix = settings.transactional_id_prefix or settings.group_id
    return f"{prefix}.redrive.{settings.dlq_topic}"


async def publish_in_transactions(
    producer: Any,
    dlq_topic: str,
    topic: str,
    messages: Sequence[tuple[Decision, RedriveMessage]],
    *,
    now: dt.datetime,
) -> set[str]:
    """Exactly-once: publish the messages, each with its marker, in transactions of at most
    ``TRANSACTION_SIZE``; return the ids that were not committed. A fenced producer (a later run
    took over) commits nothing more."""
    from aiokafka.errors import KafkaError, ProducerFenced

    from service.kafka.failures import Stage

    failed: set[str] = set()
    for first in range(0, len(messages), TRANSACTION_SIZE):
        chunk = messages[first : first + TRANSACTION_SIZE]
        try:
            failed |= await _transaction(producer, dlq_topic, topic, chunk, now)
        except (KafkaError, AssertionError) as exc:
            left = {d.dead_letter_id for d, _ in messages[first:]}
            if isinstance(exc, ProducerFenced | AssertionError):
                # A later run started the same transactional id: it redrives what this one did not.
                # (aiokafka's fenced producer refuses to change state with a bare AssertionError.)
                log.warning("redrive.fenced", not_committed=len(left))
            else:
                await _abort(producer)
                if _refusal(exc):
                    raise Refused(exc, Stage.SEND, topic) from exc
                log.warning("redrive.transaction_failed", error=repr(exc), not_committed=len(left))
            failed |= left
            break
    return failed


async def _transaction(
    producer: Any,
    dlq_topic: str,
    topic: str,
    chunk: Sequence[tuple[Decision, RedriveMessage]],
    now: dt.datetime,
) -> set[str]:
    """One transaction of messages and their markers; the ids of the messages the producer refused
    (too large for a request), which are left out. Raises ``KafkaError`` when anything sent fails:
    the caller aborts, and commits nothing more (aiokafka's idempotent producer does not recover
    the partition's sequence after a batch the broker refused)."""
    from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

    await producer.begin_transaction()
    failed: set[str] = set()
    futures: list[asyncio.Future[Any]] = []
    ended: BaseException | None = None
    for decision, msg in chunk:
        try:
            futures.append(await _send(producer, topic, msg))
        except KafkaError:  # refused before it was sent: nothing of it is in the transaction
            failed.add(decision.dead_letter_id)
            continue
        except IllegalOperation as exc:  # the transaction ended under it: fenced, see the sends
            ended = exc
            break
        try:
            futures.append(await _send(producer, dlq_topic, _marker(decision, topic, now)))
        except (KafkaError, IllegalOperation) as exc:
            ended = exc
            break
    errors = [e for e in await _outcomes(futures) if e is not None]
    if errors:
        raise next((e for e in errors if isinstance(e, ProducerFenced) or _refusal(e)), errors[0])
    if ended is not None:
        raise KafkaError(f"the transaction ended before it was committed: {ended!r}")
    await producer.commit_transaction()
    return failed


async def _abort(producer: Any) -> None:
    """Abort the open transaction, if the producer still can (a fenced one cannot, and need not)."""
    with contextlib.suppress(Exception):
        await producer.abort_transaction()


async def _plan(settings: Settings, options: RedriveOptions, target: str, limits: dict[str, int]) -> Plan:
    """Read the dead-letter topic, select, complete what must be read back from the input, and skip
    what the target topic would refuse (``limits``: ``record_limits``)."""
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
    if target in limits:
        skip_too_large(plan, limits[target])
    return plan


async def redrive(settings: Settings, options: RedriveOptions) -> Report:
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
    if options.dry_run:
        plan = await _plan(settings, options, target, limits)
        core = settings.limits
        succeeding = {
            d.dead_letter_id for d, msg in plan.messages if would_succeed(msg, core, topic=target, now=now)
        }
    elif settings.delivery == "exactly-once":
        async with _transactional_producer(settings, limits) as producer:
            plan = await _plan(settings, options, target, limits)
            failed = await publish_in_transactions(
                producer, settings.dlq_topic, target, plan.messages, now=now
            )
    else:
        plan = await _plan(settings, options, target, limits)
        failed, unmarked = await publish(settings, target, plan.messages, now=now, limits=limits)
    return build_report(
        plan,
        dlq_topic=settings.dlq_topic,
        target_topic=target,
        dry_run=options.dry_run,
        failed=failed,
        succeeding=succeeding,
        unmarked=unmarked,
    )


def _unless(fenced: type[BaseException], loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler, without the fenced producer's own errors: aiokafka leaves
    ``ProducerFenced`` on futures nobody awaits once it has told the sends (``redrive.fenced``).
    The class is bound beforehand: the handler also runs as the interpreter shuts down."""
    if not isinstance(context.get("exception"), fenced):
        loop.default_exception_handler(context)


@contextlib.asynccontextmanager
async def _transactional_producer(settings: Settings, limits: dict[str, int]) -> AsyncIterator[Any]:
    """The started transactional producer of ``redrive_transactional_id``. Starting it is
    InitProducerId: the broker aborts what an earlier run left open, and fences that run."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from service.kafka.clients import TRANSACTION_TIMEOUT_MS
    from service.kafka.failures import Stage

    transactional_id = redrive_transactional_id(settings)
    producer = AIOKafkaProducer(
        **{
            **_producer_config(settings, limits),
            "enable_idempotence": True,
            "transactional_id": transactional_id,
            "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
        }
    )
    try:
        try:
            await producer.start()
        except KafkaError as exc:
            raise Refused(exc, Stage.START_PRODUCER, transactional_id) from exc
        yield producer
    finally:
        try:
            await producer.stop()
        except Exception as exc:  # a fenced producer may fail to stop cleanly: the report still counts
            log.warning("redrive.producer_stop_failed", error=repr(exc))


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
    with tool_logging(settings):
        if (failure := preflight(Kafka.of(settings))) is not None:
            sys.stderr.write(f"marker-ingest redrive: {failure.line}\n")
            return ExitStatus.USAGE
        try:
            report = asyncio.run(redrive(settings, options))
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


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    """The connection arguments of a client of the tool."""
    from service.kafka.clients import Kafka

    return Kafka.of(settings).client_kwargs()
