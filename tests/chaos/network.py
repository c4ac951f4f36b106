"""Private network namespaces for the chaos run: one per node, joined by a bridge, cut with iptables.

Every node (the controller, each broker, each service slot, and the client: the run itself, its
feeder and its reader) lives in a network namespace of its own, ``chaos<pid>-<node>``, with one
address on a bridge that lives in a hub namespace. A partition is a pair of iptables DROP rules per
peer (source and destination) in the cut node's own namespace, in a chain ``chaos`` that INPUT and
OUTPUT jump to; healing flushes the chain. Nothing is created in, or changed on, the host's own
network: the veth pairs are made inside the hub with their far end placed straight into the node's
namespace. ``Network.destroy`` kills whatever still runs inside and deletes the namespaces.

Needs root, ``ip`` (iproute2) and ``iptables`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

SUBNET = "10.99.0"
CONTROLLER = "ctl"
BROKERS = ("b1", "b2", "b3")
CLIENT = "client"
SLOTS = tuple(f"s{i}" for i in range(6))
"""Service slots: an instance runs in one; a restarted instance keeps its slot."""

_OCTETS = {CLIENT: 2, CONTROLLER: 10, **{b: 11 + i for i, b in enumerate(BROKERS)}}
_OCTETS.update({s: 20 + i for i, s in enumerate(SLOTS)})
_HUB = "hub"
_NAME = re.compile(r"^chaos(\d+)-")

PROBE = """
import concurrent.futures, socket, sys
def ok(target):
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=float(sys.argv[1])):
            return "1"
    except OSError:
        return "0"
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    print("".join(pool.map(ok, sys.argv[2:])))
"""


class NetworkUnavailable(RuntimeError):
    """Raised when the namespaces cannot be made or a partition does not cut what it should."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetworkUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why the namespaces cannot be made here (not root, no ``ip`` or ``iptables``), else None."""
    if os.geteuid() != 0:
        return "the chaos run makes network namespaces, which needs root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y {'iproute2' if tool == 'ip' else tool})"
    probe = f"chaos{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
        done = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-w", "-N", "chaos"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            return f"iptables does not work in a network namespace: {done.stderr.strip()}"
    except (NetworkUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a network namespace: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Network:
    """The namespaces of one run, named after ``tag`` (``chaos<pid of the creating process>``)."""

    tag: str

    @classmethod
    def for_this_process(cls) -> Network:
        """The network of a run created by this process."""
        return cls(f"chaos{os.getpid()}")

    @staticmethod
    def nodes() -> tuple[str, ...]:
        """Every node that gets a namespace."""
        return (CLIENT, CONTROLLER, *BROKERS, *SLOTS)

    def ns(self, node: str) -> str:
        """The namespace of ``node``."""
        return f"{self.tag}-{node}"

    @staticmethod
    def address(node: str) -> str:
        """The node's address on the bridge."""
        return f"{SUBNET}.{_OCTETS[node]}"

    def prefix(self, node: str) -> list[str]:
        """The command that runs a process in ``node``'s namespace (it execs: the pid stays)."""
        return ["ip", "netns", "exec", self.ns(node)]

    def create(self) -> Network:
        """Make the hub with its bridge and every node's namespace, address and ``chaos`` chain."""
        hub = self.ns(_HUB)
        try:
            _ip("netns", "add", hub)
            _ip("-n", hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", hub, "link", "set", "br0", "up")
            for node in self.nodes():
                ns = self.ns(node)
                _ip("netns", "add", ns)
                _ip(
                    "-n", hub, "link", "add", f"v-{node}", "type", "veth", "peer", "name", "eth0", "netns", ns
                )
                _ip("-n", hub, "link", "set", f"v-{node}", "master", "br0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                self._iptables(node, "-N", "chaos")
                self._iptables(node, "-A", "INPUT", "-j", "chaos")
                self._iptables(node, "-A", "OUTPUT", "-j", "chaos")
        except BaseException:
            self.destroy()
            raise
        return self

    def _iptables(self, node: str, *args: str) -> None:
        cmd = [*self.prefix(node), "iptables", "-w", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise NetworkUnavailable(f"iptables {' '.join(args)} in {node}: {done.stderr.strip()}")

    def cut(self, node: str, peers: list[str]) -> None:
        """Drop every packet between ``node`` and each of ``peers`` (both ways, open connections too)."""
        for peer in peers:
            self._iptables(node, "-A", "chaos", "-s", self.address(peer), "-j", "DROP")
            self._iptables(node, "-A", "chaos", "-d", self.address(peer), "-j", "DROP")

    def heal(self, node: str) -> None:
        """Remove every cut of ``node``."""
        self._iptables(node, "-F", "chaos")

    def connects(self, node: str, targets: list[str], timeout: float = 1.5) -> dict[str, bool]:
        """Which of ``targets`` (``host:port``) a TCP connection from ``node``'s namespace reaches."""
        cmd = [*self.prefix(node), sys.executable, "-S", "-c", PROBE, str(timeout), *targets]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, check=False)
        answer = done.stdout.strip()
        if done.returncode != 0 or len(answer) != len(targets):
            raise NetworkUnavailable(f"the probe from {node} failed: {done.stderr.strip()}")
        return {t: flag == "1" for t, flag in zip(targets, answer, strict=True)}

    def verify(self, node: str, cut_off: list[str], reachable: list[str]) -> None:
        """Check a partition: from ``node`` none of ``cut_off`` answers, all of ``reachable`` do
        (``host:port`` targets that listen). Raises ``NetworkUnavailable`` otherwise."""
        seen = self.connects(node, [*cut_off, *reachable])
        leaks = [t for t in cut_off if seen[t]]
        lost = [t for t in reachable if not seen[t]]
        if leaks or lost:
            raise NetworkUnavailable(
                f"the partition of {node} is wrong: still reaches {leaks}, cannot reach {lost}"
            )

    def pids(self) -> list[int]:
        """Every process running in one of the run's namespaces."""
        found: list[int] = []
        for node in (*self.nodes(), _HUB):
            done = _ip("netns", "pids", self.ns(node), check=False)
            found += [int(p) for p in done.stdout.split() if p.isdigit()]
        return found

    def destroy(self) -> None:
        """Kill every process left in the namespaces, then delete them (safe to call twice)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        existing = set(_ip("netns", "list", check=False).stdout.split())
        for node in (*self.nodes(), _HUB):
            if self.ns(node) in existing:
                _ip("netns", "del", self.ns(node), check=False)

    @staticmethod
    def sweep_stale() -> list[str]:
        """Destroy the namespaces of earlier runs whose creating process is gone; their tags."""
        names = _ip("netns", "list", check=False).stdout.split()
        stale = set()
        for name in names:
            match = _NAME.match(name)
            if match and not _alive(int(match.group(1))):
                stale.add(f"chaos{match.group(1)}")
        for tag in sorted(stale):
            Network(tag).destroy()
        return sorted(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
