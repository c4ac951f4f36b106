"""The nemesis: seeded random faults, in two lanes that run at once, so faults combine.

The cluster lane, one fault at a time, then a wait until the controller lists three brokers again:
a broker killed (kill -9) and restarted; a broker or the controller frozen (SIGSTOP, a long GC
pause) and thawed; the controller killed and restarted; a broker cut off from the other brokers
and the controller (clients still reach it), or isolated from every node. The instance lane: an
instance killed and restarted; frozen past its session timeout (a zombie) and thawed; cut off from
the cluster and healed; an instance added; one removed (SIGTERM); SIGTERM during an outage (a
cluster fault in place, or the instance's own partition), then restarted.

Each lane draws from its own generator seeded from the run's seed, so a seed replays the same
sequence of decisions (the moments shift with the machine's speed). Every partition is verified
with TCP probes before the run relies on it: what it cuts does not answer, what it spares does.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from tests.chaos.fleet import Fleet, Instance
from tests.chaos.history import History
from tests.chaos.network import BROKERS, CLIENT, CONTROLLER, SLOTS, Network
from tests.kafka.cluster import KafkaCluster, KafkaNode

# kind: (weight, shortest hold, longest hold) in seconds
CLUSTER_FAULTS = {
    "broker-kill": (3, 4.0, 20.0),
    "broker-pause": (3, 4.0, 20.0),
    "broker-partition": (2, 8.0, 25.0),
    "broker-isolate": (2, 8.0, 25.0),
    "controller-pause": (1, 3.0, 12.0),
    "controller-kill": (1, 2.0, 8.0),
}
SLOW_SECONDS = 300.0
"""How long a broker may take to listen again, or the cluster to list its brokers: generous, for a
machine shared with other test suites."""
INSTANCE_FAULTS = {
    "instance-kill": (3, 1.0, 8.0),
    "instance-zombie": (2, 12.0, 25.0),  # the consumer's session timeout is 10 s
    "instance-partition": (2, 12.0, 30.0),
    "instance-add": (1, 0.0, 0.0),
    "instance-remove": (1, 0.0, 0.0),
    "sigterm-in-outage": (1, 1.0, 4.0),
}


def _draw(rng: random.Random, faults: dict[str, tuple[int, float, float]], allowed: set[str]) -> str:
    kinds = sorted(k for k in faults if k in allowed)
    return rng.choices(kinds, weights=[faults[k][0] for k in kinds])[0]


class Nemesis:
    """Drives both lanes until ``seconds`` have passed; ``heal_all`` undoes whatever is left."""

    def __init__(
        self,
        seed: int,
        *,
        cluster: KafkaCluster,
        net: Network,
        fleet: Fleet,
        history: History,
        seconds: float,
        instances: int,
        without: frozenset[str] = frozenset(),
    ) -> None:
        self.cluster, self.net, self.fleet, self.history = cluster, net, fleet, history
        self.cluster_kinds = set(CLUSTER_FAULTS) - without
        """The cluster faults drawn (``without`` leaves some out: ``python -m tests.chaos --without``)."""
        self.instances = instances
        self.deadline = time.monotonic() + seconds
        self.cluster_rng = random.Random(f"{seed}:cluster")
        self.instance_rng = random.Random(f"{seed}:instances")
        self.outage: str | None = None
        """The cluster fault in place, if any (for a SIGTERM during an outage)."""

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def _hold(self, rng: random.Random, faults: dict[str, tuple[int, float, float]], kind: str) -> float:
        _, low, high = faults[kind]
        return max(0.0, min(rng.uniform(low, high), self._left()))

    async def run(self) -> None:
        """Both lanes, to the end of the schedule."""
        await asyncio.gather(self._cluster_lane(), self._instance_lane())

    # -- the cluster lane ------------------------------------------------------------------------

    def _node(self, name: str) -> KafkaNode:
        if name == CONTROLLER:
            assert self.cluster.controller is not None
            return self.cluster.controller
        return self.cluster.broker(BROKERS.index(name) + 1)

    def _targets(self, names: list[str]) -> list[str]:
        return [self._node(n).bootstrap_servers for n in names]

    async def _cluster_lane(self) -> None:
        rng = self.cluster_rng
        await asyncio.sleep(min(rng.uniform(3.0, 8.0), max(0.0, self._left())))
        # A broker restarted late would still be recovering when the schedule ends: stop earlier.
        while self._left() > 20:
            kind = _draw(rng, CLUSTER_FAULTS, self.cluster_kinds)
            hold = self._hold(rng, CLUSTER_FAULTS, kind)
            target = CONTROLLER if kind.startswith("controller") else rng.choice(BROKERS)
            self.history.event("fault", kind=kind, target=target, hold=round(hold, 1))
            self.outage = kind
            try:
                await self._cluster_fault(kind, target, hold)
            finally:
                self.outage = None
            self.history.event("healed", kind=kind, target=target)
            await asyncio.to_thread(self.cluster.wait_ready, SLOW_SECONDS)
            await asyncio.sleep(min(rng.uniform(2.0, 8.0), max(0.0, self._left())))

    async def _cluster_fault(self, kind: str, target: str, hold: float) -> None:
        node = self._node(target)
        if kind.endswith("-kill"):
            await asyncio.to_thread(node.kill)
            await asyncio.sleep(hold)
            node.start()
            await asyncio.to_thread(node.wait_listening, SLOW_SECONDS)
        elif kind.endswith("-pause"):
            node.pause()
            try:
                await asyncio.sleep(hold)
            finally:
                node.resume()
        else:
            others = [n for n in (CONTROLLER, *BROKERS) if n != target]
            clients_reach_it = kind == "broker-partition"
            peers = others if clients_reach_it else [n for n in Network.nodes() if n != target]
            await asyncio.to_thread(self.net.cut, target, peers)
            try:
                # From the cut broker no other cluster node answers. From the clients' side the
                # other brokers always answer, the cut one only in a broker-partition.
                rest = self._targets([n for n in BROKERS if n != target])
                await asyncio.to_thread(self.net.verify, target, self._targets(others), [])
                if clients_reach_it:
                    await asyncio.to_thread(self.net.verify, CLIENT, [], [*rest, *self._targets([target])])
                else:
                    await asyncio.to_thread(self.net.verify, CLIENT, self._targets([target]), rest)
                await asyncio.sleep(hold)
            finally:
                await asyncio.to_thread(self.net.heal, target)
            await asyncio.to_thread(self.net.verify, target, [], self._targets(others))

    # -- the instance lane -----------------------------------------------------------------------

    def _allowed(self) -> set[str]:
        members, running = len(self.fleet.members()), len(self.fleet.running())
        allowed = set(INSTANCE_FAULTS)
        if members >= min(self.instances + 1, len(SLOTS)):
            allowed.discard("instance-add")
        if members <= max(1, self.instances - 1) or running == 0:
            allowed.discard("instance-remove")
        if running == 0:
            allowed &= {"instance-add"}
        return allowed

    async def _instance_lane(self) -> None:
        rng = self.instance_rng
        await asyncio.sleep(min(rng.uniform(2.0, 6.0), max(0.0, self._left())))
        while self._left() > 5:
            allowed = self._allowed()
            if not allowed:
                await asyncio.sleep(1.0)
                continue
            kind = _draw(rng, INSTANCE_FAULTS, allowed)
            hold = self._hold(rng, INSTANCE_FAULTS, kind)
            running = self.fleet.running()
            victim = rng.choice(running) if running and kind != "instance-add" else None
            self.history.event(
                "fault", kind=kind, target=victim.label if victim else None, hold=round(hold, 1)
            )
            await self._instance_fault(kind, victim, hold)
            await asyncio.sleep(min(rng.uniform(2.0, 8.0), max(0.0, self._left())))

    async def _instance_fault(self, kind: str, victim: Instance | None, hold: float) -> None:
        if kind == "instance-add":
            self.fleet.launch()
            return
        assert victim is not None
        if kind == "instance-kill":
            self.fleet.kill(victim)
            self.history.event("instance.killed", instance=victim.label)
            await asyncio.sleep(hold)
            self.fleet.launch(victim.slot)
        elif kind == "instance-zombie":
            victim.state = "paused"
            victim.pause()
            try:
                await asyncio.sleep(hold)
            finally:
                victim.resume()
                if victim.state == "paused":
                    victim.state = "running"
            self.history.event("healed", kind=kind, target=victim.label)
        elif kind == "instance-partition":
            await self._cut_instance(victim, lambda: asyncio.sleep(hold))
            if victim.state == "cut":
                victim.state = "running"
            self.history.event("healed", kind=kind, target=victim.label)
        elif kind == "instance-remove":
            await self.fleet.terminate(victim, "remove")
        elif kind == "sigterm-in-outage":
            if self.outage is not None:
                await self.fleet.terminate(victim, f"sigterm-during-{self.outage}")
            else:

                async def stop() -> None:
                    await asyncio.sleep(hold)
                    await self.fleet.terminate(victim, "sigterm-while-cut-off")

                await self._cut_instance(victim, stop)
            self.fleet.launch(victim.slot)

    async def _cut_instance(self, victim: Instance, during: Callable[[], Awaitable[None]]) -> None:
        """Cut ``victim`` off from the cluster, verified, run ``during``, heal."""
        cluster = [CONTROLLER, *BROKERS]
        # Its endpoint answers the client before the cut (if it is up yet) and must go on answering.
        answered = (await asyncio.to_thread(self.net.connects, CLIENT, [victim.http]))[victim.http]
        victim.state = "cut"
        await asyncio.to_thread(self.net.cut, victim.slot, cluster)
        try:
            await asyncio.to_thread(self.net.verify, victim.slot, self._targets(cluster), [])
            if answered:
                await asyncio.to_thread(self.net.verify, CLIENT, [], [victim.http])
            await during()
        finally:
            await asyncio.to_thread(self.net.heal, victim.slot)

    # -- the end ---------------------------------------------------------------------------------

    async def heal_all(self) -> None:
        """Undo every fault: thaw and start every node, remove every cut, thaw every instance, and
        bring the instances back to the base count; then wait for the cluster."""
        for name in Network.nodes():
            await asyncio.to_thread(self.net.heal, name)
        for node in self.cluster.nodes:
            node.resume()
            if not node.running:
                node.start()
        for node in self.cluster.nodes:
            await asyncio.to_thread(node.wait_listening, SLOW_SECONDS)
        for inst in self.fleet.members():
            inst.resume()
            inst.state = "running"
        while len(self.fleet.members()) < self.instances:
            self.fleet.launch()
        await asyncio.to_thread(self.cluster.wait_ready, SLOW_SECONDS)
        self.history.event("healed.all", instances=[i.label for i in self.fleet.members()])
