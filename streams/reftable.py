"""The reference table: every worker's local copy of ``sync.refs``, read whole (a global table).

``sync.refs`` is compacted and keyed by route (``engine.references``): what a DN resolves to (published by
the join stage) and what DN a metaverse object has in a target (published by its metaverse step). Each
worker reads all of its partitions from the beginning into a RocksDB database of its own, rebuilt at every
start, and the metaverse stage answers its local registrations from it (``streams.stages.metaverse``):
a reference costs a local lookup and a key in the referrer's own partition, not a message to the index
and an answer back.

Besides the values, the copy keeps an index of the records it read, by partition and offset, so that a
metaverse partition saved at some table position can be brought up to date later (``routes_since``): the
table's changes since that position are replayed to its registrations when a worker takes it over. The
index keeps each route's latest record only, as compaction does: a route changed at or after a position
has its latest record there too, so the index stays as large as the table however long a worker runs.

Two positions per table partition: ``read`` (the copy holds every record before it) and ``applied`` (every
record before it has also reached the registrations of the partitions the worker owns; the metaverse stage
saves it with each checkpoint). The reader never waits for the metaverse stage: what it has read and not
yet applied waits in ``take``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from rocksdict import Rdict, WriteBatch

from schemas.codec import unpacker
from schemas.messages import RefValue
from streams.consumer import reader
from streams.runtime import Runtime
from streams.store import META, open_db

log = logging.getLogger("idsync.reftable")

#: Fence records (key) that tell a reader it has read all that was produced before them.
FENCE_KEY = META + b"reftable-fence"
_VALUES = b"v"
_INDEX = b"i"
#: route -> the index key of its latest record (the entry a newer record of the route replaces).
_LATEST = b"l"
_VALUE = unpacker(RefValue)


#: Keys of records that are not table entries: fences, and (never produced by idsync) no key.
_NOT_ROUTES = (FENCE_KEY, None)


def _index_key(partition: int, offset: int) -> bytes:
    return _INDEX + struct.pack(">IQ", partition, offset)


class RefTable:
    """This worker's copy of the reference table."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.topic = rt.names.refs_topic()
        self.path = rt.settings.data_dir / f"{rt.names.store('reftable')}"
        # Rebuilt from the topic at every start: the topic is the table, this is a cache of it.
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_db(self.path)
        #: Next offset per table partition: every record before it is in the copy.
        self.read: dict[int, int] = {}
        #: Next offset per table partition: every record before it has reached the owned registrations.
        self.applied: dict[int, int] = {}
        #: Routes read and not yet applied to the owned registrations.
        self._pending: dict[str, None] = {}
        self._changed = asyncio.Event()
        #: Set once the copy holds everything the topic held when the worker started.
        self.ready = asyncio.Event()
        #: Records read and not yet taken (``idsync sync`` waits until every record was applied).
        self._untaken = 0
        rt.stage_topics.add(self.topic)

    @property
    def db(self) -> Rdict:
        """The copy's database (for its memory figures)."""
        return self._db

    def get(self, route: str) -> str | None:
        """What ``route`` resolves to in the copy (None: no value)."""
        raw = self._db.get(_VALUES + route.encode())
        return None if raw is None else bytes(raw).decode()

    def routes_since(self, positions: dict[int, int]) -> list[str]:
        """Routes the copy read a record for at or after ``positions`` (per partition; absent: from the
        beginning), in the order first read."""
        routes: dict[str, None] = {}
        for partition, end in sorted(self.read.items()):
            start = positions.get(partition, 0)
            if start >= end:
                continue
            it = self._db.iter()
            it.seek(_index_key(partition, start))
            stop = _index_key(partition, end)
            while it.valid():
                key = it.key()
                if key >= stop:
                    break
                routes[bytes(it.value()).decode()] = None
                it.next()
        return list(routes)

    def take(self) -> tuple[list[str], dict[int, int], int]:
        """The routes read since the last ``take``, the read positions they go up to (what applying them
        brings ``applied`` to), and how many records they came from (``done`` counts them once applied)."""
        routes, self._pending = list(self._pending), {}
        self._changed.clear()
        records, self._untaken = self._untaken, 0
        return routes, dict(self.read), records

    def done(self, positions: dict[int, int], records: int) -> None:
        """What ``take`` gave has reached the registrations: ``applied`` moves, and ``idsync sync`` counts
        the records as consumed (it waits until every record produced to a stage's topics is)."""
        self.applied = positions
        self.rt.counters.consumed[self.topic] += records

    def backlog(self) -> int:
        """Routes read and not taken yet."""
        return len(self._pending)

    async def changed(self) -> None:
        """Wait until something was read that was not taken yet."""
        await self._changed.wait()

    async def run(self) -> None:
        """Read the table until cancelled; ``ready`` once everything there at the start is in the copy."""
        consumer = reader(self.rt, "reftable")
        await consumer.start()
        task = None
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.rt.partitions)]
            consumer.assign(tps)
            beginning = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, beginning[tp])
                self.read[tp.partition] = self.applied[tp.partition] = beginning[tp]
            task = asyncio.ensure_future(self._read(consumer))
            await self.sync_end()
            self.ready.set()
            log.info("reference table read: %s", self.read)
            await task
        finally:
            if task is not None:
                task.cancel()
            await consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            data = await consumer.getmany(timeout_ms=200, max_records=20_000)
            if not data:
                continue
            wb = WriteBatch(raw_mode=True)
            routes = list({r.key: None for recs in data.values() for r in recs if r.key not in _NOT_ROUTES})
            latest = dict(zip(routes, self._db.get([_LATEST + k for k in routes]), strict=True))
            for tp, recs in data.items():
                if not recs:
                    continue
                partition = tp.partition
                for r in recs:
                    if r.key in _NOT_ROUTES:
                        self.rt.counters.consumed[self.topic] += 1
                        continue
                    self._untaken += 1
                    value = None if r.value is None else _VALUE.decode(r.value).value
                    if value is None:
                        wb.delete(_VALUES + r.key)
                    else:
                        wb.put(_VALUES + r.key, value.encode())
                    index = _index_key(partition, r.offset)
                    previous = latest[r.key]
                    if previous is not None:
                        wb.delete(bytes(previous))
                    wb.put(index, r.key)
                    wb.put(_LATEST + r.key, index)
                    latest[r.key] = index
                    self._pending[r.key.decode()] = None
                self.read[partition] = recs[-1].offset + 1
            self._db.write(wb)
            self._changed.set()

    def index_size(self) -> int:
        """Records the index holds (one per route that has had one)."""
        it = self._db.iter()
        it.seek(_INDEX)
        n = 0
        while it.valid() and bytes(it.key()).startswith(_INDEX):
            n += 1
            it.next()
        return n

    async def sync_end(self, timeout_s: float = 300.0) -> dict[int, int]:
        """Wait until the copy holds every record produced to the table before this call (a fence record
        per partition: the embedded broker under-reports end offsets). Returns each partition's end."""
        fence = uuid.uuid4().hex.encode()
        out = await self.rt.outputs()
        for p in range(self.rt.partitions):
            out.add(self.topic, FENCE_KEY, fence, partition=p)
        ends = await out.flush()
        deadline = time.monotonic() + timeout_s
        want = {p: ends[(self.topic, p)] for p in range(self.rt.partitions)}
        while any(self.read.get(p, 0) < end for p, end in want.items()):
            if time.monotonic() > deadline:
                raise KafkaError(f"reading {self.topic}: the fence did not come back within {timeout_s:.0f}s")
            await asyncio.sleep(0.01)
        return {p: end - 1 for p, end in want.items()}

    def close(self) -> None:
        self._db.close()
