"""The metaverse store holds a large group's containers in chunks (``streams.chunks``, ``engine.chunks``),
on a real broker: a checkpoint logs and writes only the chunks a member change changed, the object reads
back whole, chunks go through the changelog to a worker that takes the partition over and through the
seeding of a new broker's empty changelog, and a deleted group leaves none behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from engine.chunks import CHUNK_PREFIX, object_prefix
from schemas.codec import unpack
from schemas.state import ConnectorLink, MVObject, TargetState
from streams.app import ensure_topics
from streams.bench.kafka import read_all
from streams.broker import EmbeddedBroker
from streams.chunks import MVChunks
from streams.consumer import restore
from streams.runtime import Runtime
from streams.stages.base import Batch, save
from streams.store import APART, META, PartitionStore

from .helpers import bench_runtime

pytestmark = pytest.mark.integration

SPLIT = 8
MV_ID = "0f0f0f0f-group"
KEY = MV_ID.encode()


def runtime(bootstrap: str, tmp: Path, name: str) -> Runtime:
    return bench_runtime(bootstrap, tmp, name, "chunks", 1, split_values_from=SPLIT)


def group(members: range | set[int]) -> MVObject:
    ids = sorted(f"{i:08x}-person" for i in members)
    return MVObject(
        mv_id=MV_ID,
        object_type="group",
        attributes={"member": ids, "displayName": ["All staff"]},
        links={
            "hr": ConnectorLink(
                anchor="all-staff",
                flows={"member": ids, "displayName": ["All staff"]},
                refs={"member": {f"employeenumber=e{i},o=hr": f"{i:08x}-person" for i in members}},
            )
        },
        targets={
            "dir": TargetState(
                status="exists", ref_dns={f"{i:08x}-person": f"uid=u{i},o=dir" for i in members}
            )
        },
    )


async def checkpoint(rt: Runtime, value: MVObject | None) -> None:
    """What the metaverse stage does: read the object, write it, keep it unsaved, then save."""
    part = rt.store("mv").partition(0)
    batch = Batch(part, [KEY], MVObject)
    batch.get(KEY)
    batch.put(KEY, value)
    batch.stash()
    await save(rt, [part], "metaverse")


def read(rt: Runtime) -> MVObject | None:
    return Batch(rt.store("mv").partition(0), [KEY], MVObject).get(KEY)


async def changelog(rt: Runtime) -> list[tuple[bytes, bytes | None]]:
    topic = rt.names.changelog_topic("mv")
    records: list[tuple[bytes, bytes | None]] = []
    async for _topic, batch in read_all(rt.settings.bootstrap_servers, [topic], 30):
        records += [(r.key, r.value) for r in batch if not r.key.startswith(META)]  # not the fences
    return records


def test_chunks_on_the_changelog_and_through_handover_and_seeding(tmp_path: Path) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker1") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            await ensure_topics(a)
            members = set(range(200))
            await checkpoint(a, group(members))
            part = a.store("mv").partition(0)
            # The object alone is in its range; its chunks are apart, listed only under their prefix.
            assert [k for k, _v in part.scan(b"")] == [KEY]
            stored = unpack(part.get(KEY) or b"", MVObject)
            assert stored.chunked and "member" not in stored.attributes
            chunks = [k for k, _v in part.scan(APART)]
            assert chunks and all(k.startswith(object_prefix(MV_ID)) for k in chunks)
            assert read(a) == group(members)
            first = len(await changelog(a))
            assert first == len(chunks) + 1

            # One member leaves: the object and one chunk per container (attribute, flow, references,
            # target DNs) are logged, each a few hundred bytes, not the group.
            members.discard(101)
            await checkpoint(a, group(members))
            logged = (await changelog(a))[first:]
            assert len([k for k, _v in logged if k.startswith(CHUNK_PREFIX)]) == 4, logged
            assert max(len(v or b"") for k, v in logged if k.startswith(CHUNK_PREFIX)) < 400
            assert read(a) == group(members)

            # Another worker takes the partition over from the changelog.
            b = runtime(broker.bootstrap, tmp_path, "b")
            await restore(b, b.store("mv"), [0])
            # Once its stage is idle, the restored group is read back whole and kept (``Store.warm``):
            # the next read does not scan its chunks.
            mv = b.store("mv")
            mv.owned.add(0)
            while mv.warm():
                pass
            assert len(b.kept) == 1
            with pytest.MonkeyPatch.context() as m:
                m.setattr(mv.partition(0), "scan", None)
                assert read(b) == group(members)
            await b.stop()
            await a.stop()

        # A new broker starts with an empty changelog: the local copy seeds it, chunks included.
        with EmbeddedBroker(tmp_path / "broker2") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            c = runtime(broker.bootstrap, tmp_path, "c")
            await ensure_topics(a)
            await restore(a, a.store("mv"), [0])
            await restore(c, c.store("mv"), [0])
            assert read(c) == group(members)

            # Below half of the threshold the containers go back inside: no chunk is left.
            await checkpoint(c, group(range(SPLIT // 2 - 1)))
            assert read(c) == group(range(SPLIT // 2 - 1))
            assert [k for k, _v in c.store("mv").partition(0).scan(APART)] == []
            await checkpoint(c, group(members))
            assert [k for k, _v in c.store("mv").partition(0).scan(APART)]
            # Deleted: nothing of it is left, here or for the next owner.
            await checkpoint(c, None)
            assert [k for k, _v in c.store("mv").partition(0).scan(APART)] == []
            d = runtime(broker.bootstrap, tmp_path, "d")
            await restore(d, d.store("mv"), [0])
            assert read(d) is None
            assert [k for k, _v in d.store("mv").partition(0).scan(APART)] == []
            for rt in (a, c, d):
                await rt.stop()

    asyncio.run(scenario())


def test_chunks_not_remembered_are_read_again_when_saved(tmp_path: Path) -> None:
    """A scan of a partition's objects reads every large group; what the codec remembers of their chunks is
    bounded (``read_values``), and a group saved after its chunks were dropped is compared with the
    database's — its chunks replaced, not left behind."""
    part = PartitionStore(tmp_path / "p0", 0, None, MVChunks(SPLIT, read_values=10))
    keys = {b"group-a": set(range(40)), b"group-b": set(range(100, 140))}

    def grp(key: bytes, members: set[int]) -> MVObject:
        return msgspec.structs.replace(group(members), mv_id=key.decode())

    def save() -> None:
        part.write(part.encode_unsaved())
        part.saved()

    batch = Batch(part, list(keys), MVObject)
    for key, members in keys.items():
        batch.get(key)
        batch.put(key, grp(key, members))
    batch.stash()
    save()
    # Both read (a's chunks dropped when b's are read), then a shrinks back inside its object.
    batch = Batch(part, list(keys), MVObject)
    assert [batch.get(k) for k in keys] == [grp(k, m) for k, m in keys.items()]
    batch.put(b"group-a", grp(b"group-a", {1, 2}))
    batch.stash()
    save()
    assert [k for k, _v in part.scan(object_prefix("group-a"))] == []
    assert [k for k, _v in part.scan(object_prefix("group-b"))]
    fresh = Batch(part, list(keys), MVObject)
    assert fresh.get(b"group-a") == grp(b"group-a", {1, 2})
    assert fresh.get(b"group-b") == grp(b"group-b", keys[b"group-b"])
    part.close()
