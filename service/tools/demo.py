"""``marker-ingest demo``: the whole job on an embedded default, end to end, in one command.

Starts the bundled Tansu broker, creates the topics, pushes the sample feed (or your files), runs the
service until the input is drained, and shows the article events and dead letters that came out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
from aiokafka.errors import KafkaError

from schemas.events import REDRIVEN_HEADER
from service.delivery.ingestor import Ingestor
from service.errors import ExitStatus
from service.kafka.clients import Kafka
from service.kafka.connection import explain
from service.kafka.failures import Stage
from service.kafka.topics import create_topics, read_topic
from service.ops.logs import configure_logging
from service.settings import Settings, load_settings
from service.tools.broker import EmbeddedBroker
from service.tools.command import describe_kafka_error, display_name
from service.tools.produce import produce_files
from service.tools.produce_messages import BadPath, NothingToPush, collect_files, shown

SAMPLE_FEED = Path(__file__).parent.parent / "samples" / "feed"


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _NoBroker(Exception):
    """The embedded broker did not start."""


@contextlib.contextmanager
def _broker(bootstrap_servers: str | None) -> Iterator[str]:
    if bootstrap_servers:
        yield bootstrap_servers
        return
    broker = EmbeddedBroker()
    try:
        broker.start()
    except (RuntimeError, OSError) as exc:
        raise _NoBroker(f"cannot start the embedded Tansu broker: {exc}") from exc
    try:
        _say(f"started the embedded Tansu broker on {broker.bootstrap_servers}")
        yield broker.bootstrap_servers
    finally:
        broker.stop()


async def _demo(settings: Settings, files: list[Path]) -> int:
    await create_topics(
        settings.kafka_bootstrap_servers,
        {settings.input_topic: 4, settings.output_topic: 4, settings.dlq_topic: 1},
        client_kwargs=Kafka.of(settings).client_kwargs(),
    )
    _say(
        f"created topics {settings.input_topic} (4 partitions), {settings.output_topic}, {settings.dlq_topic}"
    )
    report = await produce_files(settings, files)
    _say(f"pushed {report.files} file(s), {report.bytes} bytes, to {settings.input_topic}")
    for path, why in report.refused + report.failed:
        _say(f"  not pushed: {shown(path)}: {why}")
    _say("running marker-ingest until the input is drained...")
    status = await Ingestor(settings).run()
    kwargs = Kafka.of(settings).client_kwargs()
    bootstrap = kwargs.pop("bootstrap_servers")
    articles = await read_topic(bootstrap, settings.output_topic, client_kwargs=kwargs)
    dead = [
        r  # redrive markers share the topic: they are not dead letters
        for r in await read_topic(bootstrap, settings.dlq_topic, client_kwargs=kwargs)
        if not any(name == REDRIVEN_HEADER for name, _ in r.headers or ())
    ]
    _say()
    _say(f"{len(articles)} article event(s) on {settings.output_topic}:")
    for rec in sorted(articles, key=lambda r: orjson.loads(r.value)["id"]):
        ev = orjson.loads(rec.value)
        d = ev["data"]
        extra = f"  extra={d['extra']}" if d["extra"] else ""
        title = d["title"][:60]
        _say(f"  fn={d['fn']:<6} {d['date']}  {title!r}  ({len(d['text'])} chars){extra}  id={ev['id']}")
    _say()
    _say(f"{len(dead)} dead letter(s) on {settings.dlq_topic}:")
    for rec in sorted(dead, key=lambda r: orjson.loads(r.value)["id"]):
        ev = orjson.loads(rec.value)
        err = ev["error"]
        where = "".join(f" {k}={err[k]}" for k in ("field", "position") if err[k] is not None)
        key = rec.key.decode(errors="replace").removeprefix(f"{SAMPLE_FEED}/") if rec.key else "-"
        _say(f"  {err['code']:<19}{where:<28} file={key}: {err['message']}")
    _say()
    _say("one event per record; see docs/contracts.md for the contracts of both topics.")
    return status


def _fail(line: str) -> None:
    sys.stderr.write(f"marker-ingest demo: {line}\n")


@contextlib.contextmanager
def _quiet_kafka_client(quiet: bool) -> Iterator[None]:
    """Without ``--verbose``, the Kafka client's own lines are not shown: a failure is said once, in
    the demo's own line (an unreachable broker was a JSON line, then the same error again)."""
    client = logging.getLogger("aiokafka")
    level = client.level
    if quiet:
        client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client.setLevel(level)


def run_demo(paths: list[str], bootstrap_servers: str | None, verbose: bool) -> int:
    """Run the demo; returns the exit status (2 for a bad path, 1 when the broker fails it)."""
    configure_logging("auto", "INFO" if verbose else "WARNING")
    with _quiet_kafka_client(not verbose):
        return _run_demo(paths, bootstrap_servers)


def _run_demo(paths: list[str], bootstrap_servers: str | None) -> int:
    try:
        files = collect_files(paths or [SAMPLE_FEED])
    except BadPath as exc:
        path, why = exc.args
        _fail(f"cannot read {display_name(path)}: {why}")
        return ExitStatus.USAGE
    except NothingToPush as exc:
        _fail(f"nothing to push under {display_name(str(exc))} (no files; hidden ones are skipped)")
        return ExitStatus.USAGE
    overrides: dict[str, object] = {
        "input_topic": "demo.news.raw",
        "output_topic": "demo.news.articles",
        "dlq_topic": "demo.news.dead-letters",
        "group_id": "marker-ingest-demo",
        "burst": True,
        "burst_idle_seconds": 5.0,
    }
    if bootstrap_servers is None:
        # Tansu rejects InitProducerId v0: the embedded broker needs idempotence off.
        overrides["kafka_enable_idempotence"] = False
    else:
        overrides["kafka_bootstrap_servers"] = bootstrap_servers
    # Bad settings fail before a broker is started.
    settings = load_settings(overrides, flags={"kafka_bootstrap_servers": "--bootstrap-servers"})
    try:
        with _broker(bootstrap_servers) as bootstrap:
            settings = load_settings({**overrides, "kafka_bootstrap_servers": bootstrap})
            return asyncio.run(_demo(settings, files))
    except KafkaError as exc:
        failure = explain(exc, Stage.START_PRODUCER, Kafka.of(settings))
        if failure is not None:
            _fail(failure.line)
            return ExitStatus.USAGE
        where = bootstrap_servers or "the embedded broker"
        _fail(f"the broker at {where} failed: {describe_kafka_error(exc)}")
        return ExitStatus.FAILED
    except _NoBroker as exc:
        _fail(str(exc))
        return ExitStatus.FAILED
