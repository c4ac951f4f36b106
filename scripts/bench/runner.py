"""One run of one implementation: a drain of a pre-loaded dataset (``Runner.drain``, optionally under
py-spy) or a paced latency run (``Runner.latency``), each with its own group and output topics.

An implementation is a process (or ``--instances`` processes in one group) started with this Python:
``python -m service run`` for marker-ingest, ``bench_service.py --child KIND`` for the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile as prof
from bench import service_api
from bench.data import (
    LATENCY_FN,
    LATENCY_TEMPLATES,
    WARMUP,
    Dataset,
    delete_topics,
    send_warmup,
)
from bench.impls import Impl
from bench.measure import Sampler, Watermarks, proc_alive
from bench.stats import percentiles

ENTRY = service_api.ROOT / "scripts" / "bench_service.py"


@dataclass
class RunResult:
    """One drain, profiled drain or latency run of one implementation."""

    impl: str
    phase: str  # drain | profile | latency
    dataset: str
    partitions: int = 1
    instances: int = 1
    repetition: int = 1
    messages: int = 0
    input_bytes: int = 0
    ok: bool = False
    problem: str = ""
    drain_s: float | None = None
    msgs_per_s: float | None = None
    mb_per_s: float | None = None
    cpu_pct: float | None = None
    cpu_us_per_msg: float | None = None
    broker_cpu_pct: float | None = None
    others_cpu_pct: float | None = None
    peak_rss_mb: float | None = None
    exit_codes: list[int | None] = field(default_factory=list)
    wall_s: float | None = None
    outputs: dict[str, int] = field(default_factory=dict)
    log_bytes: int | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def case(self) -> tuple[str, int, int]:
        """What the runs compared with each other share: dataset, input partitions, instances."""
        return (self.dataset, self.partitions, self.instances)


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str


def spawn(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path | None) -> subprocess.Popen[bytes]:
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        # cwd: ``python -m service`` puts it first on sys.path.
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(cwd))
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


async def finish(proc: subprocess.Popen[bytes], *, signal_first: bool, grace: float = 30) -> int | None:
    """Stop the child (SIGTERM, then SIGKILL after ``grace``), reap it; its exit status.

    (Not its ru_maxrss: Linux counts in it the parent's pages that the child held between fork and
    exec, so VmHWM, sampled while it runs, is the peak RSS.)"""
    if signal_first and proc_alive(proc.pid):
        proc.send_signal(signal.SIGTERM)
    task = asyncio.create_task(asyncio.to_thread(proc.wait))
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        proc.kill()
    return await task


class Runner:
    """Runs implementations against one broker; every run gets its own group and output topics."""

    def __init__(
        self, args: argparse.Namespace, bootstrap: str, broker_pids: list[int], logdir: Path
    ) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.broker_pids = broker_pids
        self.logdir = logdir
        self.idempotence = args.broker == "kafka"
        self.replication = 1
        self.tag = f"bench-{uuid.uuid4().hex[:6]}"
        self.count = 0

    async def create(self, topics: dict[str, int]) -> None:
        r = self.replication
        await service_api.create_topics(self.bootstrap, topics, replication_factor=r, min_insync=min(2, r))

    def topics(self, impl: Impl, what: str) -> Topics:
        self.count += 1
        base = f"{self.tag}.{self.count:02d}.{impl.name}.{what}"
        return Topics(f"{base}.raw", f"{base}.articles", f"{base}.dlq", f"{base}.group")

    def _log(self, impl: Impl, what: str) -> Path | None:
        return None if impl.log == "null" else self.logdir / f"{impl.name}.{what}.log"

    def _tree(self, impl: Impl) -> Path:
        return (impl.service_path or self.args.service_path).resolve()

    def command(self, impl: Impl, t: Topics, *, burst: bool) -> list[str]:
        if impl.kind == "marker-ingest":
            return [sys.executable, "-m", "service", "run", *(["--burst"] if burst else [])]
        cfg = {
            "bootstrap": self.bootstrap,
            "input": t.input,
            "output": t.output,
            "dlq": t.dlq,
            "group": t.group,
            "idempotence": self.idempotence,
        }
        return [sys.executable, str(ENTRY), "--child", impl.kind, "--config", json.dumps(cfg)]

    def env(self, impl: Impl, t: Topics) -> dict[str, str]:
        """The child's environment: its service tree first on the path; the service's settings (the
        service's producer is idempotent on Apache Kafka, its default; Tansu refuses it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self._tree(impl)), os.environ.get("PYTHONPATH")])
        )
        if impl.kind == "marker-ingest":
            env.update(
                KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
                KAFKA_ENABLE_IDEMPOTENCE=str(self.idempotence).lower(),
                INGEST_INPUT_TOPIC=t.input,
                INGEST_OUTPUT_TOPIC=t.output,
                INGEST_DLQ_TOPIC=t.dlq,
                INGEST_GROUP_ID=t.group,
                INGEST_LOG_FORMAT="json",
                INGEST_LOG_LEVEL=impl.log_level,
            )
            env.update(impl.env)
        return env

    def start(
        self, impl: Impl, t: Topics, what: str, instances: int, *, burst: bool
    ) -> list[subprocess.Popen[bytes]]:
        procs = []
        for i in range(instances):
            log = self._log(impl, what if instances == 1 else f"{what}.{i + 1}")
            procs.append(spawn(self.command(impl, t, burst=burst), self.env(impl, t), self._tree(impl), log))
        return procs

    # ------------------------------------------------------------- one drain

    async def drain(
        self, impl: Impl, ds: Dataset, instances: int = 1, profile: Path | None = None
    ) -> RunResult:
        """Run one implementation (``instances`` processes in one group) over a pre-loaded dataset;
        measure the drain, from the first event out to the last; py-spy it into ``profile`` if asked."""
        what = f"{ds.name}.p{ds.partitions}.x{instances}" + (".profile" if profile else "")
        t = self.topics(impl, what)
        t.input = ds.topic
        res = RunResult(
            impl.name,
            "profile" if profile else "drain",
            ds.name,
            ds.partitions,
            instances,
            messages=ds.messages,
            input_bytes=ds.bytes,
        )
        await self.create({t.output: 1, t.dlq: 1})
        targets = {t.output: ds.expected_articles, t.dlq: ds.expected_dead}
        if impl.kind == "passthrough":
            targets = {t.output: ds.messages}
        started = time.monotonic()
        async with Watermarks(self.bootstrap, committed=impl.transactional) as marks:
            procs = self.start(impl, t, what, instances, burst=True)
            sampler = Sampler([p.pid for p in procs], self.broker_pids)
            sampler.start()
            deadline = time.monotonic() + self.args.timeout

            def alive() -> bool:
                return any(proc_alive(p.pid) for p in procs)

            first_out = asyncio.create_task(
                self._first_output(t.output, deadline, alive, procs[0].pid, profile)
            )
            done = await marks.wait(targets, deadline, alive=alive)
            sampler.sample()
            first_landed, spy, spy_from = await first_out
            spy_until = time.time()
            if spy is not None:
                await asyncio.to_thread(prof.stop_profiler, spy)
            # marker-ingest --burst exits by itself once caught up; the others are told to stop.
            signal_first = done is None or impl.kind != "marker-ingest"
            res.exit_codes = list(
                await asyncio.gather(*(finish(p, signal_first=signal_first) for p in procs))
            )
            await sampler.stop()
            res.wall_s = time.monotonic() - started
            res.peak_rss_mb = sampler.peak_rss_mb
            seen = await marks.inspect(list(targets))
        res.outputs = {topic: marks.counts.get(topic, int(v["high"] or 0)) for topic, v in seen.items()}
        logs = list(self.logdir.glob(f"{impl.name}.{what}*.log")) if impl.log != "null" else []
        res.log_bytes = sum(p.stat().st_size for p in logs) if logs else None
        # The drain starts with the first event: its own timestamp (when its producer was handed it,
        # right after the first message was consumed and processed) or, failing that, when the output
        # topic's high watermark first moved.
        firsts = [v["first_ms"] / 1000 for v in seen.values() if v["first_ms"] is not None]
        if first_landed is not None:
            firsts.append(first_landed)
        extra = {tp: res.outputs[tp] - n for tp, n in targets.items() if res.outputs[tp] != n}
        bad_exit = [c for c in res.exit_codes if c not in (0, None)]
        if done is None or not firsts:
            res.problem = (
                f"not drained within {self.args.timeout:.0f}s (outputs {res.outputs}, exit {res.exit_codes})"
            )
        elif extra:
            res.problem = f"output counts differ from the expected: {extra}"
        elif bad_exit and impl.kind == "marker-ingest":
            res.problem = f"exit status {bad_exit}"
        if done is not None and firsts:
            t0 = min(firsts)
            res.drain_s = done - t0
            res.msgs_per_s = ds.messages / res.drain_s
            res.mb_per_s = ds.bytes / res.drain_s / 1e6
            cpu, broker, others = sampler.cpu_between(t0, done)
            if others is not None:
                res.others_cpu_pct = 100 * max(0.0, others) / res.drain_s
            if cpu is not None:
                res.cpu_pct = 100 * cpu / res.drain_s
                res.cpu_us_per_msg = cpu / ds.messages * 1e6
            if broker is not None:
                res.broker_cpu_pct = 100 * broker / res.drain_s
        if profile is not None:
            res.profile = self._profile(profile, procs[0].pid, ds, sampler, spy_from, spy_until)
        res.ok = not res.problem
        await delete_topics(self.bootstrap, [t.output, t.dlq])
        return res

    async def _first_output(
        self, topic: str, deadline: float, alive: Any, pid: int, profile: Path | None
    ) -> tuple[float | None, subprocess.Popen[bytes] | None, float | None]:
        """When the first event landed (from the high watermark); then py-spy attached if asked, so
        that start-up and the group join stay out of the profile."""
        async with Watermarks(self.bootstrap) as first:
            landed = await first.wait({topic: 1}, deadline, alive=alive)
        if profile is None or landed is None:
            return landed, None, None
        return landed, prof.start_profiler(pid, profile), time.time()

    def _profile(
        self, path: Path, pid: int, ds: Dataset, sampler: Sampler, t0: float | None, t1: float
    ) -> dict[str, Any]:
        if not path.exists() or t0 is None:
            return {"file": str(path), "problem": "no profile written"}
        samples = prof.parse_collapsed(path.read_text(), main_thread=pid)
        counts = prof.by_stage(samples, prof.Filing())
        cpu, _, _ = sampler.cpu_between(t0, t1)
        cpu_us = None if cpu is None else cpu / ds.messages * 1e6
        return {
            "file": str(path),
            "rate": prof.RATE,
            "window_s": t1 - t0,
            "samples": samples.total,
            "other_thread_samples": samples.other_threads,
            "stage_samples": counts,
            "stage_us_per_msg": prof.us_per_message(counts, ds.messages),
            "stage_cpu_us_per_msg": prof.cpu_shares(counts, cpu_us),
            "cpu_us_per_msg": cpu_us,
            **prof.hottest(samples),
        }

    # ------------------------------------------------------------- one latency run

    async def latency(
        self, impl: Impl, ds: Dataset, rate: float, seconds: float, instances: int = 1
    ) -> RunResult:
        """Paced input at ``rate`` msgs/s for ``seconds``; a separate consumer times every event.

        Processes: the implementation, the reader (started first, reads the output topics from the
        start) and, once a warm-up came through, the pacer. Latency of an event = when the reader got
        it - the input message's timestamp (the pacer's send time).
        """
        t = self.topics(impl, "latency")
        count = max(1, int(rate * seconds))
        res = RunResult(impl.name, "latency", ds.name, ds.partitions, instances, messages=count)
        await self.create({t.input: ds.partitions, t.output: 1, t.dlq: 1})
        n_templates = min(LATENCY_TEMPLATES, ds.messages)
        n_dead = sum(ds.dead[i % n_templates] for i in range(count))
        targets = {t.output: WARMUP + count - n_dead, t.dlq: n_dead}
        if impl.kind == "passthrough":
            targets = {t.output: WARMUP + count}
        files = {name: self.logdir / f"{t.group}.{name}" for name in ("reader", "ready", "pacer")}
        reader_cfg = {
            "bootstrap": self.bootstrap,
            "topics": [tp for tp, n in targets.items() if n > 0],
            "expected": sum(targets.values()),
            "result": str(files["reader"]),
            "ready": str(files["ready"]),
            "aiokafka": self.args.aiokafka_instruments,
        }
        helper_env = self.env(Impl("helper", "", "helper"), t)
        here = service_api.ROOT
        reader = spawn(
            [sys.executable, str(ENTRY), "--child", "reader", "--config", json.dumps(reader_cfg)],
            helper_env,
            here,
            self.logdir / f"{t.group}.reader.log",
        )
        procs = self.start(impl, t, "latency", instances, burst=False)
        sampler = Sampler([p.pid for p in procs], self.broker_pids, [reader.pid])
        sampler.start()

        def alive() -> bool:
            return any(proc_alive(p.pid) for p in procs)

        try:
            async with Watermarks(self.bootstrap) as marks:
                await send_warmup(self.bootstrap, t.input, ds.payloads[0])
                ok = await marks.wait({t.output: WARMUP}, time.monotonic() + self.args.timeout, alive=alive)
                await _appears(files["ready"], 30)  # the reader is up long before the warm-up is through
                if ok is None:
                    res.problem = "the implementation did not answer the warm-up"
                else:
                    pacer_cfg = {
                        "bootstrap": self.bootstrap,
                        "topic": t.input,
                        "rate": rate,
                        "count": count,
                        "templates": n_templates,
                        "dl_share": ds.dl_share,
                        "result": str(files["pacer"]),
                        "aiokafka": self.args.aiokafka_instruments,
                    }
                    pacer = spawn(
                        [sys.executable, str(ENTRY), "--child", "pacer", "--config", json.dumps(pacer_cfg)],
                        helper_env,
                        here,
                        self.logdir / f"{t.group}.pacer.log",
                    )
                    sampler.extra_pids.append(pacer.pid)
                    await finish(pacer, signal_first=False, grace=seconds * 3 + 60)
                    grace = max(10.0, seconds)
                    done = await marks.wait(targets, time.monotonic() + grace, alive=alive)
                    if done is None:
                        res.problem = f"backlog: not all events out {grace:.0f}s after the last input"
        finally:
            sampler.sample()
            res.exit_codes = list(await asyncio.gather(*(finish(p, signal_first=True) for p in procs)))
            await sampler.stop()
            await finish(reader, signal_first=True)
        res.peak_rss_mb = sampler.peak_rss_mb
        paced = json.loads(files["pacer"].read_text()) if files["pacer"].exists() else {}
        sends: list[float] = paced.get("sends", [])
        input_acks = [1000 * a for a in paced.get("acks", []) if a >= 0]
        seen = json.loads(files["reader"].read_text()) if files["reader"].exists() else []
        lat, stamped = [], []
        arrived: set[int] = set()
        for key, at, out_ms in seen:
            i = int(key) - LATENCY_FN if key.isdigit() else -1
            if 0 <= i < len(sends) and i not in arrived:
                arrived.add(i)
                lat.append((at - sends[i]) * 1000)
                stamped.append(out_ms - sends[i] * 1000)
        missing = count - len(arrived)
        if sends:
            first, last = sends[0], sends[-1]
            res.latency["achieved_rate"] = (len(sends) - 1) / (last - first) if last > first else None
            cpu, broker, others = sampler.cpu_between(first, last)
            if cpu is not None and last > first:
                res.cpu_pct = 100 * cpu / (last - first)
                res.cpu_us_per_msg = cpu / len(sends) * 1e6
                res.broker_cpu_pct = None if broker is None else 100 * broker / (last - first)
                res.others_cpu_pct = None if others is None else 100 * max(0.0, others) / (last - first)
        res.latency.update(
            rate=rate,
            seconds=seconds,
            events=len(lat),
            missing=missing,
            e2e_ms=percentiles(lat, missing),
            out_ts_ms=percentiles(stamped, missing),
            input_ack_ms=percentiles(input_acks),
        )
        res.ok = not res.problem and missing == 0 and bool(sends)
        if not sends and not res.problem:
            res.problem = "the pacer sent nothing"
        await delete_topics(self.bootstrap, [t.input, t.output, t.dlq])
        return res


async def _appears(path: Path, seconds: float) -> None:
    """Poll for ``path`` (a child's sign of life) for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:  # noqa: ASYNC110, ASYNC240 - a file
        await asyncio.sleep(0.05)
