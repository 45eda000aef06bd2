"""The staging stage holds a large group's members apart from the group, in buckets of values under
keys of their own (``pipeline.split_values_from``), on a real broker: a value-level member change reads
and writes that member's bucket alone and registers that member alone, the held buckets go through the
changelog to a worker that takes the partition over, and a group that shrinks, or is deleted, leaves no
held bucket behind."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from engine.staging import held_bucket, held_prefix
from engine.values import dn_key
from schemas.codec import pack, to_json, unpack
from schemas.messages import CSLink, RefRegister
from schemas.state import CSObject, HeldBucket
from schemas.wire import ChangeRecord, Source
from streams.app import ensure_topics
from streams.bench.kafka import read_all
from streams.bench.records import group_dn
from streams.broker import EmbeddedBroker
from streams.consumer import restore
from streams.runtime import Runtime
from streams.stages import staging as staging_stage
from streams.stages.metaverse import _MV
from streams.stages.staging import StagingStage, cs_key

from .helpers import Ev, Message, bench_runtime

pytestmark = pytest.mark.integration

SPLIT = 4
ANCHOR = "group-x"


def runtime(bootstrap: str, tmp: Path, name: str) -> Runtime:
    return bench_runtime(bootstrap, tmp, name, "held", 1, split_values_from=SPLIT)


def person_dn(i: int) -> str:
    return f"employeeNumber=E{i},ou=people,o=hr"


class Feed:
    """Events for the stage's ``process``, numbered as a topic's offsets."""

    def __init__(self, rt: Runtime) -> None:
        self.rt, self.offset, self.version = rt, 0, 0

    def _ev(self, topic: str, value: bytes) -> Ev:
        self.offset += 1
        return Ev(Message(topic, 0, self.offset), value)

    def record(self, after: dict[str, list[str]] | None = None, op: str = "u", **values: Any) -> Ev:
        self.version += 1
        by_value = bool(values)
        rec = ChangeRecord(
            version=2 if by_value else 1,
            op=op,  # type: ignore[arg-type]
            anchor=ANCHOR,
            object_type="group",
            after=after,
            changes=[] if by_value else None,
            source=Source(
                connector="hr", dn=group_dn("x"), version=self.version, event_id=f"v{self.version}", ts_ms=1
            ),
            **values,
        )
        return self._ev(self.rt.names.import_topic("hr"), to_json(rec))

    def link(self, mv_id: str) -> Ev:
        msg = CSLink(connector="hr", anchor=ANCHOR, mv_id=mv_id, outcome="projected", ts_ms=1)
        return self._ev(self.rt.names.links_topic(), pack(msg))


def state(stage: StagingStage) -> tuple[CSObject | None, dict[str, str]]:
    """The group and its held members (by DN key) as the stage holds them, unsaved state first."""
    part = stage.store.partition(0)
    key = cs_key("hr", ANCHOR)
    raw = part.get(key)
    cs = part.unsaved[key] if key in part.unsaved else (None if raw is None else unpack(raw, CSObject))
    prefix = held_prefix("hr", ANCHOR, "member")
    buckets = {k: unpack(v, HeldBucket) for k, v in part.scan(prefix)}
    for k in part.unsaved_under(prefix):
        buckets[k] = part.unsaved[k]
    held: dict[str, str] = {}
    for k, bucket in buckets.items():
        if bucket is not None:
            assert bucket.values, f"an empty bucket is kept: {k!r}"
            assert all(held_bucket(v) == int(k[len(prefix) :], 16) for v in bucket.values)
            held.update(bucket.values)
    return cs, dict(sorted(held.items()))


async def registrations(rt: Runtime) -> list[RefRegister]:
    """Every reference registration staging published on the metaverse topic, in order."""
    out: list[RefRegister] = []
    async for _topic, records in read_all(rt.settings.bootstrap_servers, [rt.names.mv_topic()], 30):
        out += [m for r in records if isinstance(m := _MV.decode(r.value), RefRegister)]
    return out


async def staging_worker(bootstrap: str, tmp: Path) -> tuple[Runtime, StagingStage, Feed]:
    """A worker's staging stage owning partition 0 (restored), and a feed of events for it."""
    rt = runtime(bootstrap, tmp, "a")
    await ensure_topics(rt)
    stage = StagingStage(rt)
    await restore(rt, stage.store, [0])
    return rt, stage, Feed(rt)


def test_a_large_groups_members_are_held_apart_changed_by_value_and_carried_to_another_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_whole: list[str] = []
    real_held_of = staging_stage.held_of
    monkeypatch.setattr(
        staging_stage, "held_of", lambda cs, store: read_whole.append(cs.anchor) or real_held_of(cs, store)
    )

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a, stage, feed = await staging_worker(broker.bootstrap, tmp_path)
            members = [person_dn(i) for i in range(6)]
            await stage.process([feed.record({"name": ["x"], "member": members}, op="c")])
            cs, held = state(stage)
            assert cs is not None and cs.split == {"member": 6} and "member" not in cs.attributes
            assert held == {dn_key(m): m for m in members}
            # Projected: its six members are registered (the group read whole, once).
            await stage.process([feed.link("G1")])
            assert read_whole == [ANCHOR]
            # One member out, another in, by value: their keys alone, the group not read whole.
            await stage.process(
                [feed.record(added={"member": [person_dn(9)]}, removed={"member": [members[0]]})]
            )
            assert read_whole == [ANCHOR]
            cs, held = state(stage)
            assert cs is not None and cs.split == {"member": 6} and cs.version == 2
            assert set(held) == {dn_key(m) for m in [*members[1:], person_dn(9)]}
            regs = await registrations(a)
            assert [(r.op, r.keys) for r in regs if r.mv_id == "G1"][-2:] == [
                ("unrefer", [dn_key(members[0])]),
                ("refer", [dn_key(person_dn(9))]),
            ]
            assert sorted(k for r in regs if r.op == "refer" for k in r.keys) == sorted(
                dn_key(m) for m in [*members, person_dn(9)]
            )
            await stage.checkpoint()

            # Another worker restores the partition from the changelog: the same group, the same keys.
            b = runtime(broker.bootstrap, tmp_path, "b")
            other = StagingStage(b)
            await restore(b, other.store, [0])
            assert state(other) == state(stage)

            # A whole image with three members: still held (down to half the size they are held from)...
            await stage.process([feed.record({"name": ["x"], "member": members[1:4]})])
            cs, held = state(stage)
            assert (
                cs is not None and cs.split == {"member": 3} and set(held) == set(map(dn_key, members[1:4]))
            )
            # ... one member: back inside the group.
            await stage.process([feed.record({"name": ["x"], "member": members[1:2]})])
            cs, held = state(stage)
            assert cs is not None and cs.split == {} and cs.attributes["member"] == members[1:2]
            assert held == {}
            # Held again from SPLIT members on, then deleted: nothing held remains.
            await stage.process([feed.record({"name": ["x"], "member": members})])
            assert state(stage)[1] == {dn_key(m): m for m in members}
            await stage.process([feed.record(op="d")])
            assert state(stage) == (None, {})
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_a_group_held_under_rules_that_no_longer_allow_it_goes_back_inside_at_its_next_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held while only its reference flow read the members; the rules change (a flow or a filter reads
    them now): its next member change, by value, reads it whole and stores the members inside again."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a, stage, feed = await staging_worker(broker.bootstrap, tmp_path)
            members = [person_dn(i) for i in range(6)]
            await stage.process([feed.record({"name": ["x"], "member": members}, op="c"), feed.link("G1")])
            cs, _held = state(stage)
            assert cs is not None and cs.split == {"member": 6}
            monkeypatch.setattr(a, "rules", dataclasses.replace(a.rules, split_sources={}))
            await stage.process([feed.record(added={"member": [person_dn(9)]})])
            cs, held = state(stage)
            assert cs is not None and cs.split == {} and held == {}
            assert sorted(map(dn_key, cs.attributes["member"])) == sorted(
                map(dn_key, [*members, person_dn(9)])
            )
            await a.stop()

    asyncio.run(scenario())
