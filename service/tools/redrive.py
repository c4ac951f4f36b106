"""``marker-ingest redrive``: re-publish dead-lettered input to the input topic, once it can be fixed.

The dead-letter topic is read to its end without joining a consumer group; the selected dead letters
are turned back into the input they came from (the record's text for a record-level dead letter, the
whole payload, byte for byte, for a payload-level one) and published with the original key and
headers, plus ``marker-ingest-redrive-count`` and ``marker-ingest-origin-id`` (the dead letter's id,
which the service gives the redriven records' events back). ``--dry-run`` re-parses instead of
publishing and reports how many would now succeed.

Functional core, imperative shell: ``plan_redrive``, ``build_report`` and the renderers decide and
never do I/O; ``redrive`` reads the topic and publishes; ``cmd_redrive`` translates arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.errors import ErrorCode
from schemas.events import (
    DROPPED_HEADER,
    ERROR_CODE_HEADER,
    ORIGIN_HEADER,
    REDRIVE_COUNT_HEADER,
    RecordDeadLettered,
)
from service import __version__
from service.core.events import Source, process_payload
from service.core.limits import Limits
from service.settings import Settings
from service.tools.command import (
    EXIT_DEAD_LETTERS,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_flags,
    build_settings,
    describe_kafka_error,
    topic_name,
)

DEFAULT_MAX_REDRIVES = 3

EXIT_INCOMPLETE = EXIT_DEAD_LETTERS


class SkipReason(StrEnum):
    """Why a selected dead letter was not (or would not be) redriven."""

    TRUNCATED = "truncated"
    """The raw copy is truncated, or the input's key or headers were dropped: the original is gone."""
    MAX_REDRIVES = "max_redrives"
    """Its redrive count is already at ``--max-redrives``."""
    INVALID_REDRIVE_COUNT = "invalid_redrive_count"
    """Its ``marker-ingest-redrive-count`` header is not a decimal count."""
    PUBLISH_FAILED = "publish_failed"
    """The broker did not acknowledge the redriven message."""


# --------------------------------------------------------------------------------------- the core


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic, as read: where it sits, and its key, value and headers."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters to select. Every bound is inclusive except ``until``."""

    codes: frozenset[ErrorCode] = frozenset()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    limit: int | None = None

    def matches(self, event: RecordDeadLettered) -> bool:
        """True when ``event`` passes every filter but the limit.

        ``codes`` match the error code; ``since <= time < until`` the dead letter's ``time``;
        ``partition`` and ``from_offset <= offset <= to_offset`` its source coordinates.
        """
        src = event.source
        return (
            (not self.codes or event.error.code in self.codes)
            and (self.since is None or event.time >= self.since)
            and (self.until is None or event.time < self.until)
            and (self.partition is None or src.partition == self.partition)
            and (self.from_offset is None or src.offset >= self.from_offset)
            and (self.to_offset is None or src.offset <= self.to_offset)
        )


@dataclass(frozen=True, slots=True)
class RedriveMessage:
    """What goes back to the input topic for one dead letter."""

    key: bytes | None
    value: bytes | None
    """None when the input's value was null."""
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """One selected dead letter: its message, or why it is skipped."""

    dead_letter_id: str
    dlq_partition: int
    dlq_offset: int
    code: ErrorCode
    scope: str
    redrive_count: int | None
    message: RedriveMessage | None
    skip: SkipReason | None = None


@dataclass(slots=True)
class Plan:
    """What a redrive will do: every selected dead letter, in dead-letter-topic order."""

    read: int = 0
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0
    decisions: list[Decision] = field(default_factory=list)

    @property
    def messages(self) -> list[tuple[Decision, RedriveMessage]]:
        """The decisions that publish something, with their message."""
        return [(d, d.message) for d in self.decisions if d.message is not None]


def redrive_count(headers: Iterable[tuple[str, bytes]]) -> int | None:
    """The ``marker-ingest-redrive-count`` of a dead letter (0 without the header); None if malformed."""
    value: bytes | None = None
    for name, raw in headers:
        if name == REDRIVE_COUNT_HEADER:
            value = raw
    if value is None:
        return 0
    text = value.decode("ascii", errors="replace")
    return int(text) if text.isdecimal() and text.isascii() else None


_BOM = "\ufeff".encode()


def original_bytes(event: RecordDeadLettered) -> bytes | None:
    """The input the dead letter was made from, or None when its raw copy is incomplete (or there
    is none: a null value, see ``was_null``).

    A record-level dead letter holds the record's text; a payload-level one the payload as text or,
    when it was not UTF-8, as base64. Either way the bytes come back meaning what they meant: a
    record whose text starts with U+FEFF is given a byte-order mark before it, since the service
    takes a message's leading U+FEFF for one.
    """
    raw = event.raw
    if raw.truncated:
        return None
    if raw.text is not None:
        data = raw.text.encode("utf-8")
    elif raw.base64 is not None:
        try:
            data = base64.b64decode(raw.base64, validate=True)
        except binascii.Error:
            return None
    else:
        return None
    if len(data) != raw.size_bytes:
        return None
    if event.scope == "record" and data.startswith(_BOM):
        return _BOM + data
    return data


def was_null(event: RecordDeadLettered) -> bool:
    """True when the dead letter was made from a null message value (no text and no base64)."""
    raw = event.raw
    return raw.text is None and raw.base64 is None and raw.size_bytes == 0 and not raw.truncated


def original_key(event: RecordDeadLettered) -> bytes | None:
    """The key of the input message (``source.key_base64``)."""
    key = event.source.key_base64
    return None if key is None else base64.b64decode(key)


_NOT_CARRIED = frozenset({ERROR_CODE_HEADER, REDRIVE_COUNT_HEADER, ORIGIN_HEADER, DROPPED_HEADER})


def redriven_headers(
    headers: Iterable[tuple[str, bytes]], count: int, origin_id: str | None = None
) -> tuple[tuple[str, bytes], ...]:
    """The input's headers as the dead letter carried them, with the redrive count set to ``count``
    and, when given, ``marker-ingest-origin-id`` set to ``origin_id``."""
    kept = [(k, v) for k, v in headers if k not in _NOT_CARRIED]
    if origin_id is not None:
        kept.append((ORIGIN_HEADER, origin_id.encode()))
    kept.append((REDRIVE_COUNT_HEADER, str(count).encode()))
    return tuple(kept)


def _identity(event: RecordDeadLettered) -> tuple[bool, str]:
    """What makes two dead letters the same input: the id (which a redriven input keeps) and scope.

    The dead letters of a redelivered message, and those of the same input redriven again, share it.
    """
    return (event.scope == "payload", event.id)


def _rank(count: int | None) -> float:
    """Which copy of one input to redrive: the most redriven; a malformed count first (it is skipped)."""
    return float("inf") if count is None else count


def parse_dead_letter(value: bytes | None) -> RecordDeadLettered | None:
    """The dead-letter event in a record's value; None when it is not one."""
    if value is None:
        return None
    try:
        return RecordDeadLettered.model_validate_json(value)
    except ValidationError:
        return None


def plan_redrive(
    records: Iterable[DeadLetterRecord], filters: Filters, *, max_redrives: int = DEFAULT_MAX_REDRIVES
) -> Plan:
    """Select the dead letters to redrive and decide, for each, its message or why it is skipped.

    Copies of one input (the same payload, or the same record, redelivered or redriven again) are
    selected once, as the copy with the highest redrive count, so that ``--max-redrives`` holds;
    the rest count as duplicates. ``filters.limit`` bounds the number selected (reading stops
    there). Records that are not dead-letter events are counted as unreadable and never selected.
    """
    plan = Plan()
    seen: dict[tuple[bool, str], int] = {}
    for rec in records:
        if filters.limit is not None and len(plan.decisions) >= filters.limit:
            break
        plan.read += 1
        event = parse_dead_letter(rec.value)
        if event is None:
            plan.unreadable.append((rec.partition, rec.offset))
            continue
        if not filters.matches(event):
            continue
        identity = _identity(event)
        decision = _decide(rec, event, max_redrives)
        position = seen.get(identity)
        if position is None:
            seen[identity] = len(plan.decisions)
            plan.decisions.append(decision)
            continue
        plan.duplicates += 1
        if _rank(decision.redrive_count) > _rank(plan.decisions[position].redrive_count):
            plan.decisions[position] = decision
    return plan


def _decide(rec: DeadLetterRecord, event: RecordDeadLettered, max_redrives: int) -> Decision:
    count = redrive_count(rec.headers)
    null = was_null(event)
    data = None if null else original_bytes(event)
    dropped = any(name == DROPPED_HEADER for name, _ in rec.headers)
    skip: SkipReason | None = None
    if count is None:
        skip = SkipReason.INVALID_REDRIVE_COUNT
    elif count >= max_redrives:
        skip = SkipReason.MAX_REDRIVES
    elif (data is None and not null) or dropped:
        skip = SkipReason.TRUNCATED
    message = None
    if skip is None and count is not None:
        # A key over 4 KiB is not copied into key_base64; the dead letter's own key is the input's.
        key = original_key(event) if event.source.key_base64 is not None else rec.key
        message = RedriveMessage(key, data, redriven_headers(rec.headers, count + 1, event.id))
    return Decision(
        dead_letter_id=event.id,
        dlq_partition=rec.partition,
        dlq_offset=rec.offset,
        code=event.error.code,
        scope=event.scope,
        redrive_count=count,
        message=message,
        skip=skip,
    )


def would_succeed(message: RedriveMessage, limits: Limits, *, topic: str, now: dt.datetime) -> bool:
    """True when the current core turns the message into article events only."""
    source = Source(topic=topic, partition=0, offset=0, key=message.key)
    outcomes = process_payload(message.value, source, limits, now=now, version=__version__)
    return all(o.error is None for o in outcomes)


@dataclass(slots=True)
class CodeCounts:
    """The report's line for one error code."""

    selected: int = 0
    redriven: int = 0
    would_succeed: int = 0
    skipped: int = 0


@dataclass(slots=True)
class Report:
    """What a redrive did (or, in a dry run, would do)."""

    dlq_topic: str
    target_topic: str
    dry_run: bool
    read: int
    unreadable: int
    duplicates: int
    selected: int
    redriven: int
    would_succeed: int | None
    skipped: dict[str, int]
    by_code: dict[str, CodeCounts]
    skipped_dead_letters: list[dict[str, Any]]

    @property
    def exit_status(self) -> int:
        """0 when every selected dead letter was (or would be) redriven, 1 when some were skipped."""
        return EXIT_INCOMPLETE if self.skipped else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return {
            "dlq_topic": self.dlq_topic,
            "target_topic": self.target_topic,
            "dry_run": self.dry_run,
            "read": self.read,
            "unreadable": self.unreadable,
            "duplicates": self.duplicates,
            "selected": self.selected,
            "redriven": self.redriven,
            "would_succeed": self.would_succeed,
            "skipped": self.skipped,
            "by_code": {
                code: {
                    "selected": c.selected,
                    "redriven": c.redriven,
                    "would_succeed": c.would_succeed if self.dry_run else None,
                    "skipped": c.skipped,
                }
                for code, c in self.by_code.items()
            },
            "skipped_dead_letters": self.skipped_dead_letters,
            "exit_status": self.exit_status,
        }


def build_report(
    plan: Plan,
    *,
    dlq_topic: str,
    target_topic: str,
    dry_run: bool,
    failed: Iterable[str] = (),
    succeeding: Iterable[str] = (),
) -> Report:
    """Count the plan's decisions, given the ids whose publish ``failed`` and (in a dry run) the ids
    that would now be ``succeeding``."""
    failed_ids, ok_ids = set(failed), set(succeeding)
    skipped: Counter[str] = Counter()
    by_code: dict[str, CodeCounts] = {}
    skipped_list: list[dict[str, Any]] = []
    redriven = 0
    for d in plan.decisions:
        counts = by_code.setdefault(d.code.value, CodeCounts())
        counts.selected += 1
        reason = d.skip
        if reason is None and d.dead_letter_id in failed_ids:
            reason = SkipReason.PUBLISH_FAILED
        if reason is not None:
            counts.skipped += 1
            skipped[reason.value] += 1
            skipped_list.append(
                {
                    "id": d.dead_letter_id,
                    "code": d.code.value,
                    "scope": d.scope,
                    "reason": reason.value,
                    "redrive_count": d.redrive_count,
                    "dlq_partition": d.dlq_partition,
                    "dlq_offset": d.dlq_offset,
                }
            )
            continue
        redriven += 1
        counts.redriven += 1
        if d.dead_letter_id in ok_ids:
            counts.would_succeed += 1
    return Report(
        dlq_topic=dlq_topic,
        target_topic=target_topic,
        dry_run=dry_run,
        read=plan.read,
        unreadable=len(plan.unreadable),
        duplicates=plan.duplicates,
        selected=len(plan.decisions),
        redriven=redriven,
        would_succeed=sum(c.would_succeed for c in by_code.values()) if dry_run else None,
        skipped=dict(sorted(skipped.items())),
        by_code=dict(sorted(by_code.items())),
        skipped_dead_letters=skipped_list,
    )


_SKIPPED_SHOWN = 20

_REASON_TEXT = {
    SkipReason.TRUNCATED.value: "truncated raw copy, cannot be redriven faithfully",
    SkipReason.MAX_REDRIVES.value: "redrive limit reached",
    SkipReason.INVALID_REDRIVE_COUNT.value: f"malformed {REDRIVE_COUNT_HEADER} header",
    SkipReason.PUBLISH_FAILED.value: "publish failed",
}


def render_text(report: Report) -> str:
    """The human-readable summary."""
    r = report
    mode = " (dry run: nothing published)" if r.dry_run else ""
    lines = [f"redrive {r.dlq_topic} -> {r.target_topic}{mode}"]
    extra = []
    if r.duplicates:
        extra.append(f"{r.duplicates} duplicate(s) of selected ones")
    if r.unreadable:
        extra.append(f"{r.unreadable} unreadable record(s) ignored")
    lines.append(
        f"read {r.read} record(s), selected {r.selected} dead letter(s)"
        + (f" ({', '.join(extra)})" if extra else "")
    )
    if r.dry_run:
        lines.append(f"would redrive {r.redriven}; {r.would_succeed} would now succeed")
    else:
        lines.append(f"redriven {r.redriven}")
    skipped = sum(r.skipped.values())
    if skipped:
        lines.append(f"skipped {skipped}: " + ", ".join(f"{k}={n}" for k, n in r.skipped.items()))
    if r.by_code:
        lines.append("by code:")
        width = max(len(code) for code in r.by_code)
        for code, c in r.by_code.items():
            would = f"  would succeed {c.would_succeed:>5}" if r.dry_run else ""
            verb = "to redrive" if r.dry_run else "redriven"
            lines.append(
                f"  {code:<{width}}  selected {c.selected:>5}  {verb} {c.redriven:>5}{would}"
                f"  skipped {c.skipped:>5}"
            )
    if r.skipped_dead_letters:
        lines.append("skipped dead letters:")
        for item in r.skipped_dead_letters[:_SKIPPED_SHOWN]:
            count = "" if item["redrive_count"] is None else f", redrive count {item['redrive_count']}"
            lines.append(
                f"  {item['id']} ({item['code']}, dead-letter partition {item['dlq_partition']} "
                f"offset {item['dlq_offset']}{count}): {_REASON_TEXT[item['reason']]}"
            )
        if len(r.skipped_dead_letters) > _SKIPPED_SHOWN:
            lines.append(f"  ... and {len(r.skipped_dead_letters) - _SKIPPED_SHOWN} more (see --json)")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The machine-readable summary: one JSON object."""
    return orjson.dumps(report.as_dict()).decode() + "\n"


# --------------------------------------------------------------------------------------- the shell


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    """Everything a redrive is told besides the settings."""

    filters: Filters = Filters()
    target_topic: str | None = None
    max_redrives: int = DEFAULT_MAX_REDRIVES
    dry_run: bool = False


async def read_dead_letters(settings: Settings) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic, without joining a consumer group."""
    from service.delivery.topics import read_topic

    kwargs = settings.kafka_client_kwargs()
    bootstrap = kwargs.pop("bootstrap_servers")
    kwargs["max_partition_fetch_bytes"] = max(1024 * 1024, settings.max_event_bytes + 65536)
    records = await read_topic(bootstrap, settings.dlq_topic, client_kwargs=kwargs)
    return [DeadLetterRecord(r.partition, r.offset, r.key, r.value, tuple(r.headers or ())) for r in records]


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
    plan = plan_redrive(await read_dead_letters(settings), options.filters, max_redrives=options.max_redrives)
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
        f"{REDRIVE_COUNT_HEADER} incremented. Exit 0 when every selected dead letter was redriven "
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
