"""State stores and their changelogs on a real broker: restore, catch-up, seeding (invariant 11)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from streams.app import ensure_topics
from streams.broker import EmbeddedBroker
from streams.consumer import restore
from streams.runtime import Runtime
from streams.stages.base import Batch, save
from tests.streams.helpers import bench_runtime

pytestmark = pytest.mark.integration


class Item(msgspec.Struct):
    value: str


def runtime(bootstrap: str, tmp: Path, name: str) -> Runtime:
    return bench_runtime(bootstrap, tmp, name, "handover", 4)


async def write(rt: Runtime, partition: int, puts: dict[bytes, str | None]) -> None:
    """What a stage does with a batch and its checkpoint: keep the writes unsaved, then log them to the
    changelog, wait for the broker and write them locally."""
    part = rt.store("cs").partition(partition)
    batch = Batch(part, list(puts), Item)
    for k, v in puts.items():
        batch.put(k, None if v is None else Item(value=v))
    batch.stash()
    await save(rt, [part], "test")


def contents(rt: Runtime, partition: int) -> dict[bytes, str]:
    part = rt.store("cs").partition(partition)
    return {k: msgspec.msgpack.decode(v, type=Item).value for k, v in part.scan(b"")}


def test_restore_catch_up_and_seed(tmp_path: Path) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker1") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            b = runtime(broker.bootstrap, tmp_path, "b")
            await ensure_topics(a)
            await write(a, 1, {b"k1": "one", b"k2": "two"})
            await write(a, 1, {b"k1": None, b"k3": "three"})
            await write(a, 2, {b"other": "partition"})

            # A worker that never held partition 1 rebuilds it from the changelog, tombstones included.
            applied = await restore(b, b.store("cs"), [1])
            assert contents(b, 1) == {b"k2": "two", b"k3": "three"}
            assert applied == 4
            assert contents(b, 2) == {}  # only what it was given

            # b owns partition 1 now and writes; a catches up by reading only what b wrote meanwhile.
            await write(b, 1, {b"k2": "two, changed", b"k4": "four"})
            applied = await restore(a, a.store("cs"), [1])
            assert applied == 2
            assert contents(a, 1) == contents(b, 1) == {b"k2": "two, changed", b"k3": "three", b"k4": "four"}
            # Nothing new: the next restore reads nothing but its own fence.
            assert await restore(a, a.store("cs"), [1]) == 0
            await a.stop()
            await b.stop()

        # A new embedded broker starts with empty topics: the local copy seeds the changelog ...
        with EmbeddedBroker(tmp_path / "broker2") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            c = runtime(broker.bootstrap, tmp_path, "c")
            await ensure_topics(a)
            assert await restore(a, a.store("cs"), [1, 2]) == 0
            assert contents(a, 1) == {b"k2": "two, changed", b"k3": "three", b"k4": "four"}
            # ... so that another worker can take the partitions over from it.
            assert await restore(c, c.store("cs"), [1, 2]) == 4
            assert contents(c, 1) == contents(a, 1)
            assert contents(c, 2) == {b"other": "partition"}
            await a.stop()
            await c.stop()

    asyncio.run(scenario())


def test_a_stale_copy_loses_to_a_changelog_with_history(tmp_path: Path) -> None:
    """A local copy ahead of a changelog that has someone else's history is not trusted over it."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker1") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a")
            await ensure_topics(a)
            for i in range(5):
                await write(a, 0, {f"k{i}".encode(): f"old {i}"})
            await a.stop()
        with EmbeddedBroker(tmp_path / "broker2") as broker:
            b = runtime(broker.bootstrap, tmp_path, "b")
            await ensure_topics(b)
            await write(b, 0, {b"fresh": "from b"})
            a = runtime(broker.bootstrap, tmp_path, "a")
            await restore(a, a.store("cs"), [0])
            assert contents(a, 0) == {b"fresh": "from b"}
            await a.stop()
            await b.stop()

    asyncio.run(scenario())
