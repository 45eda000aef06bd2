"""What one request costs the embedded broker, and how that grows with what a partition holds.

``python -m streams.bench.broker`` starts a fresh embedded broker (Tansu, memory storage) and measures,
by the broker process's CPU time (``/proc``):

- a consumer following one partition's end while records are produced to it one at a time (each produce
  acknowledged, then fetched), after the partition was filled with K record batches of
  ``--records-per-batch`` records each (a trickle of changes leaves one-record batches behind: every stage
  batch is one record batch per partition it writes);
- an idle consumer following 4 and 16 empty partitions (its empty fetches).

These are the broker's figures, not idsync's: they say how much of a pipeline's latency and CPU the
embedded broker takes as its topics fill (docs/benchmarks.md). Nothing here is a test assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.bench import kafka
from streams.broker import EmbeddedBroker
from streams.sync import format_table

#: A record of about the size of a title change on ``import.hr``.
VALUE = b"x" * 300


async def _fill(producer: AIOKafkaProducer, topic: str, batches: int, size: int) -> None:
    """Produce ``batches`` record batches of ``size`` records each to partition 0."""
    pending = []
    for _ in range(batches):
        batch = producer.create_batch()
        for _ in range(size):
            if batch.append(key=None, value=VALUE, timestamp=None) is None:
                raise ValueError(f"{size} records of {len(VALUE)} bytes do not fit in one record batch")
        batch.close()
        pending.append(await producer.send_batch(batch, topic, partition=0))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _follow(bootstrap: str, topic: str, partitions: int, wait_ms: int) -> AIOKafkaConsumer:
    """A consumer at the end of ``partitions`` partitions of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=wait_ms
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def round_trips(
    broker: EmbeddedBroker, fills: list[int], size: int, n: int, wait_ms: int
) -> list[dict[str, Any]]:
    """Per fill level: the broker's CPU and the wall time of one produce-then-fetch of one record."""
    await kafka.create_topic(broker.bootstrap, "bench.trickle", 1)
    # Room for a whole fill batch (aiokafka's default batch is 16 KiB).
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, max_batch_size=1 << 20)
    await producer.start()
    consumer = await _follow(broker.bootstrap, "bench.trickle", 1, wait_ms)
    rows: list[dict[str, Any]] = []
    filled = batches = records = 0  # batches of the fill; all the partition holds
    try:
        for fill in sorted(fills):
            more = max(0, fill - filled)
            await _fill(producer, "bench.trickle", more, size)
            filled, batches, records = filled + more, batches + more, records + more * size
            while await consumer.getmany(timeout_ms=200, max_records=100_000):
                pass  # caught up with the fill
            cpu, started = broker.cpu_s(), time.monotonic()
            for _ in range(n):
                await producer.send_and_wait("bench.trickle", VALUE, partition=0)
                while not await consumer.getmany(timeout_ms=1000):
                    pass
            took = time.monotonic() - started
            rows.append(
                {
                    "batches": batches,
                    "records": records,
                    "broker_cpu_us": round(1e6 * (broker.cpu_s() - cpu) / n),
                    "round_trip_ms": round(1000 * took / n, 2),
                }
            )
            # The measured round trips left a one-record batch each (counted in the next row).
            batches, records = batches + n, records + n
    finally:
        await consumer.stop()
        await producer.stop()
    return rows


async def idle_fetches(
    broker: EmbeddedBroker, partitions: int, wait_ms: int, seconds: float
) -> dict[str, Any]:
    """The broker's CPU (cores) while one consumer follows ``partitions`` empty partitions."""
    topic = f"bench.idle{partitions}"
    await kafka.create_topic(broker.bootstrap, topic, partitions)
    consumer = await _follow(broker.bootstrap, topic, partitions, wait_ms)
    task = asyncio.ensure_future(_poll(consumer))
    try:
        await asyncio.sleep(0.5)
        cpu, started = broker.cpu_s(), time.monotonic()
        await asyncio.sleep(seconds)
        took = time.monotonic() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
    return {
        "partitions": partitions,
        "fetch_max_wait_ms": wait_ms,
        "broker_cores": round((broker.cpu_s() - cpu) / took, 3),
    }


async def _poll(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=100)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fills = [int(f) for f in args.fills.split(",")]
    with tempfile.TemporaryDirectory(prefix="idsync-broker-bench-") as tmp:
        broker = EmbeddedBroker(Path(tmp)).start()
        try:
            trips = await round_trips(broker, fills, args.records_per_batch, args.n, args.wait_ms)
            idle = [await idle_fetches(broker, p, args.wait_ms, args.idle_seconds) for p in (4, 16)]
        finally:
            broker.stop()
    return {"round_trips": trips, "idle_fetches": idle}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m streams.bench.broker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--fills", default="0,1000,5000,20000", help="record batches in the partition")
    parser.add_argument("--records-per-batch", type=int, default=1, help="records in each batch of the fill")
    parser.add_argument("-n", type=int, default=200, help="round trips measured per fill level")
    parser.add_argument("--wait-ms", type=int, default=10, help="the consumer's fetch_max_wait_ms")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    head = [
        "record batches in the partition",
        "records",
        "broker CPU µs per produce + fetch",
        "round trip ms",
    ]
    rows = [
        [f"{r['batches']:,}", f"{r['records']:,}", str(r["broker_cpu_us"]), f"{r['round_trip_ms']:.2f}"]
        for r in result["round_trips"]
    ]
    print(format_table(head, rows))
    print()
    head = ["empty partitions followed", "fetch wait ms", "broker cores"]
    rows = [
        [str(r["partitions"]), str(r["fetch_max_wait_ms"]), f"{r['broker_cores']:.3f}"]
        for r in result["idle_fetches"]
    ]
    print(format_table(head, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
