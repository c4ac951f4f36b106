"""Run the chaos run from the command line, for as long as you like.

    python -m tests.chaos --minutes 30 --seed 1234 --mode exactly-once
    python -m tests.chaos --seconds 150 --mode at-least-once        # a random seed, printed

Needs root (it makes network namespaces), ``ip``, ``iptables``, Java with ``javac``, and the Kafka
jars (fetched with Maven the first time, as for the test brokers). It ends with a summary to paste
into docs/guarantees.md. Exit status: 0 passed, 1 a check failed, 2 it cannot run here, 3 the run
itself broke down. A run that does not pass keeps its folder (events.jsonl, the service and broker
logs, the reader's dump) and prints the command that replays it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.chaos import network, reader
from tests.chaos.nemesis import CLUSTER_FAULTS
from tests.chaos.network import CLIENT, Network
from tests.chaos.run import replay_command

ROOT = Path(__file__).resolve().parents[2]


def unavailable_reason() -> str | None:
    """Why the chaos run cannot run on this machine, else None."""
    return network.unavailable_reason() or reader.unavailable_reason()


def run(
    *,
    seconds: float,
    seed: int,
    mode: str,
    folder: Path,
    instances: int = 3,
    rate: float = 60.0,
    keep: bool = False,
    without: frozenset[str] = frozenset(),
) -> int:
    """Make the network, run the chaos inside it (a child process in the client namespace), and
    remove the network whatever happens; returns the run's exit status."""
    folder.mkdir(parents=True, exist_ok=True)
    swept = Network.sweep_stale()
    if swept:
        print(f"removed the namespaces of earlier runs that died: {', '.join(swept)}", file=sys.stderr)
    net = Network.for_this_process().create()
    cmd = [*net.prefix(CLIENT), sys.executable, "-m", "tests.chaos.run", "--tag", net.tag]
    cmd += ["--seed", str(seed), "--mode", mode, "--seconds", f"{seconds:g}", "--dir", str(folder)]
    cmd += ["--instances", str(instances), "--rate", f"{rate:g}"]
    cmd += [arg for kind in sorted(without) for arg in ("--without", kind)]
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT)
        try:
            code = proc.wait(timeout=seconds + 1200)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    finally:
        net.destroy()
    if code == 0 and not keep:
        for data in (folder / "kafka").glob("*/data"):
            shutil.rmtree(data, ignore_errors=True)
    elif code != 0:
        print(f"chaos run failed (status {code}): seed {seed}; history kept in {folder}", file=sys.stderr)
        print(f"replay: {replay_command(seconds, seed, mode, without)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the nemesis acts (default 3)")
    length.add_argument("--seconds", type=float, help="the same, in seconds")
    parser.add_argument("--seed", type=int, help="the nemesis's seed (default: a random one, printed)")
    parser.add_argument("--mode", choices=["at-least-once", "exactly-once"], default="exactly-once")
    parser.add_argument("--instances", type=int, default=3, help="service instances at the start (default 3)")
    parser.add_argument("--rate", type=float, default=60.0, help="input messages per second (default 60)")
    parser.add_argument("--dir", type=Path, help="the run's folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the brokers' data of a run that passed")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=sorted(CLUSTER_FAULTS),
        help="leave this cluster fault out of the schedule (repeatable)",
    )
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"python -m tests.chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    seconds = (
        args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 3)
    )
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    folder = args.dir or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    return run(
        seconds=seconds,
        seed=seed,
        mode=args.mode,
        folder=folder,
        instances=args.instances,
        rate=args.rate,
        keep=args.keep,
        without=frozenset(args.without),
    )


if __name__ == "__main__":
    sys.exit(main())
