"""The reference table (``streams.reftable``) and the metaverse stage's registrations, on a real broker:
a worker's copy of ``sync.refs``, its changes reaching the registrations, and a partition taken over by
another worker getting the changes it missed since it was saved."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.references import registration_keys
from engine.values import dn_key
from schemas.codec import pack
from schemas.messages import MVContribution, RefRegister, RefValue
from schemas.state import MVObject
from streams.app import ensure_topics
from streams.broker import EmbeddedBroker
from streams.consumer import restore
from streams.output import partition_for
from streams.reftable import RefTable
from streams.runtime import Runtime
from streams.stages.metaverse import _POSITIONS, POSITIONS_KEY, MetaverseStage

from .helpers import bench_runtime, until

pytestmark = pytest.mark.integration

MANAGER_DN = "employeenumber=e1,ou=people,o=hr"
ROUTE = f"ref|hr|{MANAGER_DN}"


def runtime(bootstrap: str, tmp: Path, name: str, **pipeline: Any) -> Runtime:
    return bench_runtime(bootstrap, tmp, name, "reftable", 4, **pipeline)


async def publish(rt: Runtime, *values: RefValue) -> None:
    out = await rt.outputs()
    for v in values:
        out.add(rt.names.refs_topic(), v.route.encode(), pack(v))
    await out.flush()


class Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class Ev:
    def __init__(self, message: Message, value: bytes) -> None:
        self.message, self.value = message, value


def test_the_copy_holds_the_latest_value_per_route_and_knows_what_changed_since_a_position(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = runtime(broker.bootstrap, tmp_path, "a")
            await ensure_topics(rt)
            await publish(rt, RefValue(route="ref|hr|a", value="M1", ts_ms=1))
            table = RefTable(rt)
            reader = asyncio.ensure_future(table.run())
            await asyncio.wait_for(table.ready.wait(), 30)
            # Ready: everything published before the start is in the copy.
            assert table.get("ref|hr|a") == "M1"
            assert table.get("ref|hr|b") is None
            routes, start, records = table.take()
            assert (routes, records) == (["ref|hr|a"], 1)

            await publish(
                rt,
                RefValue(route="ref|hr|b", value="M2", ts_ms=2),
                RefValue(route="ref|hr|a", value=None, ts_ms=3),  # nobody holds that DN any more
                RefValue(route="xref|dir|M2", value="cn=two", ts_ms=4),
            )
            await until(lambda: table.get("xref|dir|M2") is not None, 10)
            assert table.get("ref|hr|a") is None
            assert table.get("ref|hr|b") == "M2"
            routes, now, records = table.take()
            assert sorted(routes) == ["ref|hr|a", "ref|hr|b", "xref|dir|M2"] and records == 3
            table.done(now, records)
            assert table.applied == now
            # What changed since a saved position, read from the copy's own index.
            assert sorted(table.routes_since(start)) == ["ref|hr|a", "ref|hr|b", "xref|dir|M2"]
            assert table.routes_since(now) == []
            assert "ref|hr|a" in table.routes_since({})
            # A fence comes back once everything produced before it is read.
            await publish(rt, RefValue(route="ref|hr|c", value="M3", ts_ms=5))
            ends = await table.sync_end()
            assert table.get("ref|hr|c") == "M3"
            assert all(table.read[p] > end for p, end in ends.items())
            # The index keeps each route's latest record only (as compaction does): a route changed many
            # times is one entry, and what changed since a position is still found.
            assert table.index_size() == 4
            await publish(rt, *(RefValue(route="ref|hr|b", value=f"M2-{i}", ts_ms=6 + i) for i in range(5)))
            await table.sync_end()
            assert table.get("ref|hr|b") == "M2-4"
            assert table.index_size() == 4
            assert sorted(table.routes_since(now)) == ["ref|hr|b", "ref|hr|c"]
            assert sorted(table.routes_since(start)) == ["ref|hr|a", "ref|hr|b", "ref|hr|c", "xref|dir|M2"]
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            table.close()
            await rt.stop()

    asyncio.run(scenario())


async def owning(rt: Runtime, p: int) -> tuple[MetaverseStage, asyncio.Future[None], asyncio.Future[None]]:
    """A metaverse stage owning partition ``p`` (restored), with the table's reader and applier running
    and the copy read: (stage, reader, applier)."""
    await ensure_topics(rt)
    stage = MetaverseStage(rt)
    reader = asyncio.ensure_future(stage.read_table())
    applier = asyncio.ensure_future(stage.apply_table())
    await restore(rt, stage.store, [p])
    await restore(rt, stage.refs, [p])
    stage.store.owned.add(p)
    await asyncio.wait_for(stage.table.ready.wait(), 30)
    return stage, reader, applier


def contribution(mv_id: str, anchor: str = "E2") -> MVContribution:
    return MVContribution(
        mv_id=mv_id,
        mv_type="person",
        connector="hr",
        anchor=anchor,
        dn=f"employeeNumber={anchor},ou=people,o=hr",
        cs_version=1,
        event_id="e2",
        flows={"employeeId": ["E2"], "uid": ["u2"], "displayName": ["Two"]},
        projected=True,
        references=["manager"],
        ts_ms=1,
    )


def group_contribution(mv_id: str, member_dns: list[str], anchor: str = "g-staff") -> MVContribution:
    """A new hr group ``mv_id`` projected with its members' DNs as references (none resolved yet)."""
    return MVContribution(
        mv_id=mv_id,
        mv_type="group",
        connector="hr",
        anchor=anchor,
        dn="cn=staff,ou=groups,o=hr",
        cs_version=1,
        event_id=f"hr:{anchor}:1",
        flows={"name": ["staff"]},
        projected=True,
        references=["member"],
        ref_keys={"member": [dn_key(dn) for dn in member_dns]},
        ts_ms=1,
    )


def manager_register(mv_id: str, anchor: str = "E2") -> RefRegister:
    """``mv_id`` (its hr object ``anchor``) registering to its manager's DN."""
    return RefRegister(
        mv_id=mv_id,
        op="refer",
        connector="hr",
        keys=[MANAGER_DN],
        attribute="manager",
        anchor=anchor,
        ts_ms=2,
    )


def people_in(rt: Runtime, p: int, n: int = 5) -> list[str]:
    """``n`` mv_ids whose partition is ``p``."""
    people = [m for m in (f"M-{i}" for i in range(60)) if partition_for(m.encode(), rt.partitions) == p][:n]
    assert len(people) == n
    return people


async def register_managers(rt: Runtime, stage: MetaverseStage, p: int, people: list[str]) -> None:
    """Each person's contribution and registration to the manager's DN, processed and saved."""
    topic = rt.names.mv_topic()
    events = []
    for i, mv_id in enumerate(people):
        anchor = f"E{10 + i}"
        events += [
            Ev(Message(topic, p, 2 * i), pack(contribution(mv_id, anchor))),
            Ev(Message(topic, p, 2 * i + 1), pack(manager_register(mv_id, anchor))),
        ]
    async with stage.lock:
        await stage.process(events)
        await stage.checkpoint()


def managed_by(part: Any, manager: str) -> int:
    """People of a partition's unsaved state whose manager is ``manager``."""
    return sum(
        1
        for mv in part.unsaved.values()
        if isinstance(mv, MVObject) and mv.attributes.get("manager") == [manager]
    )


async def stop(*tasks: asyncio.Future[None]) -> None:
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def shut_down(*workers: tuple[Runtime, MetaverseStage]) -> None:
    """Close each worker's copy of the table, then stop its runtime (its tasks are stopped already)."""
    for _rt, stage in workers:
        stage.table.close()
    for rt, _stage in workers:
        await rt.stop()


async def taking_over(
    bootstrap: str, tmp: Path, p: int
) -> tuple[Runtime, MetaverseStage, asyncio.Future[None]]:
    """A second worker's metaverse stage given partition ``p``: restored from the changelogs, its copy of
    the table being read, not yet brought up to date (``assigned``): (runtime, stage, reader)."""
    b = runtime(bootstrap, tmp, "b")
    other = MetaverseStage(b)
    reader = asyncio.ensure_future(other.read_table())
    await restore(b, other.store, [p])
    await restore(b, other.refs, [p])
    other.store.owned.add(p)
    return b, other, reader


def test_a_partition_taken_over_gets_the_table_changes_made_since_it_was_saved(tmp_path: Path) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            mv_id = "M-two"
            p = partition_for(mv_id.encode(), a.partitions)
            stage, reader, applier = await owning(a, p)

            # A person whose manager is not in the table yet: the registration waits.
            topic = a.names.mv_topic()
            register = manager_register(mv_id)
            async with stage.lock:
                await stage.process(
                    [
                        Ev(Message(topic, p, 0), pack(contribution(mv_id))),
                        Ev(Message(topic, p, 1), pack(register)),
                    ]
                )
            part, regs = stage.store.partition(p), stage.refs.partition(p)

            def manager(mv: Any) -> list[str]:
                return list(mv.attributes.get("manager", [])) if isinstance(mv, MVObject) else []

            assert manager(part.unsaved[mv_id.encode()]) == []
            assert registration_keys(register)[0].encode() in regs.unsaved

            # The manager joins: the table's change reaches the registration.
            await publish(a, RefValue(route=ROUTE, value="M-one", ts_ms=3))
            await until(lambda: manager(part.unsaved.get(mv_id.encode())) == ["M-one"], 10)
            assert manager(part.unsaved[mv_id.encode()]) == ["M-one"]
            async with stage.lock:
                await stage.checkpoint()

            # The worker stops; meanwhile the manager's object changes (say it was deleted and projected
            # again): a change this partition's saved state has not seen.
            await stop(applier, reader)
            await publish(a, RefValue(route=ROUTE, value="M-one-again", ts_ms=4))

            # Another worker takes the partition over: restored from the changelogs, the person still has
            # the old value, until the table's changes since the saved position reach its registrations.
            b, other, reader_b = await taking_over(broker.bootstrap, tmp_path, p)
            restored = other.store.partition(p).get(mv_id.encode())
            assert restored is not None
            assert manager(other.store.partition(p).unsaved.get(mv_id.encode()) or _decode(restored)) == [
                "M-one"
            ]
            async with other.lock:
                await other.assigned([p], [])
            assert manager(other.store.partition(p).unsaved[mv_id.encode()]) == ["M-one-again"]

            await stop(reader_b)
            await shut_down((a, stage), (b, other))

    asyncio.run(scenario())


def test_a_table_change_reaching_many_referrers_is_applied_a_slice_at_a_time_with_saves_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta round changes routes that most groups register to: the applier answers the referrers a
    slice at a time and lets the consumer checkpoint between slices, so it never holds them all decoded
    as unsaved state (at 1M it held 3M attribute values, the worker's peak)."""
    monkeypatch.setattr("streams.stages.metaverse.REFERRER_SLICE", 2)

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = runtime(broker.bootstrap, tmp_path, "a")
            p = 0
            people = people_in(rt, p)
            stage, reader, applier = await owning(rt, p)
            await register_managers(rt, stage, p, people)
            part = stage.store.partition(p)

            # What the consumer does when the applier asks between slices: save (a checkpoint).
            seen: list[int] = []

            async def save_if_due() -> None:
                seen.append(managed_by(part, "M-one"))
                await stage.checkpoint()

            stage.save_if_due = save_if_due
            await publish(rt, RefValue(route=ROUTE, value="M-one", ts_ms=3))
            await until(lambda: len(seen) == 3, 10)
            assert seen == [2, 2, 1]
            for mv_id in people:
                raw = part.get(mv_id.encode())
                assert raw is not None and _decode(raw).attributes.get("manager") == ["M-one"]

            await stop(applier, reader)
            await shut_down((rt, stage))

    asyncio.run(scenario())


def test_a_partition_taken_over_replays_a_slice_of_referrers_at_a_time_and_keeps_its_old_position_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A takeover after a long absence can replay table changes that reach most of a partition's objects:
    it checkpoints between slices as the applier does, and a checkpoint in the middle leaves the
    partition's saved table position as the previous owner saved it (a crash then replays it all again)."""
    monkeypatch.setattr("streams.stages.metaverse.REFERRER_SLICE", 2)

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            p = 0
            people = people_in(a, p)
            stage, reader, applier = await owning(a, p)
            # A table change applied before the save, so the saved position is not the topic's beginning.
            before = dict(stage.table.applied)
            await publish(a, RefValue(route="ref|hr|someone-else", value="M-x", ts_ms=1))
            await until(lambda: stage.table.applied != before, 10)
            await register_managers(a, stage, p, people)

            def position(st: MetaverseStage) -> dict[int, int]:
                raw = st.refs.partition(p).get(POSITIONS_KEY)
                assert raw is not None
                return dict(_POSITIONS.decode(raw).offsets)

            old = position(stage)
            assert old == stage.table.applied != before
            await stop(applier, reader)
            # While nobody holds the partition, the manager appears.
            await publish(a, RefValue(route=ROUTE, value="M-one", ts_ms=3))

            b, other, reader_b = await taking_over(broker.bootstrap, tmp_path, p)
            await asyncio.wait_for(other.table.ready.wait(), 30)
            part = other.store.partition(p)
            seen: list[tuple[int, dict[int, int]]] = []

            async def save_if_due() -> None:
                resolved = managed_by(part, "M-one")
                await other.checkpoint()
                seen.append((resolved, position(other)))

            other.save_if_due = save_if_due
            async with other.lock:
                await other.assigned([p], [])
            assert seen == [(2, old), (2, old), (1, old)]
            for mv_id in people:
                raw = part.get(mv_id.encode())
                assert raw is not None and _decode(raw).attributes.get("manager") == ["M-one"]
            # The replay over, the next checkpoint saves the partition with this worker's position.
            async with other.lock:
                await other.checkpoint()
            assert position(other) == other.table.applied != old

            await stop(reader_b)
            await shut_down((a, stage), (b, other))

    asyncio.run(scenario())


def test_a_registration_written_before_registrations_were_batched_is_still_read(tmp_path: Path) -> None:
    """A worker upgraded while one-key registration messages (``key``, before ``keys``) are still on
    ``sync.mv`` resolves them like new ones, instead of dead-lettering them."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = runtime(broker.bootstrap, tmp_path, "a")
            mv_id = "M-two"
            p = partition_for(mv_id.encode(), rt.partitions)
            await ensure_topics(rt)
            await publish(rt, RefValue(route=ROUTE, value="M-one", ts_ms=1))
            stage, reader, applier = await owning(rt, p)
            old = msgspec.msgpack.encode(
                {
                    "kind": "ref-register",
                    "mv_id": mv_id,
                    "op": "refer",
                    "connector": "hr",
                    "key": MANAGER_DN,
                    "attribute": "manager",
                    "anchor": "E2",
                    "ts_ms": 2,
                }
            )
            topic = rt.names.mv_topic()
            async with stage.lock:
                await stage.process(
                    [Ev(Message(topic, p, 0), pack(contribution(mv_id))), Ev(Message(topic, p, 1), old)]
                )
            assert rt.errors == []
            mv = stage.store.partition(p).unsaved[mv_id.encode()]
            assert mv.attributes.get("manager") == ["M-one"]
            await stop(applier, reader)
            await shut_down((rt, stage))

    asyncio.run(scenario())


def _decode(raw: bytes) -> MVObject:
    from schemas.codec import unpack

    result: MVObject = unpack(raw, MVObject)
    return result


def stored(part: Any, mv_id: str) -> MVObject | None:
    """An object as the partition holds it: its unsaved state first, else what the database holds."""
    key = mv_id.encode()
    if key in part.unsaved:
        held = part.unsaved[key]
        return held if isinstance(held, MVObject) else None
    raw = part.get(key)
    return _decode(raw) if raw else None
