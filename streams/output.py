"""Batched producing: outputs of a batch are grouped per topic-partition and sent with the producer's
batch API, then awaited before the input offsets are acked (at-least-once, no transactions)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so external producers land keys where idsync expects them."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Outputs:
    """Records to produce for one batch; ``flush`` sends them all and waits for the broker's acks."""

    def __init__(
        self, producer: AIOKafkaProducer, partitions: dict[str, int], produced: Counter[str]
    ) -> None:
        self._producer = producer
        self._partitions = partitions
        self._produced = produced
        self._pending: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = defaultdict(list)

    def add(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        if partition is None:
            partition = partition_for(key, self._partitions[topic])
        self._pending[(topic, partition)].append((key, value))

    def __len__(self) -> int:
        return sum(len(v) for v in self._pending.values())

    async def flush(self) -> None:
        futures = []
        for (topic, partition), records in self._pending.items():
            i = 0
            while i < len(records):
                batch = self._producer.create_batch()
                while i < len(records):
                    key, value = records[i]
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        break
                    i += 1
                if batch.record_count() == 0:
                    # A single record larger than a batch: send it on its own.
                    key, value = records[i]
                    futures.append(await self._producer.send(topic, value, key=key, partition=partition))
                    i += 1
                    continue
                batch.close()
                futures.append(await self._producer.send_batch(batch, topic, partition=partition))
            self._produced[topic] += len(records)
        self._pending.clear()
        if futures:
            await asyncio.gather(*futures)
