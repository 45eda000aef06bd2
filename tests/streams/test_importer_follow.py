"""Delta import and follow runners (streams.follow) on a real embedded broker and a real slapd."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.ldap import LdapConnector
from connectors.ldap.slapd import Slapd, free_port
from engine.staging import stage
from schemas.config import IdsyncConfig
from schemas.errors import ConfigError
from schemas.records import ChangeRecord, RunMarker, WatermarkRecord
from schemas.state import CSObject
from streams.bench.kafka import true_ends
from streams.broker import EmbeddedBroker
from streams.config import parse_config
from streams.follow import WatermarkStore, check_mode, run_delta, run_follow, run_full
from streams.runtime import Runtime, Settings
from tests.fixtures.slapd import LdapTree

SESSIONLOG = 4


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def small_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A slapd whose session log holds only a few writes: older cookies expire."""
    with Slapd(tmp_path_factory.mktemp("slapd-small"), port=free_port(), sessionlog_size=SESSIONLOG) as s:
        yield s


@pytest.fixture
def tree(small_slapd: Slapd) -> Iterator[LdapTree]:
    base_dn = small_slapd.add_ou(f"t-{uuid.uuid4().hex[:12]}")
    conn = small_slapd.connect()
    try:
        yield LdapTree(slapd=small_slapd, base_dn=base_dn, conn=conn)
    finally:
        conn.unbind()
        small_slapd.delete_subtree(base_dn)


def _config(tree: LdapTree, **ldap: Any) -> IdsyncConfig:
    return parse_config(
        {
            "name": f"t{uuid.uuid4().hex[:10]}",
            "connectors": {
                "dir": {
                    "kind": "ldap",
                    "uri": tree.slapd.uri,
                    "bind_dn": tree.slapd.bind_dn,
                    "password": tree.slapd.password,
                    "base_dn": tree.base_dn,
                    "connect_timeout_s": 2.0,
                    **ldap,
                }
            },
            "pipeline": {"partitions": 2},
        },
        Path("."),
    )


@pytest.fixture
def rt(broker: EmbeddedBroker, tree: LdapTree, tmp_path: Path) -> Iterator[Runtime]:
    yield Runtime(Settings(bootstrap_servers=broker.bootstrap, data_dir=tmp_path), _config(tree))


def person(cn: str, **extra: list[str]) -> dict[str, list[str]]:
    return {"objectClass": ["inetOrgPerson"], "cn": [cn], "sn": ["S"], **extra}


async def read_topic(rt: Runtime, topic: str) -> list[tuple[int, Any]]:
    """Every record of ``topic`` (partition, decoded value), partition by partition in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=rt.settings.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(rt.partitions)]
        ends = {tp: end for tp, (end, _ts) in (await true_ends(consumer, tps)).items()}
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[int, Any]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    if r.value is not None:
                        out.append((tp.partition, _decode(r.value)))
                    if r.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def _decode(value: bytes) -> Any:
    if b'"run-start"' in value or b'"run-end"' in value:
        return RunMarker.model_validate_json(value)
    return ChangeRecord.model_validate_json(value)


async def imports(rt: Runtime) -> list[Any]:
    return [v for _p, v in await read_topic(rt, rt.names.import_topic("dir"))]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _prepare(rt: Runtime) -> None:
    from streams.app import ensure_topics

    await ensure_topics(rt)  # the watermark topic among them, compacted


# ---------------------------------------------------------------------------------------- tests
def test_watermark_store_reads_back_the_latest_value(rt: Runtime) -> None:
    async def go() -> list[WatermarkRecord | None]:
        await _prepare(rt)
        store = WatermarkStore(rt)
        got = [await store.read("dir")]
        await store.write("dir", "one", "delta")
        await store.write("other", "x", "delta")
        await store.write("dir", "two", "follow")
        got.append(await store.read("dir"))
        await store.reset("dir")
        got.append(await store.read("dir"))
        got.append(await store.read("other"))
        await rt.stop()
        return got

    first, latest, after_reset, other = run(go())
    assert first is None
    assert latest is not None and (latest.watermark, latest.via) == ("two", "follow")
    assert after_reset is None
    assert other is not None and other.watermark == "x"


def test_first_delta_is_a_full_refresh_then_deltas_publish_changes_and_deletes(
    rt: Runtime, tree: LdapTree
) -> None:
    a = tree.add(f"cn=a,{tree.base_dn}", person("a"))
    b = tree.add(f"cn=b,{tree.base_dn}", person("b"))
    connector = LdapConnector("dir", rt.config.connectors["dir"])

    async def go() -> tuple[Any, Any, Any, list[Any], WatermarkRecord | None]:
        await _prepare(rt)
        first = await run_delta(rt, "dir", connector)
        tree.conn.modify(f"cn=a,{tree.base_dn}", {"title": [("MODIFY_REPLACE", ["boss"])]})
        tree.conn.delete(f"cn=b,{tree.base_dn}")
        c = tree.add(f"cn=c,{tree.base_dn}", person("c"))
        second = await run_delta(rt, "dir", connector)
        third = await run_delta(rt, "dir", connector)
        records = await imports(rt)
        stored = await WatermarkStore(rt).read("dir")
        await rt.stop()
        return first, second, third, [*records, c], stored

    try:
        first, second, third, got, stored = run(go())
    finally:
        connector.close()
    *records, c = got
    # 1. No watermark yet: a bracketed full import on every partition, then deltas go on from there.
    assert first.full_refreshes == 1 and first.changes == 2
    markers = [r for r in records if isinstance(r, RunMarker)]
    assert sorted((m.op, m.partition) for m in markers) == [
        ("run-end", 0),
        ("run-end", 1),
        ("run-start", 0),
        ("run-start", 1),
    ]
    snapshot = [r for r in records if isinstance(r, ChangeRecord) and r.op == "r"]
    assert {r.anchor for r in snapshot} == {a, b}
    # 2. The delta: the modify and the add as full images (op u), the delete as op d, no markers, and
    # versions newer than the snapshot's.
    delta = [r for r in records if isinstance(r, ChangeRecord) and r.op != "r"]
    assert second.full_refreshes == 0 and (second.changes, second.deletes) == (2, 1)
    assert {(r.op, r.anchor) for r in delta} == {("u", a), ("d", b), ("u", c)}
    assert next(r for r in delta if r.anchor == a).after["title"] == ["boss"]
    run_version = markers[0].run_version
    assert all(r.source.version > run_version for r in delta)
    assert all(r.source.watermark for r in delta)
    # 3. Nothing changed since: nothing published, the watermark stays where the broker has it.
    assert (third.changes, third.deletes, third.full_refreshes) == (0, 0, 0)
    assert stored is not None and stored.via == "delta" and "csn=" in stored.watermark


def test_expired_cursor_runs_the_full_refresh_that_derives_deletes_from_absence(
    rt: Runtime, tree: LdapTree
) -> None:
    tree.add(f"cn=keep,{tree.base_dn}", person("keep"))
    gone = tree.add(f"cn=gone,{tree.base_dn}", person("gone"))
    connector = LdapConnector("dir", rt.config.connectors["dir"])

    async def go() -> tuple[Any, list[Any]]:
        await _prepare(rt)
        await run_delta(rt, "dir", connector)
        tree.conn.delete(f"cn=gone,{tree.base_dn}")
        for i in range(SESSIONLOG + 3):  # more writes than the session log holds: the cookie expires
            tree.conn.modify(f"cn=keep,{tree.base_dn}", {"title": [("MODIFY_REPLACE", [f"t{i}"])]})
        report = await run_delta(rt, "dir", connector)
        records = await imports(rt)
        await rt.stop()
        return report, records

    try:
        report, records = run(go())
    finally:
        connector.close()
    assert report.full_refreshes == 1
    runs = [r for r in records if isinstance(r, RunMarker) and r.op == "run-end"]
    assert len({m.run_id for m in runs}) == 2, "a second bracketed full import"
    last_run = runs[-1].run_id
    refreshed = [r for r in records if isinstance(r, ChangeRecord) and r.source.run_id == last_run]
    # The deleted entry is simply absent from the refresh: the run-end markers let staging delete it.
    assert gone not in {r.anchor for r in refreshed}
    assert [r.after["title"] for r in refreshed] == [[f"t{SESSIONLOG + 2}"]]
    assert not [r for r in records if isinstance(r, ChangeRecord) and r.op == "d"], "no delete from a delta"


def test_follow_publishes_pushed_changes_and_resumes_without_losing_any(rt: Runtime, tree: LdapTree) -> None:
    a = tree.add(f"cn=a,{tree.base_dn}", person("a"))
    connector = LdapConnector("dir", rt.config.connectors["dir"])

    async def until(pred: Any, what: str) -> list[Any]:
        for _ in range(200):
            records = await imports(rt)
            if pred(records):
                return records
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    async def go() -> tuple[list[Any], Any, Any]:
        await _prepare(rt)
        await run_full(rt, "dir", connector)
        stop = asyncio.Event()
        task = asyncio.create_task(run_follow(rt, "dir", connector, stop))
        await asyncio.sleep(1.0)  # let the persist search start (the change below is pushed, not polled)
        tree.conn.modify(f"cn=a,{tree.base_dn}", {"title": [("MODIFY_REPLACE", ["one"])]})
        await until(lambda rs: any(getattr(r, "op", "") == "u" for r in rs), "the pushed change")
        stop.set()
        first = await asyncio.wait_for(task, 10)
        # While nobody follows: a change and a delete. The next follow resumes from the stored cookie.
        tree.conn.modify(f"cn=a,{tree.base_dn}", {"title": [("MODIFY_REPLACE", ["two"])]})
        b = tree.add(f"cn=b,{tree.base_dn}", person("b"))
        tree.conn.delete(f"cn=b,{tree.base_dn}")
        stop = asyncio.Event()
        task = asyncio.create_task(run_follow(rt, "dir", connector, stop))
        records = await until(
            lambda rs: (
                any(getattr(r, "op", "") == "d" for r in rs)
                and any(getattr(r, "after", None) and r.after.get("title") == ["two"] for r in rs)
            ),
            "the changes made while stopped",
        )
        stop.set()
        second = await asyncio.wait_for(task, 10)
        await rt.stop()
        return [*records, b], first, second

    try:
        got, first, second = run(go())
    finally:
        connector.close()
    *records, b = got
    assert first.checkpoints >= 1 and first.full_refreshes == 0
    assert second.full_refreshes == 0, "resumed from the stored watermark, no full refresh"
    delta = [r for r in records if isinstance(r, ChangeRecord) and r.op != "r"]
    titles = [r.after.get("title") for r in delta if r.op == "u" and r.anchor == a]
    assert titles[0] == ["one"] and titles[-1] == ["two"]
    assert ("d", b) in {(r.op, r.anchor) for r in delta}
    # A change published twice (at-least-once) carries the same event id: staging drops the repeat.
    ones = [r for r in delta if r.anchor == a and r.after.get("title") == ["one"]]
    cs = stage(None, ones[0]).after
    assert isinstance(cs, CSObject)
    again = ones[0].model_copy(update={"source": ones[0].source.model_copy(update={"version": 2**62})})
    assert stage(cs, again).pending == "duplicate"
    older = ones[0].model_copy(update={"source": ones[0].source.model_copy(update={"version": 1})})
    assert stage(cs, older).pending == "stale"


def test_modes_need_the_capability(rt: Runtime, tree: LdapTree) -> None:
    from connectors.csv.connector import CsvConnector

    csv_file = Path(rt.settings.data_dir) / "p.csv"
    csv_file.write_text("id,name\n1,a\n")
    cfg = parse_config(
        {"connectors": {"hr": {"kind": "csv", "path": str(csv_file), "anchor": "id"}}}, Path(".")
    )
    conn = CsvConnector("hr", cfg.connectors["hr"])
    check_mode("hr", conn, "full")
    with pytest.raises(ConfigError, match=r"connectors\.hr: follow mode needs a connector that can follow"):
        check_mode("hr", conn, "follow")
    with pytest.raises(ConfigError, match="import_mode 'follow' needs delta: syncrepl"):
        _config(tree, import_mode="follow", delta="none")
    with pytest.raises(ConfigError, match="import_mode"):
        _config(tree, import_mode="sometimes")
    with contextlib.suppress(Exception):
        conn.close()
