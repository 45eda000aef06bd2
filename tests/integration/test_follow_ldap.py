"""LDAP follow mode end to end (issue 5, acceptance 2 and 3), as real processes.

An embedded broker, a slapd with syncprov and a small session log, a PostgreSQL table as second target,
and ``idsync worker`` whose config says ``import_mode: follow`` for the directory (so the worker follows
it). Changes are made with ``ldapmodify``; a trigger on the target table counts every write idsync makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.ldap.slapd import Slapd, free_port
from streams.bench.kafka import true_ends
from streams.broker import EmbeddedBroker
from streams.output import partition_for

pytestmark = pytest.mark.integration

PG = "host=127.0.0.1 port=5432 dbname=test user=root"
SESSIONLOG = 6


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    with Slapd(tmp_path / "slapd", port=free_port(), sessionlog_size=SESSIONLOG) as s:
        yield s


@pytest.fixture
def table() -> Iterator[str]:
    """A target table and an audit table filled by a trigger: one row per INSERT/UPDATE/DELETE."""
    name = f"follow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as db:
        db.execute(
            f"CREATE TABLE {name} (id serial PRIMARY KEY, uid text UNIQUE, dn text, cn text, sn text, "
            "title text)"
        )
        db.execute(f"CREATE TABLE {name}_audit (n serial, op text, uid text)")
        db.execute(
            f"CREATE FUNCTION {name}_log() RETURNS trigger AS $$ BEGIN "
            f"INSERT INTO {name}_audit (op, uid) VALUES (TG_OP, COALESCE(NEW.uid, OLD.uid)); "
            "RETURN NULL; END $$ LANGUAGE plpgsql"
        )
        db.execute(
            f"CREATE TRIGGER {name}_audit AFTER INSERT OR UPDATE OR DELETE ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}_log()"
        )
    try:
        yield name
    finally:
        with psycopg.connect(PG, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {name}, {name}_audit")
            db.execute(f"DROP FUNCTION IF EXISTS {name}_log()")


def write_config(path: Path, slapd: Slapd, table: str, mode: str) -> str:
    instance = f"f{uuid.uuid4().hex[:8]}"
    config = {
        "name": instance,
        "connectors": {
            "dir": {
                "kind": "ldap",
                "uri": slapd.uri,
                "bind_dn": slapd.bind_dn,
                "password": "${FOLLOW_LDAP_PASSWORD}",
                "base_dn": slapd.people_dn,
                "import_mode": mode,
                "follow_backoff_initial_s": 0.5,
            },
            "db": {
                "kind": "sql",
                "url": "postgresql+psycopg://root@127.0.0.1:5432/test",
                "object_types": {
                    "person": {
                        "table": table,
                        "anchor": "id",
                        "dn_column": "dn",
                        "columns": {"uid": "uid", "cn": "cn", "sn": "sn", "title": "title"},
                    }
                },
            },
        },
        "inbound": [
            {
                "connector": "dir",
                "object_type": "person",
                "mv_type": "person",
                "join": [{"cs": "uid", "mv": "uid"}],
                "project": True,
                "flows": [{"mv": a, "source": a} for a in ("uid", "cn", "sn", "title")],
            }
        ],
        "outbound": [
            {
                "connector": "db",
                "mv_type": "person",
                "object_type": "person",
                "dn": "uid={uid}",
                "flows": [
                    {"target": "uid", "source": "uid"},
                    {"target": "cn", "source": "cn"},
                    {"target": "sn", "source": "sn"},
                    {"target": "title", "source": "title", "allow_null": True},
                ],
            }
        ],
        "pipeline": {"partitions": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return instance


class Pipeline:
    """``idsync worker`` (and ``idsync import``) as subprocesses against one broker and data dir."""

    def __init__(self, tmp: Path, broker: EmbeddedBroker, slapd: Slapd, config: Path) -> None:
        self.tmp, self.broker, self.slapd, self.config = tmp, broker, slapd, config
        self.worker: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "FOLLOW_LDAP_PASSWORD": self.slapd.password}

    def base(self, *cmd: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streams.cli",
            *cmd,
            "-c",
            str(self.config),
            "--bootstrap-servers",
            self.broker.bootstrap,
            "--data-dir",
            str(self.tmp / "data"),
        ]

    def start_worker(self) -> None:
        log = self.tmp / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.worker = subprocess.Popen(
                [*self.base("worker"), "--fetch-max-wait-ms", "10"],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait(10)
        self.worker = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.worker.returncode}) waiting for {what}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-4000:]}")
            time.sleep(0.2)


def ldapmodify(slapd: Slapd, ldif: str, tmp: Path) -> None:
    """The OpenLDAP command-line client (password from a file, not the command line)."""
    secret = tmp / "ldap-pw"
    secret.write_text(slapd.password)
    secret.chmod(0o600)
    cmd = ["ldapmodify", "-x", "-H", slapd.uri, "-D", slapd.bind_dn, "-y", str(secret)]
    subprocess.run(cmd, input=ldif.encode(), check=True, capture_output=True, timeout=10)


def add_person(slapd: Slapd, uid: str, tmp: Path, title: str = "engineer") -> str:
    dn = f"uid={uid},{slapd.people_dn}"
    ldapmodify(
        slapd,
        f"dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid.title()}\n"
        f"sn: {uid.upper()}\ntitle: {title}\n",
        tmp,
    )
    return dn


def set_title(slapd: Slapd, uid: str, title: str, tmp: Path) -> None:
    ldif = f"dn: uid={uid},{slapd.people_dn}\nchangetype: modify\nreplace: title\ntitle: {title}\n"
    ldapmodify(slapd, ldif, tmp)


def delete_person(slapd: Slapd, uid: str, tmp: Path) -> None:
    ldapmodify(slapd, f"dn: uid={uid},{slapd.people_dn}\nchangetype: delete\n", tmp)


def rows(table: str) -> dict[str, str | None]:
    with psycopg.connect(PG) as db:
        return dict(db.execute(f"SELECT uid, title FROM {table}").fetchall())


def audit(table: str) -> list[tuple[str, str]]:
    with psycopg.connect(PG) as db:
        return [(op, uid) for op, uid in db.execute(f"SELECT op, uid FROM {table}_audit ORDER BY n")]


def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every non-null record value of ``topic``, decoded as JSON."""

    async def go() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = {tp: end for tp, (end, _ts) in (await true_ends(consumer, tps)).items()}
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[dict[str, Any]] = []
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for r in records:
                        if r.value is not None:
                            out.append(json.loads(r.value))
                        if r.offset + 1 >= ends[tp]:
                            remaining.discard(tp)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def rewind_watermark(bootstrap: str, instance: str, record: dict[str, Any]) -> None:
    """Store an older watermark again, as a follower that crashed before its next checkpoint left it."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            value = json.dumps({**record, "ts_ms": int(time.time() * 1000)}).encode()
            topic = f"idsync.{instance}.watermarks"
            await producer.send_and_wait(topic, value, key=b"dir", partition=partition_for(b"dir", 2))
        finally:
            await producer.stop()

    asyncio.run(go())


def test_ldap_follow_reaches_metaverse_and_second_target_exactly_once(
    tmp_path: Path, broker: EmbeddedBroker, slapd: Slapd, table: str
) -> None:
    for uid in ("alice", "bob", "carol"):
        add_person(slapd, uid, tmp_path)
    config = tmp_path / "idsync.yaml"
    instance = write_config(config, slapd, table, "follow")
    p = Pipeline(tmp_path, broker, slapd, config)

    # 1. The worker follows the directory: no watermark yet, so a full refresh provisions everyone.
    p.start_worker()
    try:
        p.wait("the initial load", lambda: set(rows(table)) == {"alice", "bob", "carol"})

        # 2. Acceptance 2: an ldapmodify change reaches the metaverse and the second target.
        set_title(slapd, "alice", "architect", tmp_path)
        p.wait("alice's new title in the target", lambda: rows(table)["alice"] == "architect")
        mv = read_topic(broker.bootstrap, f"idsync.{instance}.mv.changes")
        assert any(
            c["op"] == "update" and c["attributes"].get("title") == ["architect"] and "title" in c["changed"]
            for c in mv
        ), mv
    finally:
        p.stop_worker()

    # 3. Acceptance 3: while nothing follows, a change, a delete and an add. And as if the follower had
    # crashed after publishing alice's change but before storing its checkpoint: the watermark goes back
    # to the one of the full refresh, so alice's change is published a second time.
    set_title(slapd, "bob", "manager", tmp_path)
    delete_person(slapd, "carol", tmp_path)
    add_person(slapd, "dave", tmp_path)
    watermarks = read_topic(broker.bootstrap, f"idsync.{instance}.watermarks")
    rewind_watermark(broker.bootstrap, instance, next(w for w in watermarks if w.get("via") == "full"))
    p.start_worker()
    try:
        p.wait(
            "the changes made while stopped",
            lambda: rows(table) == {"alice": "architect", "bob": "manager", "dave": "engineer"},
        )
        # A last change after them: once it has arrived, the earlier ones have had every chance to repeat.
        set_title(slapd, "dave", "lead", tmp_path)
        p.wait("the sentinel change", lambda: rows(table).get("dave") == "lead")
    finally:
        p.stop_worker()
    # Nothing missed, nothing applied twice: exactly one write per change.
    assert sorted(audit(table)) == sorted(
        [
            ("INSERT", "alice"),
            ("INSERT", "bob"),
            ("INSERT", "carol"),
            ("UPDATE", "alice"),
            ("UPDATE", "bob"),
            ("DELETE", "carol"),
            ("INSERT", "dave"),
            ("UPDATE", "dave"),
        ]
    ), audit(table)
    imports = read_topic(broker.bootstrap, f"idsync.{instance}.import.dir")
    assert len({r["run_id"] for r in imports if r.get("op") == "run-end"}) == 1, "one full refresh so far"
    architect = [r for r in imports if r.get("op") == "u" and r["after"].get("title") == ["architect"]]
    assert len(architect) == 2, "alice's change was published twice (at-least-once) and applied once"
    assert architect[0]["source"]["event_id"] == architect[1]["source"]["event_id"]
    assert [r["anchor"] for r in imports if r.get("op") == "d"], "the delete came as a delta delete"

    # 4. An expired cursor: more writes than the session log holds while nobody follows. The follower
    # falls back to a bracketed full refresh, which deletes what is gone from what is absent.
    before = len(audit(table))
    delete_person(slapd, "dave", tmp_path)
    for i in range(SESSIONLOG + 2):
        set_title(slapd, "bob", f"title-{i}", tmp_path)
    p.start_worker()
    try:
        last = f"title-{SESSIONLOG + 1}"
        p.wait("the full refresh", lambda: rows(table) == {"alice": "architect", "bob": last})
        add_person(slapd, "erin", tmp_path)  # and following goes on from the refresh's watermark
        p.wait("a change after the refresh", lambda: "erin" in rows(table))
    finally:
        p.stop_worker()
    assert "full refresh" in p.log()
    imports = read_topic(broker.bootstrap, f"idsync.{instance}.import.dir")
    assert len({r["run_id"] for r in imports if r.get("op") == "run-end"}) == 2, "a second full import"
    # The refresh shows bob's latest title only once: one update, not one per intermediate title.
    assert sorted(audit(table)[before:]) == sorted(
        [("DELETE", "dave"), ("UPDATE", "bob"), ("INSERT", "erin")]
    ), audit(table)
    watermarks = read_topic(broker.bootstrap, f"idsync.{instance}.watermarks")
    assert {w["via"] for w in watermarks if w.get("connector") == "dir"} >= {"full", "follow"}
