"""The broker microbenchmark's bookkeeping (what the partition held at each level) on the embedded broker;
its figures themselves are not asserted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.bench import kafka
from streams.bench.broker import idle_fetches, round_trips
from streams.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_each_level_reports_what_the_partition_held(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, float]], dict[str, float], int]:
        with EmbeddedBroker(tmp_path) as broker:
            rows = await round_trips(broker, [10, 0], size=100, n=3, wait_ms=10)
            idle = await idle_fetches(broker, 4, 10, seconds=0.2)
            held = 0
            async for _topic, records in kafka.read_all(broker.bootstrap, ["bench.trickle"], 30):
                held += len(records)
            return rows, idle, held

    rows, idle, held = asyncio.run(scenario())
    # Level 0: empty. Level 10: ten fill batches of 100 records (more than aiokafka's default 16 KiB batch
    # holds), and the three one-record batches the first level's round trips left.
    assert [(r["batches"], r["records"]) for r in rows] == [(0, 0), (13, 1003)]
    assert all(r["broker_cpu_us"] >= 0 and r["round_trip_ms"] > 0 for r in rows)
    assert held == 1003 + 3  # and the last level's round trips
    assert idle["partitions"] == 4 and idle["broker_cores"] >= 0
