"""Batched producing: outputs of a batch are grouped per topic-partition and sent with the producer's
batch API, then awaited before the input offsets are acked (at-least-once, no transactions)."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections import Counter, defaultdict

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from streams import produce_encoding

# Every process that produces through idsync (workers, the naive baseline, the bench) encodes its produce
# requests in one copy (streams.produce_encoding).
produce_encoding.install()

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
#: Hashes remembered: a key (anchor, route, mv_id) is partitioned several times along the pipeline.
HASH_CACHE = 200_000
_HASHES: dict[bytes, int] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as aiokafka's, twice as fast:
    the 4-byte words are unpacked at once (tests/streams/test_output.py compares the two)."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", data) if words else ():
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length & ~3
        if extra >= 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so external producers land keys where idsync expects them.

    Hashes are remembered (bounded: the oldest tenth goes when the cache is full)."""
    h = _HASHES.get(key)
    if h is None:
        if len(_HASHES) >= HASH_CACHE:
            for old in list(itertools.islice(_HASHES, HASH_CACHE // 10)):
                del _HASHES[old]
        h = _HASHES[key] = murmur2(key) & 0x7FFFFFFF
    return h % partitions


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
