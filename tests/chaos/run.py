"""One chaos run, inside the client namespace (``python -m tests.chaos`` starts it there).

Set-up: the three-broker cluster (a controller and three brokers, each in its own namespace;
replication factor 3, ``min.insync.replicas=2``), the topics, a check that a cut really cuts, the
instances, the feed. Then the nemesis for the scheduled time; then everything is healed, the feed
stops, the instances drain the input until the group's committed offsets reach its end, a final
SIGTERM stops them, and the Java reader and the checker judge the whole history.

Exit status: 0 the run passed, 1 a check failed (the service broke a promise), 3 the run itself
could not go on (the cluster did not come back, the network could not be verified).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.kafka.topics import create_topics
from tests.chaos import check, reader
from tests.chaos.feed import Feed
from tests.chaos.fleet import Fleet
from tests.chaos.history import History
from tests.chaos.nemesis import CLUSTER_FAULTS, SLOW_SECONDS, Nemesis
from tests.chaos.network import BROKERS, CLIENT, CONTROLLER, Network
from tests.faults.harness import committed, wait_until
from tests.kafka.cluster import KafkaCluster, kafka_version
from tests.support import Topics, service_env

GRACE_SECONDS = 10.0
T = TypeVar("T")
BROKER_SETTINGS = {"unclean.leader.election.enable": "false"}


@dataclass(frozen=True)
class Plan:
    """What to run: the seed, the mode, how long the nemesis acts, and the load."""

    seed: int
    mode: str
    seconds: float
    tag: str
    folder: Path
    instances: int = 3
    partitions: int = 6
    rate: float = 60.0
    drain_seconds: float = 300.0
    without: frozenset[str] = frozenset()

    def replay(self) -> str:
        """The command that replays this run."""
        return replay_command(self.seconds, self.seed, self.mode, self.without)


def replay_command(seconds: float, seed: int, mode: str, without: frozenset[str]) -> str:
    """The command line of ``python -m tests.chaos`` that replays a run."""
    command = f"python -m tests.chaos --seconds {seconds:g} --seed {seed} --mode {mode}"
    return command + "".join(f" --without {kind}" for kind in sorted(without))


def place(cluster: KafkaCluster, net: Network) -> None:
    """Put every node of the cluster in its namespace, listening on its own address."""
    assert cluster.controller is not None
    names = {cluster.controller.node_id: CONTROLLER} | {
        b.node_id: BROKERS[b.node_id - 1] for b in cluster.broker_nodes
    }
    controller = net.address(CONTROLLER)
    for node in cluster.nodes:
        here = net.address(names[node.node_id])
        props = node.properties
        for key in ("listeners", "advertised.listeners"):
            if key in props:
                props[key] = props[key].replace("127.0.0.1", here)
        props["controller.quorum.voters"] = props["controller.quorum.voters"].replace("127.0.0.1", controller)
        props["_host"] = here
        node.launch_prefix = net.prefix(names[node.node_id])


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread. Cancelled, it first waits for the thread to finish, so that the
    clean-up that follows sees (and stops) every process the call started."""
    call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await call
        raise


async def _ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def _drained(bootstrap: str, topics: Topics, partitions: int) -> tuple[bool, str]:
    """Whether the group's committed offsets are at the input's end; and the two, for the log."""
    ends = await _ends(bootstrap, topics.input, partitions)
    done = await committed(bootstrap, topics.group, topics.input, range(partitions))
    return all(done[p] == end for p, end in ends.items()), f"committed {done}, ends {ends}"


def _cluster(plan: Plan, net: Network) -> KafkaCluster:
    """The three-broker cluster, placed in its namespaces (not started)."""
    cluster = KafkaCluster(plan.folder / "kafka", brokers=3, extra=BROKER_SETTINGS)
    place(cluster, net)
    return cluster


async def _verify_cut(cluster: KafkaCluster, net: Network) -> None:
    """The partitions the nemesis makes are only as good as the cut: try one before relying on it."""
    b1, b2, b3 = (cluster.broker(i).bootstrap_servers for i in (1, 2, 3))
    await asyncio.to_thread(net.cut, "b1", ["b2"])
    await asyncio.to_thread(net.verify, "b1", [b2], [b3])
    await asyncio.to_thread(net.verify, CLIENT, [], [b1, b2, b3])
    await asyncio.to_thread(net.heal, "b1")
    await asyncio.to_thread(net.verify, "b1", [], [b2, b3])


async def _back_to_work(fleet: Fleet, feed: Feed, plan: Plan) -> list[str]:
    """After the heal: every instance up (one the heal restarted may still be importing on a loaded
    machine), and records fed after the healing, so that the service works again, not only drains.
    Returns what went wrong."""
    wrong = []
    try:
        await wait_until(
            lambda: all(i.count("service.started") for i in fleet.members()),
            within=180,
            what="every instance started",
        )
    except AssertionError:
        late = [i.label for i in fleet.members() if not i.count("service.started")]
        wrong.append(f"instances not started within 180 s of the heal: {late}")
    mark = len(feed.acked)
    await wait_until(
        lambda: len(feed.acked) >= mark + plan.rate * 5, within=120, what="feeding after the heal"
    )
    await feed.stop()
    return wrong


async def _drain(bootstrap: str, topics: Topics, plan: Plan, history: History) -> list[str]:
    """Until the group's committed offsets reach the input's end. Returns what went wrong."""
    state = ""

    async def drained() -> bool:
        nonlocal state
        done, state = await _drained(bootstrap, topics, plan.partitions)
        return done

    started = time.monotonic()
    try:
        await wait_until(drained, within=plan.drain_seconds, interval=2.0, what="the drain")
    except AssertionError:
        history.event("run.not_drained", state=state)
        return [f"the input was not drained within {plan.drain_seconds:g} s: {state}"]
    history.event("run.drained", seconds=round(time.monotonic() - started, 1))
    return []


async def _read(cluster: KafkaCluster, topics: Topics, plan: Plan) -> reader.Dump:
    """Everything, through the Java reader: the input, both outputs (read_committed in
    exactly-once, and read_uncommitted to count aborted records), the committed offsets."""
    outputs = [topics.output, topics.dlq]
    reads = [("read_uncommitted", topics.input)]
    reads += [("read_committed", t) for t in outputs] if plan.mode == "exactly-once" else []
    reads += [("read_uncommitted", t) for t in outputs]
    return await asyncio.to_thread(
        reader.read,
        cluster.lib,
        cluster.bootstrap_servers,
        reads,
        committed=(topics.group, topics.input),
        workdir=plan.folder,
    )


async def chaos(plan: Plan) -> int:
    """The run; returns the exit status."""
    net, history = Network(plan.tag), History(plan.folder)
    print(
        f"chaos run: seed {plan.seed}, {plan.mode}, {plan.seconds:g} s of nemesis; history in {plan.folder}"
    )
    cluster = _cluster(plan, net)
    classes = await blocking(reader.compiled, cluster.lib)
    history.event("run.reader_compiled", classes=str(classes))
    fleet: Fleet | None = None
    watch: asyncio.Task[None] | None = None
    try:
        await blocking(cluster.start, SLOW_SECONDS)
        bootstrap = cluster.bootstrap_servers
        history.event("run.cluster_started", kafka=kafka_version(), bootstrap=bootstrap)
        topics = Topics.unique("chaos")
        await create_topics(
            bootstrap,
            {topics.input: plan.partitions, topics.output: 3, topics.dlq: 3},
            replication_factor=3,
            configs={"min.insync.replicas": "2"},
        )
        await _verify_cut(cluster, net)
        history.event("run.partition_verified")

        env = service_env(
            bootstrap,
            topics,
            idempotence=True,
            INGEST_DELIVERY=plan.mode,
            INGEST_BATCH_MAX_MESSAGES="50",
            INGEST_SHUTDOWN_GRACE_SECONDS=f"{GRACE_SECONDS:g}",
            KAFKA_REQUEST_TIMEOUT_MS="10000",
        )
        fleet = Fleet(net, env, plan.folder, history, GRACE_SECONDS)
        first = [fleet.launch() for _ in range(plan.instances)]
        feed = Feed(
            bootstrap,
            topics.input,
            partitions=plan.partitions,
            rate=plan.rate,
            log=plan.folder / "sent.jsonl",
        )
        feed.start()
        await wait_until(
            lambda: any(i.count("record") for i in first),
            within=SLOW_SECONDS,
            what="the first record",
            detail=first[0].tail,
        )
        history.event("run.feeding", rate=plan.rate)

        watch = asyncio.create_task(fleet.watch())
        nemesis = Nemesis(
            plan.seed,
            cluster=cluster,
            net=net,
            fleet=fleet,
            history=history,
            seconds=plan.seconds,
            instances=plan.instances,
            without=plan.without,
        )
        try:
            await nemesis.run()
        finally:
            await nemesis.heal_all()
        wrong = await _back_to_work(fleet, feed, plan)
        history.event("run.feed_stopped", attempted=feed.attempted, acknowledged=len(feed.acked))
        wrong += await _drain(bootstrap, topics, plan, history)
        watch.cancel()
        fleet.crashes()
        await asyncio.gather(*(fleet.terminate(i, "final") for i in fleet.members()))

        verdict = check.check_run(
            await _read(cluster, topics, plan),
            check.Topics(topics.input, topics.output, topics.dlq),
            exactly_once=plan.mode == "exactly-once",
            attempted=feed.attempted,
            acked=feed.acked,
            stops=fleet.stops,
            grace=GRACE_SECONDS,
        )
        for text in wrong:
            verdict.fail("not back to work after the heal", text)
        verdict.figures["instances_started"] = len(fleet.instances)
        _summarize(plan, history, verdict)
        return 0 if verdict.ok else 1
    finally:
        if watch is not None:
            watch.cancel()
        if fleet is not None:
            fleet.kill_all()
        for name in Network.nodes():
            with contextlib.suppress(Exception):
                net.heal(name)
        for node in cluster.nodes:
            node.kill()
        history.close()


def _summarize(plan: Plan, history: History, verdict: check.Verdict) -> None:
    figures: dict[str, Any] = dict(verdict.figures)
    faults = dict(sorted(history.faults.items()))
    summary = {
        "seed": plan.seed,
        "mode": plan.mode,
        "nemesis_seconds": plan.seconds,
        "total_seconds": round(history.elapsed()),
        "kafka": kafka_version(),
        "faults": faults,
        "figures": figures,
        "result": "PASS" if verdict.ok else "FAIL",
        "failures": {
            k: {"count": verdict.counts[k], "examples": verdict.failures[k]} for k in verdict.counts
        },
        "plan": {k: str(v) for k, v in asdict(plan).items()},
    }
    (plan.folder / "summary.json").write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    f = figures.get
    dead = ", ".join(f"{k} {v:,}" for k, v in f("dead_letters", {}).items())
    aborted = (
        f"; records of aborted transactions {f('aborted_records'):,}" if "aborted_records" in figures else ""
    )
    lines = [
        f"chaos run {summary['result']}: seed {plan.seed}, {plan.mode}, Apache Kafka {kafka_version()}, "
        f"{plan.seconds / 60:.1f} min of nemesis ({summary['total_seconds'] / 60:.1f} min in all)",
        f"  faults ({sum(faults.values())}): " + ", ".join(f"{k} {v}" for k, v in faults.items()),
        f"  fed {f('messages_attempted', 0):,} messages ({f('messages_acknowledged', 0):,} acknowledged, "
        f"{f('messages_on_input', 0):,} on the input): {f('records', 0):,} records, "
        f"{f('articles', 0):,} articles, dead letters {dead}",
        f"  duplicates {f('duplicates', 0):,} (longest run {f('largest_redelivery', 'none')}){aborted}",
        f"  instances started {f('instances_started', 0)}; "
        "stops "
        + ", ".join(f"{k} {v}" for k, v in f("stops", {}).items())
        + f"; slowest stop {f('slowest_stop_seconds', 0)} s (exit {f('slowest_exit_seconds', 0)} s)",
    ]
    if not verdict.ok:
        lines.append(verdict.report())
        lines.append(f"  replay: {plan.replay()}; history kept in {plan.folder}")
    text = "\n".join(lines)
    (plan.folder / "summary.txt").write_text(text + "\n")
    history.event("run.result", result=summary["result"])
    print(text, flush=True)


async def _orphaned(run: asyncio.Task[int]) -> None:
    """Stop the run (and so its brokers and instances) if the process that started it dies."""
    parent = os.getppid()
    await wait_until(lambda: os.getppid() != parent, within=float("inf"), interval=1.0)
    run.cancel()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.chaos.run``: the run inside the client namespace (started by ``tests.chaos``)."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mode", required=True, choices=["at-least-once", "exactly-once"])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--without", action="append", default=[], choices=sorted(CLUSTER_FAULTS))
    args = parser.parse_args(argv)
    plan = Plan(
        args.seed,
        args.mode,
        args.seconds,
        args.tag,
        args.dir,
        instances=args.instances,
        rate=args.rate,
        without=frozenset(args.without),
    )
    # The run's own Kafka clients (the feed, the drain's polls) warn about every broker that goes away.
    logging.basicConfig(
        filename=plan.folder / "clients.log", level=logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        orphaned = asyncio.create_task(_orphaned(task))
        try:
            return await chaos(plan)
        finally:
            orphaned.cancel()

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        print("chaos run: stopped (SIGTERM, or the process that started it died)", file=sys.stderr)
        return 3
    except Exception as exc:
        print(
            f"chaos run: could not go on: {exc!r}\n  replay: {plan.replay()}; history in {plan.folder}",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
