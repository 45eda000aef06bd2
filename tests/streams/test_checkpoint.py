"""Checkpoints on a real broker and real RocksDB: a stage keeps its batches' state unsaved (later
batches read it), saves it at a checkpoint — each key once, changelog first — and its consumer commits
input offsets only for what a checkpoint saved, so what was processed after the last one is delivered
again after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.state import CSObject
from streams import consumer as consumer_module
from streams.app import ensure_topics
from streams.broker import EmbeddedBroker
from streams.consumer import StageConsumer, restore
from streams.output import Outputs
from streams.runtime import Runtime
from streams.stages.base import Batch, Stage
from tests.streams.helpers import Ev, Message, bench_runtime, cancel, until

pytestmark = pytest.mark.integration


class Tally(msgspec.Struct):
    count: int


class TallyStage(Stage[Tally]):
    """Counts records per key (the record's value is the key): a key written by every batch."""

    step_id = "tally"
    store_name = "cs"  # a store with a changelog topic
    state_model = Tally

    def decode(self, topic: str, value: bytes) -> Any:
        return value

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        return [msg]

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        current = batch.get(msg)
        batch.put(msg, Tally(count=(current.count if current else 0) + 1))


def runtime(bootstrap: str, tmp: Path, name: str) -> Runtime:
    return bench_runtime(bootstrap, tmp, name, "ckpt", 2)


@contextlib.asynccontextmanager
async def hr_topic(tmp: Path) -> AsyncIterator[tuple[EmbeddedBroker, Runtime, str]]:
    """A broker, a runtime with its topics created, and its HR import topic."""
    with EmbeddedBroker(tmp / "broker") as broker:
        rt = runtime(broker.bootstrap, tmp, "a")
        await ensure_topics(rt)
        yield broker, rt, rt.names.import_topic("hr")


def test_batches_read_unsaved_state_and_a_checkpoint_saves_each_key_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with hr_topic(tmp_path) as (broker, rt, _topic):
            stage = TallyStage(rt)
            offset = 0

            def events(*keys: bytes) -> list[Ev]:
                nonlocal offset
                out = []
                for k in keys:
                    out.append(Ev(Message("in", 0, offset), k))
                    offset += 1
                return out

            await stage.process(events(b"group", b"a"))
            await stage.process(events(b"group", b"b", b"group"))
            part = stage.store.partition(0)
            # Processed, not saved: nothing in the changelog or the local copy yet; three keys wait.
            assert part.changelog_offset() is None
            assert list(part.scan(b"")) == []
            assert stage.unsaved() == (3, 3)
            # The second batch read the first one's unsaved value.
            assert part.unsaved[b"group"] == Tally(count=3)

            await stage.checkpoint()
            assert stage.unsaved() == (0, 0)
            # One changelog record per key, though "group" was written by both batches.
            assert part.changelog_offset() == 3
            saved = {k: msgspec.msgpack.decode(v, type=Tally) for k, v in part.scan(b"")}
            assert saved == {b"group": Tally(count=3), b"a": Tally(count=1), b"b": Tally(count=1)}

            # The next batch reads the saved state from the database; a delete is saved too.
            await stage.process(events(b"group"))
            batch = Batch(part, [b"a"], Tally)
            batch.put(b"a", None)
            batch.stash()
            await stage.checkpoint()
            assert part.changelog_offset() == 5
            assert msgspec.msgpack.decode(part.get(b"group") or b"", type=Tally) == Tally(count=4)
            assert part.get(b"a") is None

            # A key written and deleted again between two checkpoints, and a delete of a key never written,
            # were never logged: neither makes a changelog record nor a local write.
            batch = Batch(part, [b"c"], Tally)
            batch.put(b"c", Tally(count=1))
            batch.stash()
            await stage.process(events(b"group"))
            batch = Batch(part, [b"c", b"never"], Tally)
            batch.put(b"c", None)
            batch.put(b"never", None)
            batch.stash()
            assert stage.unsaved()[0] == 3
            await stage.checkpoint()
            assert part.changelog_offset() == 6  # "group" only
            assert part.get(b"c") is None and part.get(b"never") is None

            # Another worker rebuilds exactly that from the changelog.
            other = runtime(broker.bootstrap, tmp_path, "b")
            await restore(other, other.store("cs"), [0])
            rebuilt = {
                k: msgspec.msgpack.decode(v, type=Tally) for k, v in other.store("cs").partition(0).scan(b"")
            }
            assert rebuilt == {b"group": Tally(count=5), b"b": Tally(count=1)}
            await other.stop()
            await rt.stop()

    asyncio.run(scenario())


def test_offsets_wait_for_the_checkpoint_and_unsaved_work_is_delivered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with hr_topic(tmp_path) as (broker, rt, topic):
            probe = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=rt.names.group_id("probe"))
            await probe.start()

            async def committed() -> dict[int, int | None]:
                return {p: await probe.committed(TopicPartition(topic, p)) for p in (0, 1)}

            async def committed_is(expected: dict[int, int | None]) -> bool:
                return await committed() == expected

            seen: list[list[tuple[int, int]]] = [[], []]
            saves: list[dict[int, int | None]] = []

            def consumer(run: int) -> StageConsumer:
                async def process(events: list[Any]) -> None:
                    seen[run].extend((e.message.partition, e.message.offset) for e in events)

                async def checkpoint() -> None:
                    saves.append(await committed())

                c = StageConsumer(
                    rt, "probe", [topic], process, [], 10, checkpoint=checkpoint, unsaved=lambda: (0, 0)
                )
                c.interval_s = 3600.0
                return c

            out = await rt.outputs()
            for i in range(40):
                out.add(topic, f"k{i}".encode(), b"{}", partition=i % 2)
            await out.flush()

            # First run: never idle long enough to save, then it crashes (stopped without saving).
            monkeypatch.setattr(consumer_module, "IDLE_S", 3600.0)
            first = consumer(0)
            task = asyncio.create_task(first.run())
            await until(lambda: len(seen[0]) == 40, 10)
            assert sorted(seen[0]) == sorted((i % 2, i // 2) for i in range(40))
            rt.closed = True  # what a crash does: no save, no commit at the end
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rt.closed = False
            assert saves == []
            assert await committed() == {0: None, 1: None}

            # Second run (it joins once the group let the first member go: seconds on the embedded broker):
            # everything is delivered again; once idle it saves, then commits.
            monkeypatch.setattr(consumer_module, "IDLE_S", 0.2)
            second = consumer(1)
            task = asyncio.create_task(second.run())
            try:
                await until(lambda: committed_is({0: 20, 1: 20}), 30)
                assert await committed() == {0: 20, 1: 20}
                assert sorted(seen[1]) == sorted(seen[0])
                # The checkpoint ran before the offsets were committed.
                assert saves and saves[0] == {0: None, 1: None}
            finally:
                await cancel(task, probe.stop, rt.stop)

    asyncio.run(scenario())


class GroupStage(Stage[CSObject]):
    """Each record (its value: a member count) replaces one group's state with that many members."""

    step_id = "groups"
    store_name = "cs"
    state_model = CSObject

    def decode(self, topic: str, value: bytes) -> Any:
        return int(value)

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        return [f"g{msg}".encode()]

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        members = [f"uid=u{i},ou=people" for i in range(msg)]
        cs = CSObject(connector="dir", anchor=f"g{msg}", object_type="group", attributes={"member": members})
        batch.put(f"g{msg}".encode(), cs)


def test_a_stage_saves_when_its_unsaved_state_holds_too_many_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large groups held decoded are bounded by their values, not their number of keys."""

    async def scenario() -> None:
        async with hr_topic(tmp_path) as (_broker, rt, topic):
            stage = GroupStage(rt)
            monkeypatch.setattr(consumer_module, "IDLE_S", 3600.0)
            c = StageConsumer(
                rt, "groups", [topic], stage.process, [stage.store], 10, stage.checkpoint, stage.unsaved
            )
            c.interval_s = 3600.0  # neither the interval nor idleness saves here
            c.max_unsaved_values = 1000
            part = stage.store.partition(0)
            out = await rt.outputs()
            task = asyncio.create_task(c.run())
            try:
                # Two groups of 300 members (603 values with the objects): held, not saved.
                for n in (300, 301):
                    out.add(topic, b"k", str(n).encode(), partition=0)
                await out.flush()
                await until(lambda: len(part.unsaved) == 2, 20)
                assert stage.unsaved() == (2, 603)
                assert part.get(b"g300") is None and part.get(b"g301") is None
                # A third, of 500: 1,104 values, over the bound: saved without waiting for the interval.
                out.add(topic, b"k", b"500", partition=0)
                await out.flush()
                await until(lambda: part.get(b"g500") is not None, 20)
                assert stage.unsaved() == (0, 0)
                assert all(part.get(k) is not None for k in (b"g300", b"g301"))
            finally:
                await cancel(task, rt.stop)

    asyncio.run(scenario())


def test_idle_work_runs_after_fetches_that_bring_nothing_with_everything_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's idle work (``StageConsumer.idle``: large objects read back whole) runs a piece at a
    time after fetches that brought nothing, never with anything processed and not saved, is told how long
    nothing came, and stops once it says none is left — until the next checkpoint."""

    async def scenario() -> None:
        async with hr_topic(tmp_path) as (_broker, rt, topic):
            processed: list[int] = []
            last_batch = [time.monotonic()]  # the consumer's quiet time starts when it is made
            saves: list[int] = []
            #: Per call: records processed, of them saved, quiet seconds given, measured here.
            calls: list[tuple[int, int, float, float]] = []
            pieces: list[bool] = []

            async def process(events: list[Any]) -> None:
                processed.extend(e.message.offset for e in events)
                last_batch[0] = time.monotonic()

            async def checkpoint() -> None:
                saves.append(len(processed))

            def idle(quiet_s: float) -> bool:
                since = time.monotonic() - last_batch[0]
                calls.append((len(processed), saves[-1] if saves else 0, quiet_s, since))
                return pieces.pop() if pieces else False

            monkeypatch.setattr(consumer_module, "IDLE_S", 0.2)
            c = StageConsumer(
                rt, "probe", [topic], process, [], 10, checkpoint, lambda: (0, 0), None, None, idle
            )
            c.interval_s = 3600.0
            c.max_unsaved = 0  # a checkpoint after every batch
            task = asyncio.create_task(c.run())
            out = await rt.outputs()
            try:
                await until(lambda: bool(calls), 30)  # assigned, nothing came: it looks once
                await asyncio.sleep(0.5)
                assert [(n, s) for n, s, _q, _m in calls] == [(0, 0)]  # it said none was left: not again

                # A trickle of records (every 50 ms for a second), each batch saved; two pieces of work.
                pieces[:] = [True, True]
                for i in range(20):
                    out.add(topic, f"k{i}".encode(), b"{}", partition=0)
                    await out.flush()
                    await asyncio.sleep(0.05)
                await until(lambda: saves and saves[-1] == 20, 30)
                await asyncio.sleep(0.5)
                settled = len(calls)
                await asyncio.sleep(0.5)
                assert len(calls) == settled  # none left: no more calls until the next checkpoint
                later = calls[1:]
                # After checkpoints only (at most one call per checkpoint once the pieces ran out), each
                # with everything processed saved, told how long nothing came.
                assert 3 <= len(later) <= 2 + len(saves), (later, saves)
                assert all(n == s for n, s, _q, _m in later), later
                assert all(abs(q - m) < 0.1 for _n, _s, q, m in calls), calls
            finally:
                await cancel(task, rt.stop)

    asyncio.run(scenario())
