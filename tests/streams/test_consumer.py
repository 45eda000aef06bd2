"""A stage's consumer on a real broker: a batch's offsets are committed after it was processed, and
the commit's round trip overlaps the next batch — yet the last batch's commit does not wait for one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.app import ensure_topics
from streams.broker import EmbeddedBroker
from streams.consumer import StageConsumer
from tests.streams.helpers import bench_runtime, cancel, until

pytestmark = pytest.mark.integration


def test_every_processed_batch_is_committed_the_last_one_without_a_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = bench_runtime(broker.bootstrap, tmp_path, "w", "commits", 2)
            await ensure_topics(rt)
            topic = rt.names.import_topic("hr")
            seen: list[tuple[int, int]] = []
            committed_while_processing: list[dict[int, int | None]] = []
            probe = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=rt.names.group_id("probe"))
            await probe.start()

            async def committed() -> dict[int, int | None]:
                return {p: await probe.committed(TopicPartition(topic, p)) for p in (0, 1)}

            async def committed_is(expected: dict[int, int | None]) -> bool:
                return await committed() == expected

            async def process(events: list[Any]) -> None:
                # Offsets are never committed ahead of processing (at-least-once).
                now = await committed()
                committed_while_processing.append(now)
                for e in events:
                    done = now[e.message.partition]
                    assert done is None or done <= e.message.offset
                seen.extend((e.message.partition, e.message.offset) for e in events)

            stage = StageConsumer(rt, "probe", [topic], process, [], batch_size=10)
            task = asyncio.create_task(stage.run())
            try:
                out = await rt.outputs()
                for i in range(50):
                    out.add(topic, f"k{i}".encode(), b"{}", partition=i % 2)
                await out.flush()
                # No record follows the last batch, and still its offsets reach the broker.
                await until(lambda: committed_is({0: 25, 1: 25}), 10)
                assert await committed() == {0: 25, 1: 25}
                assert sorted(seen) == sorted((i % 2, i // 2) for i in range(50))
                assert len(committed_while_processing) >= 5  # batches of at most 10
            finally:
                await cancel(task, probe.stop, rt.stop)

    asyncio.run(scenario())


def test_a_stage_is_behind_while_its_batches_leave_records_waiting(tmp_path: Path) -> None:
    """``Runtime.behind``: the lag a stage's batch leaves on its partitions (the high watermarks its
    fetches returned), whatever the records' timestamps; a stage that keeps up or went quiet is not
    behind, and only the stages asked about count."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = bench_runtime(broker.bootstrap, tmp_path, "w", "lag", 2)
            await ensure_topics(rt)
            topic = rt.names.import_topic("hr")
            out = await rt.outputs()
            for i in range(3_000):
                # Stamped now: their age says nothing, only how many wait. One partition: a partition
                # not processed from yet counts nothing.
                out.add(topic, f"k{i}".encode(), b"{}", partition=0)
            await out.flush()
            seen: list[int] = []
            gate = asyncio.Event()

            async def process(events: list[Any]) -> None:
                if len(seen) == 3:
                    await gate.wait()  # hold the fourth batch: the lag of the third is the last known
                seen.append(len(events))

            stage = StageConsumer(rt, "probe", [topic], process, [], batch_size=100)
            task = asyncio.create_task(stage.run())
            try:
                await until(lambda: len(seen) == 3, 20)
                assert sum(seen) <= 300  # batches of at most 100
                assert rt.input_lag["probe"][1] == 3_000 - sum(seen)  # what the third batch left waiting
                assert rt.behind(1_000, ["probe"])
                assert not rt.behind(1_000, ["staging", "join"])  # another stage's backlog: not asked
                assert not rt.behind(5_000, ["probe"])  # fewer wait than that
                gate.set()
                await until(lambda: sum(seen) == 3_000, 20)
                await until(lambda: rt.input_lag["probe"][1] == 0, 20)  # caught up
                assert not rt.behind(1_000, ["probe"])
                rt.record_input_lag("probe", 4_000)
                assert rt.behind(1_000, ["probe"])
                await asyncio.sleep(0.06)
                assert not rt.behind(1_000, ["probe"], recent_s=0.05)  # went quiet: not behind
            finally:
                await cancel(task, rt.stop)

    asyncio.run(scenario())
