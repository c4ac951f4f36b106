"""The service instances of a chaos run: ``python -m service run`` processes, each in a slot (a
network namespace of its own), started, killed, frozen and stopped by the nemesis; every stop and
its exit status is kept for the checker, and an instance that exits by itself is a crash."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.history import History
from tests.chaos.network import SLOTS, Network
from tests.faults.harness import ServiceProcess
from tests.support import SERVICE_CMD

HTTP_PORT = 8080
"""Each instance's metrics and health endpoint, on its slot's address (probed to check partitions)."""


@dataclass(frozen=True)
class Stop:
    """How an instance ended: ``how`` the run stopped it (or ``crash``) and its exit status. For a
    SIGTERM: ``seconds`` until the process was gone, ``stopped`` until the service logged
    ``service.stopped`` (None if it did not), and ``early`` when it came before the service logged
    ``service.starting``, that is possibly before its signal handlers were installed."""

    label: str
    how: str
    code: int | None
    seconds: float | None = None
    stopped: float | None = None
    early: bool = False


class Instance(ServiceProcess):
    """One service process in its slot's namespace. ``state``: running, paused, cut (partitioned),
    stopping, or gone."""

    def __init__(self, env: dict[str, str], log: Path, *, label: str, slot: str, prefix: list[str]) -> None:
        super().__init__(env, log)
        self.label, self.slot, self.prefix = label, slot, prefix
        self.state = "new"

    def start(self) -> Instance:
        """Start the process in its namespace (``ip netns exec`` execs: the pid is the service's)."""
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [*self.prefix, *SERVICE_CMD], env=self.env, stdout=subprocess.DEVNULL, stderr=err
            )
        self.started_at = time.monotonic()
        self.state = "running"
        return self

    @property
    def http(self) -> str:
        """Its endpoint's address, ``host:port``."""
        return f"{Network.address(self.slot)}:{HTTP_PORT}"


class Fleet:
    """Every instance of the run; the stops it saw."""

    def __init__(
        self, net: Network, env: dict[str, str], folder: Path, history: History, grace: float
    ) -> None:
        self.net, self.env, self.folder, self.history, self.grace = net, env, folder, history, grace
        self.instances: list[Instance] = []
        self.stops: list[Stop] = []

    def members(self) -> list[Instance]:
        """Instances that are (or will be again) members of the group: running, paused or cut."""
        return [i for i in self.instances if i.state in ("running", "paused", "cut")]

    def running(self) -> list[Instance]:
        """Instances free for the next fault."""
        return [i for i in self.instances if i.state == "running"]

    def launch(self, slot: str | None = None) -> Instance:
        """Start a new instance, in ``slot`` or the first free one."""
        busy = {i.slot for i in self.instances if i.alive}
        slot = slot or next(s for s in SLOTS if s not in busy)
        label = f"i{len(self.instances)}-{slot}"
        env = dict(self.env, INGEST_HTTP_PORT=str(HTTP_PORT))
        inst = Instance(
            env, self.folder / f"{label}.log", label=label, slot=slot, prefix=self.net.prefix(slot)
        )
        self.instances.append(inst.start())
        self.history.event("instance.started", instance=label, pid=inst.pid)
        return inst

    def kill(self, inst: Instance) -> None:
        """kill -9."""
        inst.state = "gone"
        inst.kill()
        self.stops.append(Stop(inst.label, "kill", inst.returncode))

    async def terminate(self, inst: Instance, how: str) -> Stop:
        """SIGTERM and wait for the exit (up to the grace period and a generous margin)."""
        inst.state = "stopping"
        early = inst.count("service.starting") == 0
        asked, sent = time.monotonic(), time.time()
        inst.terminate()
        assert inst.proc is not None
        try:
            code: int | None = await asyncio.to_thread(inst.proc.wait, self.grace + 30)
        except subprocess.TimeoutExpired:
            inst.kill()
            code = None
        stopped = [_epoch(e.get("timestamp")) for e in inst.events("service.stopped")]
        took = round(stopped[-1] - sent, 1) if stopped and stopped[-1] is not None else None
        stop = Stop(inst.label, how, code, round(time.monotonic() - asked, 1), took, early)
        inst.state = "gone"
        self.stops.append(stop)
        self.history.event(
            "instance.exited",
            instance=inst.label,
            how=how,
            code=stop.code,
            seconds=stop.seconds,
            stopped=stop.stopped,
            early=early,
        )
        return stop

    def crashes(self) -> list[Stop]:
        """Members that exited by themselves since the last call (each becomes a ``crash`` stop)."""
        found = []
        for inst in self.members():
            if not inst.alive:
                inst.state = "gone"
                stop = Stop(inst.label, "crash", inst.returncode)
                self.stops.append(stop)
                found.append(stop)
                self.history.event("instance.crashed", instance=inst.label, code=inst.returncode)
        return found

    async def watch(self) -> None:
        """Notice crashes while the run goes on (until cancelled)."""
        while True:
            self.crashes()
            await asyncio.sleep(0.5)

    def kill_all(self) -> None:
        """kill -9 every process still running (the end of a run, whatever happened)."""
        for inst in self.instances:
            if inst.alive:
                inst.resume()
                inst.kill()


def _epoch(stamp: object) -> float | None:
    """A log line's ISO timestamp (UTC) as seconds since the epoch."""
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
