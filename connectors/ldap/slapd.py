"""A throwaway OpenLDAP ``slapd`` on loopback, for tests and ``idsync demo``.

Runs in the foreground (``-d``) as a child of this process, so ``stop()`` (also called at interpreter exit)
leaves nothing behind. No pytest import here: the product uses it too.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from ldap3 import BASE, LEVEL, SUBTREE, Connection, Server
from ldap3.core.exceptions import LDAPException, LDAPNoSuchObjectResult
from ldap3.utils.dn import escape_rdn

from connectors.ldap.dn import dn_depth, split_dn

SLAPD_PATH = "/usr/sbin/slapd"
MODULE_PATH = Path("/usr/lib/ldap")
SCHEMA_DIR = Path("/etc/ldap/schema")
DEFAULT_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3
#: Whether a new ``Slapd`` syncs each write transaction to disk (mdb's default, what a directory does). The
#: test suite turns it off (``dbnosync``; tests/conftest.py): a throwaway directory's writes then stay in
#: the page cache, which a killed or restarted slapd still reads back — only a machine crash loses them —
#: and it writes ~1.7x as fast (one connection's adds with the accesslog overlay: ~435 -> ~760/s, thirtieth
#: session).
SYNC_WRITES = True


class SlapdError(RuntimeError):
    """slapd would not start (the message carries the tail of its log)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ssha(password: str) -> str:
    """The ``{SSHA}`` hash slapd accepts as ``rootpw``, so the config file holds no clear password."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _entry_for(dn: str) -> dict[str, list[str]]:
    """Attributes of a container entry named by the first RDN of ``dn`` (dc, o or ou)."""
    ava = split_dn(dn)[0][0]
    kind, value = ava.attr.lower(), ava.value
    if kind == "dc":
        return {"objectClass": ["top", "dcObject", "organization"], "dc": [value], "o": [value]}
    if kind == "o":
        return {"objectClass": ["top", "organization"], "o": [value]}
    if kind == "ou":
        return {"objectClass": ["top", "organizationalUnit"], "ou": [value]}
    raise ValueError(f"cannot create a container for {dn!r}: its RDN must be dc=, o= or ou=")


try:  # loaded here, not in the forked child, where as little as possible should run
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:  # pragma: no cover - exotic libc
    _LIBC = None


def _die_with_parent() -> None:
    # Linux: slapd gets SIGTERM if this process dies without running atexit (SIGKILL, crash).
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


#: Suffix of the accesslog database when it is the syncprov session log source.
ACCESSLOG_SUFFIX = "cn=accesslog"


class Slapd:
    """One slapd with an mdb database under ``suffix``, listening only on ``ldap://127.0.0.1:<port>/``.

    With ``syncprov`` (the default) the database carries the syncprov overlay, so the LDAP connector's
    delta import and follow (RFC 4533) work against it. Its session log (what lets a delta report deletes)
    is in memory and holds ``sessionlog_size`` writes; a cookie older than that gets a present phase (the
    connector raises CursorExpired), and so does one that predates unseen writes made before a restart.
    With ``sessionlog_source="accesslog"`` the accesslog overlay logs writes to a ``cn=accesslog``
    database that syncprov reads as its session log instead: it survives restarts and keeps 7 days.
    """

    def __init__(
        self,
        workdir: Path,
        suffix: str = "dc=example,dc=org",
        admin_password: str | None = None,
        port: int | None = None,
        *,
        schemas: Sequence[str] = DEFAULT_SCHEMAS,
        modules: Sequence[str] = (),
        overlays: Sequence[str] = (),
        extra_config: str = "",
        global_config: str = "",
        seed: bool = True,
        log_level: str = "none",
        max_size_bytes: int = 1 << 30,
        slapd_path: str = SLAPD_PATH,
        syncprov: bool = True,
        sessionlog_size: int = 1000,
        sessionlog_source: Literal["memory", "accesslog"] = "memory",
        sync_writes: bool | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        #: Each write transaction synced to disk (None: ``SYNC_WRITES``).
        self.sync_writes = SYNC_WRITES if sync_writes is None else sync_writes
        self._suffix = suffix
        self._password = admin_password if admin_password is not None else secrets.token_urlsafe(18)
        self._fixed_port = port
        self._port: int | None = port
        self.schemas = tuple(schemas)
        if syncprov and "syncprov" not in overlays:
            overlays = (*overlays, "syncprov")
        self.accesslog = "syncprov" in overlays and sessionlog_source == "accesslog"
        if self.accesslog and "accesslog" not in overlays:
            overlays = (*overlays, "accesslog")  # after syncprov, as in the OpenLDAP admin guide
        #: Extra modules to load (e.g. "accesslog"); each overlay's module is loaded too.
        self.modules = tuple(dict.fromkeys([*modules, *overlays]))
        self.overlays = tuple(overlays)
        #: Session log size of the syncprov overlay (write operations it remembers for deltas).
        self.sessionlog_size = sessionlog_size
        #: Appended to the database section verbatim (indexes, limits, overlay settings).
        self.extra_config = extra_config
        #: Inserted before the database section verbatim (TLS settings, global limits).
        self.global_config = global_config
        self.seed = seed
        self.log_level = log_level
        self.max_size_bytes = max_size_bytes
        self.slapd_path = slapd_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def suffix(self) -> str:
        return self._suffix

    @property
    def bind_dn(self) -> str:
        return f"cn=admin,{self._suffix}"

    @property
    def password(self) -> str:
        return self._password

    @property
    def port(self) -> int:
        if self._port is None:
            raise SlapdError("slapd is not started")
        return self._port

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def people_dn(self) -> str:
        return f"ou=people,{self._suffix}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "slapd.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Slapd:
        """Start slapd, wait until it accepts the admin bind, seed the base entries."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        for attempt in range(attempts):
            self._port = self._fixed_port or free_port()
            try:
                self._launch()
                break
            except SlapdError:
                # Another process may have taken the free port between probe and bind: try another one.
                if attempt + 1 == attempts or "already in use" not in self.log_tail():
                    raise
        if self.seed:
            self._seed()
        return self

    def stop(self) -> None:
        """Terminate slapd (SIGTERM, then SIGKILL) and wait for it; safe to call twice."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT_S)
        log, self._log_file = self._log_file, None
        if log is not None:
            log.close()

    def __enter__(self) -> Slapd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _launch(self) -> None:
        db_dir = self.workdir / "db"
        db_dir.mkdir(exist_ok=True)
        if self.accesslog:
            (self.workdir / "accesslog").mkdir(exist_ok=True)
        conf = self.workdir / "slapd.conf"
        conf.write_text(self._config(db_dir))
        conf.chmod(0o600)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        cmd = [
            self.slapd_path,
            "-d",
            self.log_level,
            "-f",
            str(conf),
            "-h",
            f"ldap://127.0.0.1:{self._port}/",
        ]
        in_main = threading.current_thread() is threading.main_thread()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            # Own session: a Ctrl-C meant for the demo does not race our orderly stop().
            start_new_session=True,
            # PDEATHSIG follows the forking *thread*; only safe when that is the main thread.
            preexec_fn=_die_with_parent if in_main and _LIBC is not None else None,
        )
        self._log_file = log
        atexit.register(self.stop)
        self._wait_ready()

    def _config(self, db_dir: Path) -> str:
        lines = [f"include {SCHEMA_DIR / name}.schema" for name in self.schemas]
        lines += [
            f"pidfile {self.workdir / 'slapd.pid'}",
            f"argsfile {self.workdir / 'slapd.args'}",
            f"modulepath {MODULE_PATH}",
            "moduleload back_mdb",
            *(f"moduleload {m}" for m in self.modules),
            "sizelimit unlimited",
            self.global_config,
            *(self._accesslog_database() if self.accesslog else ()),
            "database mdb",
            f"maxsize {self.max_size_bytes}",
            *self._nosync(),
            f'suffix "{self._suffix}"',
            f'rootdn "{self.bind_dn}"',
            f"rootpw {ssha(self._password)}",
            f"directory {db_dir}",
            "index objectClass eq",
            "index entryUUID eq",
            # syncprov finds the changes since a cookie's CSN (and checks that it is not stale) by entryCSN.
            "index entryCSN eq",
            *(line for o in self.overlays for line in self._overlay(o)),
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _overlay(self, name: str) -> list[str]:
        if name == "syncprov":
            return [
                "overlay syncprov",
                # Write contextCSN to the database every 100 writes or 10 minutes (it is kept in memory).
                "syncprov-checkpoint 100 10",
                # The session log lets a delta report deletes; a cookie it cannot cover gets a present phase.
                f"syncprov-sessionlog-source {ACCESSLOG_SUFFIX}"
                if self.accesslog
                else f"syncprov-sessionlog {self.sessionlog_size}",
                # Answer a stale cookie with e-syncRefreshRequired instead of streaming a full reload.
                "syncprov-reloadhint TRUE",
            ]
        if name == "accesslog" and self.accesslog:
            return [
                "overlay accesslog",
                f"logdb {ACCESSLOG_SUFFIX}",
                "logops writes",
                "logsuccess TRUE",
                # Every day, purge log entries older than 7 days: cookies older than that expire.
                "logpurge 07+00:00 01+00:00",
            ]
        return [f"overlay {name}"]

    def _nosync(self) -> list[str]:
        return [] if self.sync_writes else ["dbnosync"]

    def _accesslog_database(self) -> list[str]:
        return [
            "database mdb",
            f"maxsize {self.max_size_bytes}",
            *self._nosync(),
            f"suffix {ACCESSLOG_SUFFIX}",
            f"rootdn {ACCESSLOG_SUFFIX}",
            f"directory {self.workdir / 'accesslog'}",
            "index entryCSN,objectClass,reqEnd,reqResult,reqStart,reqDN eq",
        ]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                self.stop()
                raise SlapdError(
                    f"slapd exited with status {code} during startup; log tail:\n{self.log_tail()}"
                )
            try:
                # A plain TCP probe first: ldap3 leaks the socket of a refused connection.
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                self.connect(timeout_s=0.5).unbind()
                return
            except (OSError, LDAPException) as exc:
                last = exc
                time.sleep(0.05)
        self.stop()
        raise SlapdError(
            f"slapd did not accept a bind on {self.uri} within {_START_TIMEOUT_S:.0f} s ({last}); "
            f"log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ helpers
    def connect(self, timeout_s: float = 5.0) -> Connection:
        """A bound admin connection (raise_exceptions on); the caller unbinds it."""
        server = Server(self.uri, connect_timeout=timeout_s)
        conn = Connection(
            server, user=self.bind_dn, password=self._password, raise_exceptions=True, receive_timeout=30
        )
        conn.open()
        conn.bind()
        return conn

    def _seed(self) -> None:
        conn = self.connect()
        try:
            self._add_container(conn, self._suffix)
            self._add_container(conn, self.people_dn)
        finally:
            conn.unbind()

    @staticmethod
    def _add_container(conn: Connection, dn: str) -> None:
        if not _exists(conn, dn):
            conn.add(dn, attributes=_entry_for(dn))

    def add_container(self, dn: str) -> str:
        """Create a dc/o/ou container entry if missing; returns its DN."""
        conn = self.connect()
        try:
            self._add_container(conn, dn)
        finally:
            conn.unbind()
        return dn

    def add_ou(self, name: str, parent: str | None = None) -> str:
        """Create ``ou=<name>,<parent or suffix>`` (name escaped) and return its DN."""
        return self.add_container(f"ou={escape_rdn(name)},{parent or self._suffix}")

    def delete_subtree(self, dn: str) -> int:
        """Delete ``dn`` and everything under it (deepest first); returns the number of entries deleted."""
        conn = self.connect()
        try:
            if not _exists(conn, dn):
                return 0
            conn.search(dn, "(objectClass=*)", SUBTREE, attributes=["1.1"])
            dns = [r["dn"] for r in conn.response if r.get("type") == "searchResEntry"]
            # Children have more RDNs than their parents: longest DN first deletes leaves first.
            for child in sorted(dns, key=dn_depth, reverse=True):
                conn.delete(child)
            return len(dns)
        finally:
            conn.unbind()

    def entry_count(self, base: str | None = None, scope: str = "subtree") -> int:
        """Entries under ``base`` (default the suffix), the base included for subtree scope."""
        conn = self.connect()
        try:
            base = base or self._suffix
            if not _exists(conn, base):
                return 0
            conn.search(base, "(objectClass=*)", LEVEL if scope == "level" else SUBTREE, attributes=["1.1"])
            return sum(1 for r in conn.response if r.get("type") == "searchResEntry")
        finally:
            conn.unbind()


def _exists(conn: Connection, dn: str) -> bool:
    try:
        conn.search(dn, "(objectClass=*)", BASE, attributes=["1.1"])
    except LDAPNoSuchObjectResult:
        return False
    return bool(conn.response)


__all__ = ["Slapd", "SlapdError", "free_port", "ssha"]

if __name__ == "__main__":  # pragma: no cover - manual smoke test
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, Slapd(Path(tmp)) as s:
        print(s.uri, s.bind_dn, s.entry_count())
