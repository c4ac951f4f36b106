"""How ``marker-ingest redrive`` publishes: at-least-once, the messages then the marker of each one
acknowledged (``publish``); exactly-once, each message with its marker in transactions of a producer
that fenced every earlier run when it started (``transactional_producer``,
``publish_in_transactions``). A write the broker refuses for good raises ``Refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from service.settings import Settings
from service.tools.redrive_messages import MarkerMessage, RedriveMessage
from service.tools.redrive_plan import Decision, redrive_marker

if TYPE_CHECKING:
    from service.kafka.failures import Stage

log = structlog.get_logger("marker_ingest")


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


@contextlib.asynccontextmanager
async def transactional_producer(settings: Settings, limits: dict[str, int]) -> AsyncIterator[Any]:
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
