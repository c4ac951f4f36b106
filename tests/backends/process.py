"""What the backends share: a process that is started, polled until it answers, and stopped for sure.

Standard library only (``python3 -m tests.backends fetch`` runs before any virtualenv exists).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class BackendUnavailable(RuntimeError):
    """Raised when a backend cannot run here; the message says why and what would fix it."""


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET: (status, body); an HTTP error status is returned, a connection failure raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(url: str, *, timeout: float = 5.0) -> Any:
    """GET and decode JSON; raises ``BackendUnavailable`` on a status other than 200."""
    status, body = http_get(url, timeout=timeout)
    if status != 200:
        raise BackendUnavailable(f"GET {url} answered {status}: {body[:300]!r}")
    return json.loads(body)


def answers(url: str) -> bool:
    """True when a GET of ``url`` answers 200."""
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


class BackendProcess:
    """One server process: its output in ``log_path``, its own session (so that a signal reaches it
    alone), killed at interpreter exit if nobody stopped it."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, *, cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.pid is not None

    def start(self) -> BackendProcess:
        """Start the process; returns at once (``wait_until`` waits for it to answer)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                start_new_session=True,
            )
        atexit.register(self.kill)
        return self

    def wait_until(self, check: Callable[[], bool], *, within: float, what: str) -> None:
        """Poll ``check`` until true; ``BackendUnavailable`` (with the log's tail) if the process
        exits or ``within`` seconds pass."""
        deadline = time.monotonic() + within
        while not check():
            if not self.running:
                raise BackendUnavailable(
                    f"{self.name} exited before {what}; see {self.log_path}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BackendUnavailable(
                    f"{self.name}: {what} not within {within:g}s; see {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.1)

    def tail(self, lines: int = 15) -> str:
        """The end of the log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then kill -9 after ``timeout`` seconds."""
        atexit.unregister(self.kill)
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9 and reap."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(timeout=10)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """The TCP (address, port) pairs process ``pid`` listens on, from ``/proc`` (Linux only)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                hex_ip, hex_port = local.split(":")
                found.append((_proc_ip(hex_ip), int(hex_port, 16)))
    return found


def _proc_ip(hex_ip: str) -> str:
    """An address as /proc/net/tcp* writes it (32-bit words in host byte order, little-endian here)."""
    raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1."""
    return ipaddress.ip_address(address).is_loopback


class Server:
    """What the backends share: a ``BackendProcess`` started until it is ready, stopped on the way
    out (a context manager); each subclass's ``start`` builds its command line."""

    process: BackendProcess | None = None

    def launch(
        self, name: str, cmd: list[str], log: Path, ready: Callable[[], bool], *, within: float, what: str
    ) -> None:
        """Start ``cmd`` and wait until ``ready()``; stop it if it never is."""
        self.process = BackendProcess(name, cmd, log).start()
        try:
            self.process.wait_until(ready, within=within, what=what)
        except BaseException:
            self.stop()
            raise

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process (what it wrote to its working folder stays)."""
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
