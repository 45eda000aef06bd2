"""Batched producing: outputs of a batch are grouped per topic-partition and sent with the producer's
batch API, then awaited before the input offsets are acked (at-least-once, no transactions)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from murmurhash2 import murmurhash2 as _murmurhash2

from streams import produce_encoding

# Every process that produces through idsync (workers, the naive baseline, the bench) encodes its produce
# requests in one copy (streams.produce_encoding).
produce_encoding.install()

#: The seed of Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``).
SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the standard 32-bit MurmurHash2 with Kafka's seed), in C: 0.2 µs a key against 3.2
    for the pure-Python one this replaced (tests/streams/test_output.py compares it with aiokafka's). A 1M
    load partitions millions of distinct keys (anchors, routes, mv_ids) once or twice each: the Python
    hash was 4% of a worker there even behind a cache of 200,000 keys, which is gone with it."""
    value: int = _murmurhash2(data, SEED)
    return value


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so external producers land keys where idsync expects them."""
    return (_murmurhash2(key, SEED) & 0x7FFFFFFF) % partitions


class Outputs:
    """Records to produce for one batch; ``flush`` sends them all and waits for the broker's acks.

    A record added with ``after=True`` is produced only once every other record of the flush is
    acknowledged: whoever reads it can count on the others being on record before anything it sends in
    answer. Within one topic-partition Kafka keeps order; across topics it does not (their leaders can
    be different brokers, and a retried request lands after a later one), so an answer that must not
    overtake what it answers is sent in this second round — one more round trip, no transaction."""

    def __init__(
        self, producer: AIOKafkaProducer, partitions: dict[str, int], produced: Counter[str]
    ) -> None:
        self._producer = producer
        self._partitions = partitions
        self._produced = produced
        self._pending: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = defaultdict(list)
        #: Records produced once the others are acknowledged (``after``).
        self._after: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = defaultdict(list)

    def add(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int | None = None,
        *,
        after: bool = False,
    ) -> None:
        if partition is None:
            partition = partition_for(key, self._partitions[topic])
        (self._after if after else self._pending)[(topic, partition)].append((key, value))

    def __len__(self) -> int:
        return sum(len(v) for v in self._pending.values()) + sum(len(v) for v in self._after.values())

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send everything and wait for the acks (the ``after`` records once the others are acked).

        Returns, per topic-partition written, the offset after the last record written (the log's end as
        far as this flush knows it): a store records it with its changelog writes (streams.store).
        The records stay pending until every ack is in: when the broker fails part-way the caller's retry
        sends them all again (a duplicate is harmless downstream; a lost record is not)."""
        ends = await self._send(self._pending)
        if self._after:
            for tp, end in (await self._send(self._after)).items():
                ends[tp] = max(ends.get(tp, 0), end)
        for pending in (self._pending, self._after):
            for (topic, _partition), records in pending.items():
                self._produced[topic] += len(records)
            pending.clear()
        return ends

    async def _send(
        self, pending: dict[tuple[str, int], list[tuple[bytes, bytes | None]]]
    ) -> dict[tuple[str, int], int]:
        """Produce ``pending`` with the batch API and wait for every acknowledgement."""
        futures: list[tuple[tuple[str, int], int, asyncio.Future[RecordMetadata]]] = []
        for (topic, partition), records in pending.items():
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
                    fut = await self._producer.send(topic, value, key=key, partition=partition)
                    futures.append(((topic, partition), 1, fut))
                    i += 1
                    continue
                count = batch.record_count()
                batch.close()
                fut = await self._producer.send_batch(batch, topic, partition=partition)
                futures.append(((topic, partition), count, fut))
        ends: dict[tuple[str, int], int] = {}
        if futures:
            results = await asyncio.gather(*(f for _tp, _n, f in futures), return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            for (tp, count, _f), meta in zip(futures, results, strict=True):
                assert isinstance(meta, RecordMetadata)
                ends[tp] = max(ends.get(tp, 0), meta.offset + count)
        return ends
