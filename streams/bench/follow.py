"""Bench phase ``follow+ldap``: latency from an LDAP change to the target write, through a follow-mode
connector in ``idsync worker``.

Two throwaway slapds with syncprov: the source (``import_mode: follow``) and an export target. Each
sample changes one person's ``title`` on the source (ldap3 modify; the clock starts before the request)
and ends when the target's own content-sync push shows the new value: a write the target confirmed, seen
without polling. Changes are made one at a time, so a sample measures the path, not a queue.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

PEOPLE = 100


def _config(source: Any, target: Any) -> dict[str, Any]:
    flows = ("uid", "cn", "sn", "title")
    return {
        "name": "benchfollow",
        "connectors": {
            "dir": {
                "kind": "ldap",
                "uri": source.uri,
                "bind_dn": source.bind_dn,
                "password": "${IDSYNC_BENCH_SOURCE_PASSWORD}",
                "base_dn": source.people_dn,
                "import_mode": "follow",
            },
            "target": {
                "kind": "ldap",
                "uri": target.uri,
                "bind_dn": target.bind_dn,
                "password": "${IDSYNC_BENCH_TARGET_PASSWORD}",
                "base_dn": target.people_dn,
            },
        },
        "inbound": [
            {
                "connector": "dir",
                "object_type": "person",
                "mv_type": "person",
                "join": [{"cs": "uid", "mv": "uid"}],
                "project": True,
                "flows": [{"mv": a, "source": a} for a in flows],
            }
        ],
        "outbound": [
            {
                "connector": "target",
                "mv_type": "person",
                "object_type": "person",
                "dn": f"uid={{uid}},{target.people_dn}",
                "flows": [
                    {
                        "target": "objectClass",
                        "constant": ["top", "person", "organizationalPerson", "inetOrgPerson"],
                    },
                    *({"target": a, "source": a} for a in flows),
                ],
            }
        ],
        "pipeline": {"partitions": 4},
    }


class _TargetWatch:
    """Follows the target directory (RFC 4533 persist) in a thread: (arrival time, uid, title) per push."""

    def __init__(self, target: Any) -> None:
        from connectors.ldap import LdapConnector
        from schemas.config import LdapConnectorConfig

        cfg = LdapConnectorConfig(
            kind="ldap",
            uri=target.uri,
            bind_dn=target.bind_dn,
            password=target.password,
            base_dn=target.people_dn,
        )
        self.connector = LdapConnector("bench-target", cfg)
        self.stop = threading.Event()
        self.seen: queue.Queue[tuple[float, str, str]] = queue.Queue()
        self.error: Exception | None = None
        self.watermark = self.connector.current_watermark()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from connectors.base import ImportedObject

        try:
            for item in self.connector.follow(self.watermark, self.stop):
                if isinstance(item, ImportedObject):
                    at = time.monotonic()
                    uid = (item.attributes.get("uid") or [""])[0]
                    title = (item.attributes.get("title") or [""])[0]
                    self.seen.put((at, uid, title))
        except Exception as exc:  # the sample waiting says so at once, rather than timing out
            self.error = exc
            self.seen.put((time.monotonic(), "", ""))

    def wait_for(self, pred: Any, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                at, uid, title = self.seen.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("the target did not show the change") from None
            if self.error is not None:
                raise RuntimeError(f"the watch on the target directory stopped: {self.error}") from self.error
            if pred(uid, title):
                return at

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.connector.close()


def _title(server: Any, uid: str) -> str | None:
    """A person's title in a directory (None: no such entry)."""
    from ldap3.core.exceptions import LDAPNoSuchObjectResult

    conn = server.connect()
    try:
        dn = f"uid={uid},{server.people_dn}"
        try:
            conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["title"])
        except LDAPNoSuchObjectResult:
            return None
        if not conn.entries:
            return None
        values = conn.entries[0].entry_attributes_as_dict.get("title") or [""]
        return str(values[0])
    finally:
        conn.unbind()


def _where_stopped(source: Any, target: Any, uid: str, title: str, root: Path) -> str:
    """A sample's change did not reach the watch: say where it stopped (a diagnosis, read after the wait)."""
    on_source, on_target = _title(source, uid), _title(target, uid)
    if on_target == title:
        where = "the target holds it: its content-sync push was not seen"
    elif on_source == title:
        where = f"the source holds it, the target holds {on_target!r}: the pipeline lost or held it"
    else:
        where = f"the source does not hold it (source title {on_source!r})"
    log = f"{root / 'worker.log'} (kept with --work-dir)"
    return f"the target did not show {uid}'s title {title!r} within 60 s; {where}; worker log {log}"


def _spawn(
    config: Path, bootstrap: str, data: Path, env: dict[str, str], log: Any
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "streams.cli", "worker", "-c", str(config), "--bootstrap-servers", bootstrap]
    cmd += ["--data-dir", str(data), "--fetch-max-wait-ms", "10"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


async def follow_phase(args: Any, work: Path) -> Any:
    """Run the phase; returns a ``streams.bench.run.PhaseResult`` (kind ``follow+ldap``)."""
    from connectors.ldap.slapd import Slapd
    from streams.bench.run import PhaseResult, _percentiles
    from streams.broker import EmbeddedBroker

    samples = max(20, int(getattr(args, "follow_samples", 200)))
    res = PhaseResult("follow+ldap", PEOPLE, 1)
    root = work / "follow"
    with (
        Slapd(root / "source") as source,
        Slapd(root / "target") as target,
        EmbeddedBroker(root / "broker") as broker,
    ):
        conn = source.connect()
        for i in range(PEOPLE):
            conn.add(
                f"uid=p{i},{source.people_dn}",
                attributes={
                    "objectClass": ["inetOrgPerson"],
                    "uid": [f"p{i}"],
                    "cn": [f"P {i}"],
                    "sn": ["S"],
                },
            )
        config = root / "idsync.yaml"
        config.write_text(yaml.safe_dump(_config(source, target)))
        env = {
            **os.environ,
            "IDSYNC_BENCH_SOURCE_PASSWORD": source.password,
            "IDSYNC_BENCH_TARGET_PASSWORD": target.password,
        }
        watch = _TargetWatch(target)
        log = (root / "worker.log").open("wb")
        worker = _spawn(config, broker.bootstrap, root / "data", env, log)
        try:
            # Initial load: the follower's full refresh provisions everyone into the target.
            started = time.monotonic()
            deadline = started + 300
            while target.entry_count(target.people_dn, scope="level") < PEOPLE:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"follow phase: the initial load did not finish; see {root / 'worker.log'}"
                    )
                await asyncio.sleep(0.2)  # setup, not measured: the samples below wait on pushes
            res.records = PEOPLE
            res.seconds = time.monotonic() - started
            # Warm-up changes (first persist pushes, connection setup), not measured.
            latencies: list[float] = []
            for i in range(samples + 10):
                uid, title = f"p{i % PEOPLE}", f"t{i}"
                t0 = time.monotonic()
                conn.modify(f"uid={uid},{source.people_dn}", {"title": [("MODIFY_REPLACE", [title])]})
                try:
                    at = await asyncio.to_thread(
                        watch.wait_for, lambda u, t, uid=uid, title=title: (u, t) == (uid, title), 60.0
                    )
                except TimeoutError as e:
                    raise TimeoutError(_where_stopped(source, target, uid, title, root)) from e
                if i >= 10:
                    latencies.append((at - t0) * 1000)
            res.latency_samples = len(latencies)
            res.latency_ms = _percentiles(latencies)
            res.notes.append(
                f"follow: {len(latencies)} sequential ldap3 modifies on the source -> target slapd push; "
                f"initial load ({PEOPLE} people: full refresh, provisioning, group join) {res.seconds:.1f}s"
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
            log.close()
            watch.close()
            conn.unbind()
    return res
