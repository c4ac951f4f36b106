"""Apache Kafka from Maven Central, run from its jars: one combined KRaft node, or a cluster.

The version is ``$MARKER_INGEST_KAFKA_VERSION`` when set, else the one ``tests/kafka/pom.xml`` pins
(``kafka_version``, the one place it is read); 3.9.1, 4.1.1 and 4.4.0 are tested. ``ensure_jars``
runs ``mvn dependency:copy-dependencies`` on the pom once per version and caches the jars in
``~/.cache/marker-ingest/kafka-<version>-<pom digest>`` (or under ``$MARKER_INGEST_CACHE``), outside
the work tree. ``KafkaCluster(brokers=1)`` is one process that is both broker and controller;
``KafkaCluster(brokers=3)`` is a controller and three brokers, each its own process, so that a test
can kill -9, freeze (SIGSTOP) or restart one broker while the metadata quorum stays up. Every node
listens on free loopback ports (``free_port``) and logs to ``<workdir>/<node>/server.log``.

Test-friendly broker settings (all else is Kafka's default): no delay before the first rebalance,
brokers fenced 3 s after their last heartbeat (default 9 s), fewer partitions for the internal
topics, small heaps and thread pools for a 2-core machine, and topics created only on request
(``auto.create.topics.enable=false``, as on a careful production cluster).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

POM = Path(__file__).with_name("pom.xml")
CONTROLLER_ID = 100
BROKER_HEAP = os.environ.get("MARKER_INGEST_KAFKA_HEAP", "-Xms128m -Xmx512m")
CONTROLLER_HEAP = "-Xms64m -Xmx256m"
STARTUP_TIMEOUT = 180.0
"""How long a node may take to listen, and a cluster to list its brokers: a deadline, not a wait. A
start takes ~10 s on an idle 2-core machine; a broker restarted under a load of 30 took over 60 s."""

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaUnavailable(RuntimeError):
    """Raised when Apache Kafka cannot be run here (no java or mvn, the download failed, ...)."""


PORT_FLOOR = 20000
"""The lowest port ``free_port`` hands out (fixed ports people use by hand, 9092 or 19092, are below)."""
_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()
_random = random.SystemRandom()  # not the global generator, which tests may seed


def ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (``ip_local_port_range``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nothing uses now, for a Kafka listener, never the same twice in this process.

    Chosen at random below the kernel's ephemeral range: a port from ``bind(("127.0.0.1", 0))`` is in
    that range, where any outgoing connection on the machine may take it as its local port in the
    seconds before the JVM binds it (the node then dies with "Address already in use"). Falls back
    to such a port where the range leaves no room below it.
    """
    below = range(PORT_FLOOR, ephemeral_ports().start)
    with _ports_lock:
        for _ in range(1000):
            if len(below) > 1000:
                port = _random.choice(below)
            else:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            if port not in _ports_handed_out and _bindable(port):
                _ports_handed_out.add(port)
                return port
    raise KafkaUnavailable("found no free loopback port")


VERSION_ENV = "MARKER_INGEST_KAFKA_VERSION"
"""The environment variable that chooses the Kafka version (default: the one ``pom.xml`` pins)."""
_VERSION = re.compile(r"\d+\.\d+\.\d+")


def pinned_version() -> str:
    """The Kafka version ``pom.xml`` pins: the default."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if match is None:
        raise KafkaUnavailable(f"no <kafka.version> in {POM}")
    return match.group(1)


def kafka_version() -> str:
    """The Kafka version the harness runs: ``$MARKER_INGEST_KAFKA_VERSION``, else ``pinned_version()``.

    Raises ``KafkaUnavailable`` when the variable is not a version such as ``4.1.1``.
    """
    version = os.environ.get(VERSION_ENV, "").strip() or pinned_version()
    return check_version(version, VERSION_ENV)


def check_version(version: str, source: str = "the Kafka version") -> str:
    """``version`` if it is a release number (``4.1.1``); else ``KafkaUnavailable`` naming ``source``."""
    if not _VERSION.fullmatch(version):
        raise KafkaUnavailable(f"{source}: {version!r} is not a Kafka release such as 4.1.1")
    return version


def cache_dir() -> Path:
    """Where the jars are kept between runs."""
    root = os.environ.get("MARKER_INGEST_CACHE") or Path.home() / ".cache" / "marker-ingest"
    return Path(root)


def ensure_jars(version: str | None = None) -> Path:
    """The folder holding the jars of Kafka ``version`` (default ``kafka_version()``); fetched with
    Maven the first time (about 50 MB), each version in a folder of its own.

    Raises ``KafkaUnavailable`` when java or mvn is missing or Maven fails (an unknown version).
    """
    version = kafka_version() if version is None else check_version(version)
    if shutil.which("java") is None:
        raise KafkaUnavailable("java is not installed (Apache Kafka needs Java 17 or newer)")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    lib = cache_dir() / f"kafka-{version}-{digest}" / "lib"
    if (lib / ".complete").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(f"mvn is not installed, and the Kafka {version} jars are not cached in {lib}")
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib.", dir=lib.parent))
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={staging}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not any(staging.glob(f"kafka_2.13-{version}.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise KafkaUnavailable(f"mvn could not fetch the Kafka {version} jars: " + " / ".join(tail))
    (staging / ".complete").write_text(version)
    try:
        staging.rename(lib)
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return lib


def find_class(lib: Path, *candidates: str) -> str:
    """The first of ``candidates`` (fully qualified class names) that the jars in ``lib`` hold: Kafka's
    tools move between versions (``ConfigCommand`` left ``kafka.admin`` for ``org.apache.kafka.tools``
    in 4.4). Raises ``KafkaUnavailable`` when none is there."""
    entries = {name.replace(".", "/") + ".class": name for name in candidates}
    found: set[str] = set()
    for jar in sorted(lib.glob("kafka*.jar")):
        with zipfile.ZipFile(jar) as archive:
            found |= entries.keys() & set(archive.namelist())
    for entry, name in entries.items():
        if entry in found:
            return name
    raise KafkaUnavailable(f"none of {', '.join(candidates)} is in the jars of {lib}")


class KafkaNode:
    """One Kafka process: a broker, a controller, or both; started, stopped, killed or frozen."""

    def __init__(
        self, node_id: int, roles: str, workdir: Path, lib: Path, properties: dict[str, str]
    ) -> None:
        self.node_id = node_id
        self.roles = roles
        self.dir = workdir / (f"controller-{node_id}" if roles == "controller" else f"broker-{node_id}")
        self.lib = lib
        self.properties = properties
        self.port = int(properties["_port"])
        self.format_args: list[str] = []
        """Extra ``StorageTool format`` arguments (``--add-scram ...``)."""
        self.launch_prefix: list[str] = []
        """A command the process is started under (the chaos run's ``ip netns exec NS``)."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def is_broker(self) -> bool:
        """True for a node that serves clients."""
        return "broker" in self.roles

    @property
    def host(self) -> str:
        """The address the node listens on: 127.0.0.1 unless its properties name another (``_host``)."""
        return self.properties.get("_host", "127.0.0.1")

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to (the controller's port for a controller-only node)."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The node's log, kept after it stops."""
        return self.dir / "server.log"

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (frozen counts as alive)."""
        return self.pid is not None

    def write_config(self) -> Path:
        """Write ``server.properties`` and the log configuration; return the properties file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "log4j2.properties").write_text(LOG4J2)
        props = {k: v for k, v in self.properties.items() if not k.startswith("_")}
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def format(self, cluster_id: str) -> None:
        """Format the node's storage (once, before its first start)."""
        config = self.write_config()
        cmd = [*self._java(CONTROLLER_HEAP), "kafka.tools.StorageTool", "format", "-t", cluster_id]
        cmd += ["-c", str(config), "--ignore-formatted", *self.format_args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KafkaUnavailable(f"formatting {self.dir.name} failed: {done.stdout}{done.stderr}".strip())

    def java_command(self, heap: str, *main_classes: str) -> list[str]:
        """``java`` with Kafka's jars on the class path, for running one of its tools: the first of
        ``main_classes`` this version has (see ``find_class``)."""
        return [*self._java(heap), find_class(self.lib, *main_classes)] if main_classes else self._java(heap)

    def _java(self, heap: str) -> list[str]:
        java = shutil.which("java") or "java"
        return [
            java,
            *heap.split(),
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            f"{self.lib}/*",
        ]

    def start(self) -> KafkaNode:
        """Start the process (it keeps its data across restarts); returns at once."""
        if self.running:
            return self
        heap = BROKER_HEAP if self.is_broker else CONTROLLER_HEAP
        cmd = [*self.launch_prefix, *self._java(heap), "kafka.Kafka", str(self.dir / "server.properties")]
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        return self

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the node accepts connections; raises ``KafkaUnavailable`` if it dies or is late."""
        deadline = time.monotonic() + timeout
        while not _accepts_connections(self.host, self.port):
            if self._proc is None or self._proc.poll() is not None:
                raise KafkaUnavailable(f"{self.dir.name} exited; see {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"{self.dir.name} did not listen within {timeout:g}s; see {self.log_path}"
                )
            time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        """The end of the node's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def kill(self) -> None:
        """kill -9: no controlled shutdown; the data on disk stays."""
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): its connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a frozen process (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), then kill -9 after ``timeout``."""
        if self._proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """A controlled stop and a start; waits until the node listens again."""
        self.stop()
        self.start().wait_listening(timeout)


def new_cluster_id(random_uuid: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A cluster id as Kafka's ``Uuid.randomUuid()`` makes them: URL-safe base64 of a random UUID,
    never one that starts with ``-`` (``StorageTool format -t -x...`` would read it as an option),
    nor the two ids Kafka reserves (all zeros, and the metadata topic's ``AAAAAAAAAAAAAAAAAAAAAQ``)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(random_uuid().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-") and cluster_id not in _RESERVED_IDS:
            return cluster_id


_RESERVED_IDS = frozenset({"AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAQ"})


class KafkaCluster:
    """A local Apache Kafka: ``brokers=1`` is one combined node, more adds a separate controller.

    A single node may get ``listeners`` besides its PLAINTEXT one (name → security protocol and port;
    their settings go in ``extra``) and ``format_args`` for its storage format (SCRAM users); see
    ``tests/kafka/security.py``.

    A context manager; the nodes are stopped (and their logs kept in ``workdir``) on exit.
    """

    def __init__(
        self,
        workdir: Path,
        brokers: int = 1,
        *,
        ports: list[int] | None = None,
        extra: dict[str, str] | None = None,
        listeners: dict[str, tuple[str, int]] | None = None,
        format_args: list[str] | None = None,
        version: str | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        if listeners and brokers != 1:
            raise ValueError("extra listeners are for a single node (their ports are fixed)")
        self.workdir = Path(workdir)
        self.brokers = brokers
        self.extra = dict(extra or {})
        self.version = kafka_version() if version is None else check_version(version)
        self.lib = ensure_jars(self.version)
        self.cluster_id = new_cluster_id()
        ports = list(ports or [])
        broker_ports = [ports[i] if i < len(ports) else free_port() for i in range(brokers)]
        self.nodes: list[KafkaNode] = []
        if brokers == 1:
            cport = free_port()
            props = self._broker_props(1, broker_ports[0], f"1@127.0.0.1:{cport}")
            props["process.roles"] = "broker,controller"
            for name, (protocol, port) in (listeners or {}).items():
                props["listeners"] += f",{name}://127.0.0.1:{port}"
                props["advertised.listeners"] += f",{name}://127.0.0.1:{port}"
                props["listener.security.protocol.map"] += f",{name}:{protocol}"
            props["listeners"] += f",CONTROLLER://127.0.0.1:{cport}"
            node = KafkaNode(1, "broker,controller", self.workdir, self.lib, props)
            node.format_args = list(format_args or [])
            self.nodes.append(node)
        else:
            cport = free_port()
            voters = f"{CONTROLLER_ID}@127.0.0.1:{cport}"
            controller = {
                "_port": str(cport),
                "process.roles": "controller",
                "node.id": str(CONTROLLER_ID),
                "controller.quorum.voters": voters,
                "listeners": f"CONTROLLER://127.0.0.1:{cport}",
                "controller.listener.names": "CONTROLLER",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT",
                "log.dirs": str(self.workdir / f"controller-{CONTROLLER_ID}" / "data"),
                "broker.session.timeout.ms": "3000",
            }
            self.controller: KafkaNode | None = KafkaNode(
                CONTROLLER_ID, "controller", self.workdir, self.lib, controller
            )
            self.nodes.append(self.controller)
            for i, port in enumerate(broker_ports, start=1):
                self.nodes.append(
                    KafkaNode(i, "broker", self.workdir, self.lib, self._broker_props(i, port, voters))
                )

    def _broker_props(self, node_id: int, port: int, voters: str) -> dict[str, str]:
        replicas = str(min(3, self.brokers))
        min_isr = str(min(2, self.brokers))
        props = {
            "_port": str(port),
            "process.roles": "broker",
            "node.id": str(node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / f"broker-{node_id}" / "data"),
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        }
        props.update(self.extra)
        return props

    @property
    def broker_nodes(self) -> list[KafkaNode]:
        """The nodes that serve clients, in node-id order."""
        return [n for n in self.nodes if n.is_broker]

    @property
    def bootstrap_servers(self) -> str:
        """Every broker's address, comma-separated."""
        return ",".join(n.bootstrap_servers for n in self.broker_nodes)

    def broker(self, node_id: int) -> KafkaNode:
        """The broker with this node id."""
        for node in self.broker_nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def start(self, timeout: float = STARTUP_TIMEOUT) -> KafkaCluster:
        """Format, start every node, and wait until metadata lists every broker. The nodes are
        also killed when the Python process exits without stopping them (an interrupted run, or a
        SIGTERM: see ``_interrupt_on_sigterm``; only a kill -9 leaves them behind)."""
        atexit.register(self._kill_leftovers)
        _interrupt_on_sigterm()
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.format(self.cluster_id), self.nodes))
        for node in self.nodes:
            node.start()
        try:
            for node in self.nodes:
                node.wait_listening(timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT, brokers: int | None = None) -> None:
        """Wait until a metadata request answers with ``brokers`` (default: all) brokers."""
        want = self.brokers if brokers is None else brokers
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                if _run(_broker_count(self.bootstrap_servers)) >= want:
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.3)
        raise KafkaUnavailable(f"metadata did not list {want} broker(s) within {timeout:g}s: {last!r}")

    def _kill_leftovers(self) -> None:
        for node in self.nodes:
            node.kill()

    def stop(self) -> None:
        """Stop every node (brokers first, then the controller); logs stay in ``workdir``."""
        atexit.unregister(self._kill_leftovers)
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.stop(timeout=20), self.broker_nodes))
        for node in self.nodes:
            node.stop(timeout=10)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _accepts_connections(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM a KeyboardInterrupt in this process, unless it has a handler of its own.

    Python's default ends the process at once, without ``atexit``, and the nodes run in sessions of
    their own (so that a Ctrl-C meant for pytest does not kill them mid-test): a test run stopped
    with SIGTERM would leave its brokers running. As an interrupt, pytest tears its fixtures down
    (stopping the nodes) and a script unwinds to ``atexit``.
    """
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def _broker_count(bootstrap: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()


def _run(coro: object) -> int:
    """Run a coroutine to completion in a thread of its own (callers may be inside an event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]
