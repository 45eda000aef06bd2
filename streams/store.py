"""Partitioned RocksDB state (rocksdict): one database per stage and partition, batched reads and writes.

A stage reads the keys of a whole batch with one multi-get and writes the batch's results with one
WriteBatch, so per-event Python work, not RocksDB, bounds the speed.

Every store has a changelog topic, co-partitioned with the stage's input topics (invariant 11). A stage
keeps the writes of its batches as the partition's unsaved state (``PartitionStore.unsaved``, read before
the database) until a checkpoint (``streams.stages.base.save``) produces them to the changelog, waits for
the broker, and only then writes them locally — in one WriteBatch with the changelog offset after them. So
the local database is always a prefix of the changelog plus nothing else, and any worker that is given the
partition can rebuild it (``streams.consumer.restore``) by reading the changelog from the offset its own
copy holds (the offset after the last changelog record it reflects).
"""

from __future__ import annotations

import bisect
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    RdictIter,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from engine.chunks import Touched
from schemas.codec import pack
from schemas.errors import FatalError

#: Size of one memtable of one partition's database.
MEMTABLE_BYTES = 8 << 20
#: What all of a process's databases may use together, whatever the number of stores and partitions:
#: memtables, and a block cache that also holds the SST files' index and filter blocks. The defaults;
#: ``pipeline.state_cache_mb`` and ``pipeline.state_memtables_mb`` set them (``set_memory_budget``).
MEMTABLES_TOTAL_BYTES = 128 << 20
BLOCK_CACHE_BYTES = 64 << 20
_SHARED: tuple[Cache, WriteBufferManager] | None = None
_BUDGET = (BLOCK_CACHE_BYTES, MEMTABLES_TOTAL_BYTES)


def set_memory_budget(cache_bytes: int, memtables_bytes: int) -> None:
    """Size the process's shared block cache and memtable budget (databases already open included)."""
    global _BUDGET
    _BUDGET = (cache_bytes, memtables_bytes)
    if _SHARED is not None:
        cache, memtables = _SHARED
        cache.set_capacity(cache_bytes)
        memtables.set_buffer_size(memtables_bytes)


def memory_budget() -> tuple[int, int]:
    """(block cache bytes, memtable bytes) the process's databases share."""
    return _BUDGET


def _options(partitioned: bool = True) -> Options:
    """Options of a partition's database (``open_db``). A worker opens one per store and partition (4
    stores x P partitions); RocksDB's defaults (two 64 MiB memtables, an 8 MiB block cache, index and
    filter blocks held outside it) are per database, so memory grew with partitions and with data. Here
    every database of the process shares one memtable budget and one block cache that holds the index
    and filter blocks too: state lives on disk, and a worker's memory stays flat as N grows."""
    global _SHARED
    if _SHARED is None:
        cache_bytes, memtables_bytes = _BUDGET
        _SHARED = (Cache(cache_bytes), WriteBufferManager(memtables_bytes, False))
    cache, memtables = _SHARED
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(MEMTABLE_BYTES)
    opts.set_max_write_buffer_number(2)
    opts.set_write_buffer_manager(memtables)
    # Compactions: below 256 MiB a database has one level under L0, and each L0 compaction rewrites all of
    # it, so their cost per write grows with the state (late in a 1M load the flush and compaction
    # threads used a quarter of a core). Eight L0 files per compaction instead of four halve how often
    # that happens; LZ4 compresses and decompresses faster than the default Snappy (docs/architecture.md).
    opts.set_level_zero_file_num_compaction_trigger(8)
    opts.set_compression_type(DBCompressionType.lz4())
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_bloom_filter(10, False)
    if partitioned:
        # Index and filter in 4 KiB partitions, under a small top-level index that stays pinned. A whole
        # SST file's index or filter is one block otherwise — megabytes for the files of a 1M-identity
        # state, which a 64 MiB cache did not keep beside the data blocks, so every seek or lookup read
        # and parsed them again: at 1M the join stage's referrer scans took 42% of the worker
        # (docs/architecture.md; ``partitioned=False`` is for streams.bench.store's comparison).
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_pin_top_level_index_and_filter(True)
    opts.set_block_based_table_factory(table)
    return opts


#: Reserved key prefix for the store's own bookkeeping; state keys never start with it.
META = b"\x00\x00idsync:"
#: Reserved key prefix for values a state object holds apart (``engine.chunks``): state like the objects
#: (changelog, checkpoint, restore), but outside their range — a scan lists them only when asked for them.
APART = b"\x00\x01"
#: Changelog records with an offset below this one are reflected in the local database.
CHANGELOG_OFFSET = META + b"changelog-offset"
#: How state values are encoded (schemas.codec); a state directory records it in ``FORMAT_FILE``.
#: msgpack-2: reference registrations live in the metaverse stage (``mv-refs``), not the join store.
#: msgpack-3: a connector-space object may hold a large attribute's values in buckets under keys of
#: their own (``CSObject.split``, ``engine.staging.held_bucket_key``), which an older idsync would not read.
#: msgpack-4: a metaverse object may hold its large containers in chunks (``MVObject.chunked``,
#: ``engine.chunks``).
#: msgpack-5: a connector link remembers its answered keys (``ConnectorLink.stale_keys``) and a target the
#: rule that left it settled, with its waiting references and the values held back
#: (``TargetState.settled_by``, ``waiting``, ``held_back``); an older idsync refuses fields it does not know.
STATE_FORMAT = "msgpack-5"
#: Formats this idsync reads as they are: claiming a directory in one of them records ``STATE_FORMAT``
#: (from then on an older idsync refuses it instead of misreading it).
UPGRADES = frozenset({"msgpack-2", "msgpack-3", "msgpack-4"})
FORMAT_FILE = "FORMAT"


def state_format(root: Path) -> str | None:
    """The format a state directory was written in: None for an empty or new one, "unknown" for one
    written before formats were recorded (JSON values)."""
    marker = root / FORMAT_FILE
    if marker.exists():
        return marker.read_text().strip()
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return "unknown"
    return None


def claim_state_dir(root: Path) -> None:
    """Use ``root`` for state: record the format in a new one; refuse one in another format (its values
    would not decode), naming what to do."""
    found = state_format(root)
    if found is None or found in UPGRADES:
        root.mkdir(parents=True, exist_ok=True)
        (root / FORMAT_FILE).write_text(STATE_FORMAT + "\n")
    elif found != STATE_FORMAT:
        raise FatalError(
            f"the state in {root} is in format {found!r}, this idsync writes {STATE_FORMAT!r}: remove the "
            "directory (with the embedded broker, idsync sync rebuilds it; with Kafka, also use a new "
            "instance name or delete the instance's changelog topics, then replay the imports)"
        )


#: RocksDB properties summed over a process's databases by ``rocksdb_memory``.
_DB_MEMORY = {
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}


def rocksdb_memory(dbs: list[Rdict]) -> dict[str, int]:
    """What the process's RocksDB databases hold in memory: the shared block cache (``cache``, of it
    ``pinned``), the shared memtable budget's use (``memtables_budget``), and per-database figures
    summed over ``dbs`` (``_DB_MEMORY``; table readers are outside the cache)."""
    out = {"cache": 0, "pinned": 0, "memtables_budget": 0}
    if _SHARED is not None:
        cache, memtables = _SHARED
        out = {
            "cache": cache.get_usage(),
            "pinned": cache.get_pinned_usage(),
            "memtables_budget": memtables.get_usage(),
        }
    for name, prop in _DB_MEMORY.items():
        out[name] = sum(db.property_int_value(prop) or 0 for db in dbs)
    return out


def open_db(path: Path, partitioned: bool = True) -> Rdict:
    """Open (or create) one partition's database with idsync's options (``_options``).

    The column family is named too: given only ``options``, rocksdict opens an existing database with
    the column family options of its OPTIONS file and a private 8 MiB block cache, so a restarted
    worker's stores left the shared budget and kept the table options they were created with."""
    opts = _options(partitioned)
    db = Rdict(str(path), options=opts, column_families={"default": opts})
    db.set_write_options(_NO_WAL)
    return db


#: Writes skip RocksDB's write-ahead log: every database is a copy of a changelog topic (or, the reference
#: table's, rebuilt from its topic at every start), and the changelog offset a write reflects is in the
#: same WriteBatch. After a crash a database is as of its last memtable flush — a consistent, older
#: prefix of its changelog — and restoring it reads the rest from the changelog (as Kafka Streams'
#: RocksDB stores do). The log cost the event loop over a quarter of each write. ``idsync sync`` on the
#: memory-only embedded broker has no changelog to restore from after a crash: it keeps only a finished
#: run's state (its stores closed, so flushed) and starts from empty after a killed one.
_NO_WAL = WriteOptions()
_NO_WAL.disable_wal = True


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key that starts with ``prefix`` (None: no such key, or no prefix)."""
    end = prefix.rstrip(b"\xff")
    if not end:
        return None
    return end[:-1] + bytes([end[-1] + 1])


class StateCodec(Protocol):
    """How a store's objects are put together from the database and taken apart for it, where one object
    is more than one key (``streams.chunks``). One per partition."""

    def loaded(self, part: PartitionStore, key: bytes, value: Any) -> Any:
        """A value just decoded from the database, as the stage is to see it."""

    def encode(self, part: PartitionStore, unsaved: dict[bytes, Any]) -> dict[bytes, bytes | None]:
        """The unsaved values as the records to log and write (None deletes a key)."""

    def written(self, puts: dict[bytes, bytes | None] | None) -> None:
        """The database was written: ``puts`` (what ``encode`` returned, a checkpoint's, or a restore's
        records; None: any of it — the partition was cleared or closed). What was read from it before is
        read again."""

    def warm(self, part: PartitionStore) -> bool:
        """A piece of work for an idle stage (``Store.warm``): whether it did one (False: none left)."""

    def saved(self) -> None:
        """The unsaved state is saved."""


class PartitionStore:
    """One partition of one stage's state: bytes keys to bytes values."""

    def __init__(
        self, path: Path, partition: int = 0, changelog: str | None = None, codec: StateCodec | None = None
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.partition = partition
        #: Topic this partition's writes are logged to (partition ``partition`` of it); None: local only.
        self.changelog = changelog
        #: None: a value is one key, encoded with ``schemas.codec.pack``.
        self.codec = codec
        self._db = open_db(path)
        #: State written by processed batches and not saved yet (decoded values; None deletes the key):
        #: the stage's checkpoint logs it to the changelog and writes it here (streams.stages.base). Reads
        #: see it before the database.
        self.unsaved: dict[bytes, Any] = {}
        self._unsaved_sorted: list[bytes] = []
        self._unsaved_new: list[bytes] = []
        #: Weight of the unsaved state (``stash``'s ``weigh``, summed over its keys; a key written again
        #: counts once, at its latest weight) and each key's.
        self.unsaved_weight = 0
        self._weights: dict[bytes, int] = {}
        #: For unsaved keys whose value the codec holds in parts: what changed in its large containers
        #: since it was read from the database (``streams.stages.base.Batch.put``); a key not here: unknown.
        self.touched: dict[bytes, Touched] = {}

    def stash(self, puts: dict[bytes, Any], sorted_keys: list[bytes], weigh: Callable[[Any], int]) -> None:
        """Keep a processed batch's writes (``sorted_keys``: their keys in order) until the checkpoint;
        ``weigh`` gives each value's weight (``unsaved_weight``)."""
        unsaved = self.unsaved
        self._unsaved_new.extend(k for k in sorted_keys if k not in unsaved)
        unsaved.update(puts)
        weights, total = self._weights, self.unsaved_weight
        for k, v in puts.items():
            w = weigh(v)
            total += w - weights.get(k, 0)
            weights[k] = w
        self.unsaved_weight = total

    def weight(self, key: bytes) -> int:
        """The weight of an unsaved key's value (``stash``'s ``weigh``; 0: not unsaved)."""
        return self._weights.get(key, 0)

    def unsaved_under(self, prefix: bytes) -> list[bytes]:
        """Unsaved keys under ``prefix``, in order."""
        if self._unsaved_new:
            # Each batch's keys are one sorted run: sorting runs is a linear merge.
            self._unsaved_sorted = sorted(self._unsaved_sorted + sorted(self._unsaved_new))
            self._unsaved_new = []
        keys = self._unsaved_sorted
        i = bisect.bisect_left(keys, prefix)
        j = i
        while j < len(keys) and keys[j].startswith(prefix):
            j += 1
        return keys[i:j]

    def encode_unsaved(self) -> dict[bytes, bytes | None]:
        """The unsaved state as records to log and write (a checkpoint's): each key once, and no delete
        of a key the database does not hold (``_known_deletes``; not for a codec's state)."""
        if self.codec is not None:
            # A codec keeps what it encoded (``StateCodec.written``) and deletes of its objects are rare.
            return self.codec.encode(self, self.unsaved)
        return self._known_deletes({k: None if v is None else pack(v) for k, v in self.unsaved.items()})

    def _known_deletes(self, puts: dict[bytes, bytes | None]) -> dict[bytes, bytes | None]:
        """``puts`` without the deletes of keys the database does not hold: a key written and deleted
        again since the last checkpoint (mostly a reference answer deferred and applied within the
        interval) was never logged, so its tombstone would only cost a changelog record, a
        broker write and a restore step. The database is this partition's changelog applied up to its
        saved offset (a partition is restored before it is processed), so a key it lacks has no live
        record in the changelog either. One multi-get of the deleted keys (absent keys mostly stop at
        the bloom filters)."""
        gone = [k for k, v in puts.items() if v is None]
        if not gone:
            return puts
        absent = [k for k, held in zip(gone, self.get_many(gone), strict=True) if held is None]
        for k in absent:
            del puts[k]
        return puts

    def saved(self) -> None:
        """The unsaved state is in the changelog and the database now."""
        if self.codec is not None:
            self.codec.saved()
        self.unsaved = {}
        self._unsaved_sorted = []
        self._unsaved_new = []
        self.unsaved_weight = 0
        self._weights = {}
        self.touched = {}

    @property
    def db(self) -> Rdict:
        """The partition's database (read it through this class; this is for its memory figures)."""
        return self._db

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        result: list[bytes | None] = self._db.get(keys)
        return result

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def write(self, puts: dict[bytes, bytes | None], changelog_offset: int | None = None) -> None:
        """Apply puts (None = delete) atomically, with the changelog offset they were logged from."""
        if not puts and changelog_offset is None:
            return
        wb = WriteBatch(raw_mode=True)
        for k, v in puts.items():
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        if changelog_offset is not None:
            wb.put(CHANGELOG_OFFSET, str(changelog_offset).encode())
        self._db.write(wb)
        self.touched = {}  # relative to what the database held
        if self.codec is not None:
            self.codec.written(puts)  # a checkpoint's or a restore's: what was read before is read again

    def changelog_offset(self) -> int | None:
        """Where this copy's changelog position stands (None: never written from a changelog)."""
        raw = self._db.get(CHANGELOG_OFFSET)
        return None if raw is None else int(raw)

    def iterator(self) -> RdictIter:
        """A database iterator for several ``scan``s in a row with no write between them: creating one
        costs about as much as the seek itself (the reference table's applier looks up thousands of
        routes per batch, most of them with nothing under them)."""
        return self._db.iter()

    def scan(self, prefix: bytes, it: RdictIter | None = None) -> Iterator[tuple[bytes, bytes]]:
        """State entries under ``prefix`` in key order (bookkeeping entries never included, values held
        apart only under a prefix of theirs, ``APART``); ``it``: an ``iterator`` to reuse (a fresh one by
        default)."""
        skip = META if prefix.startswith(APART) else (META, APART)
        bound = prefix_end(prefix)
        if it is None and bound is not None:
            # One call per entry instead of four (valid, key, value, next): about half the time.
            opts = ReadOptions()
            opts.set_iterate_upper_bound(bound)
            for key, value in self._db.items(from_key=prefix, read_opt=opts):
                if not key.startswith(skip):
                    yield key, value
            return
        if it is None:
            it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            if not key.startswith(skip):
                yield key, it.value()
            it.next()

    def clear(self) -> None:
        """Delete every entry (state and bookkeeping): the next restore reads the whole changelog."""
        self.touched = {}
        if self.codec is not None:
            self.codec.written(None)
        keys = list(self._db.keys())
        for i in range(0, len(keys), 10_000):
            wb = WriteBatch(raw_mode=True)
            for k in keys[i : i + 10_000]:
                wb.delete(k)
            self._db.write(wb)

    def close(self) -> None:
        if self.codec is not None:
            self.codec.written(None)  # what it kept of this partition goes with it
        # Without a write-ahead log, what is in the memtables is on disk only once flushed.
        self._db.flush()
        self._db.close()


class Store:
    """A stage's state across the partitions this worker holds."""

    def __init__(
        self,
        root: Path,
        name: str,
        changelog: str | None = None,
        codec: Callable[[], StateCodec] | None = None,
    ) -> None:
        self.root = root / name
        self.name = name
        self.changelog = changelog
        #: Makes each partition's codec (None: values are one key each).
        self._codec = codec
        self._parts: dict[int, PartitionStore] = {}
        #: Partitions this worker owns now (set by the stage's consumer on assignment/revocation).
        self.owned: set[int] = set()

    def opened(self) -> list[PartitionStore]:
        """The partitions this worker has open."""
        return list(self._parts.values())

    def databases(self) -> list[Rdict]:
        """The open partitions' databases (for ``rocksdb_memory``)."""
        return [part.db for part in self._parts.values()]

    def unsaved(self) -> int:
        """State keys written and not saved yet, over the open partitions."""
        return sum(len(part.unsaved) for part in self._parts.values())

    def unsaved_weight(self) -> int:
        """Weight of the state not saved yet (``PartitionStore.unsaved_weight``), over the open partitions."""
        return sum(part.unsaved_weight for part in self._parts.values())

    def warm(self) -> bool:
        """One piece of the work the codecs of the partitions this worker owns do while the stage is idle
        (``StateCodec.warm``: large objects read back whole): whether one was done (False: none left)."""
        for p in sorted(self.owned):
            part = self._parts.get(p)
            if part is not None and part.codec is not None and part.codec.warm(part):
                return True
        return False

    def partition(self, p: int) -> PartitionStore:
        part = self._parts.get(p)
        if part is None:
            codec = self._codec() if self._codec is not None else None
            part = self._parts[p] = PartitionStore(self.root / f"p{p}", p, self.changelog, codec)
        return part

    def release(self, p: int) -> None:
        """Close a partition this worker no longer owns (its files stay for a later catch-up)."""
        part = self._parts.pop(p, None)
        if part is not None:
            part.close()

    def partitions(self) -> list[int]:
        """Partitions with state on disk, opened or not."""
        if not self.root.is_dir():
            return sorted(self._parts)
        found = {
            int(d.name[1:]) for d in self.root.iterdir() if d.name.startswith("p") and d.name[1:].isdigit()
        }
        return sorted(found | set(self._parts))

    def scan_all(self, prefix: bytes = b"") -> Iterator[tuple[int, bytes, bytes]]:
        for p in self.partitions():
            for k, v in self.partition(p).scan(prefix):
                yield p, k, v

    def close(self) -> None:
        for part in self._parts.values():
            part.close()
        self._parts.clear()

    def wipe(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)
