"""The metaverse store's codec: large containers of its objects held in chunks (``engine.chunks``).

Objects are read whole: a stored object that holds containers apart is put together from its chunks (one
scan per container) as it is decoded, and what its chunks held is remembered until the partition's next
checkpoint. The checkpoint stores each object written since through ``engine.chunks.split`` against what
it was read from: only the chunks whose runs changed go to the changelog and the database, with the
object (now small). Everything above the store — the stage, the engine — sees whole objects.

A large object a checkpoint saved from what its steps said they changed (a member change, not the general
sync of the whole object) is *kept* whole, with what its chunks hold now (``KeptObjects``, bounded by the
values they hold, the least recently used dropped first): its next read — the next member change of
a group — is the object as saved, not a scan and decode of all its chunks. A large object not kept (saved
after the general sync, or stored before the partition was restored) is read back whole from its chunks
and kept while the stage is idle (``MVChunks.warm``), so its next member change does not read it either.
The engine never changes an object it is given (but for the large maps ``engine.shared`` lets it change in
place, after which the stage puts the result), so the saved object is the object read. A write to the
database that is not the checkpoint's own (a restore from the changelog, a cleared or closed partition)
drops what the partition kept, and a kept object is used only while the stored object is the one it was
saved as.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from msgspec import Struct

from engine.chunks import (
    CHUNK_PREFIX,
    Chunks,
    Touched,
    chunk_prefix,
    hydrate,
    large,
    low_of,
    split,
    stored_chunks,
    unaccounted,
)
from schemas.codec import pack, unpacker
from schemas.state import MVChunk, MVObject
from streams.store import PartitionStore

log = logging.getLogger("idsync.store")

_CHUNK = unpacker(MVChunk)
_OBJECT = unpacker(MVObject)
#: Values of the chunks a partition's codec remembers from its reads until the checkpoint (a 50,000-member
#: group with a source and a target: ~250,000).
READ_VALUES = 2_000_000
#: Values of the large objects a store keeps whole after their checkpoint (``KeptObjects``), over all its
#: partitions: four 50,000-member groups whose export waits, about 84 MB (84 bytes a value, measured).
KEPT_VALUES = 1_000_000


class _Head(Struct, kw_only=True):
    """What a stored metaverse object says of its chunks (the rest is not decoded)."""

    chunked: dict[str, int] = {}


_HEAD = unpacker(_Head)


@dataclass(frozen=True, slots=True)
class _Kept:
    """A large object as a checkpoint saved it."""

    #: The stored object (without its chunked containers): the kept object is used while it is stored.
    main: MVObject
    #: The object whole, as the stage saved it (never changed: the engine changes copies).
    whole: MVObject
    #: What its chunks hold.
    chunks: Chunks
    #: How many values they hold.
    values: int


def _told(touched: Touched | None) -> bool:
    """Whether the steps since the object's read said what they changed (a member change's sync, not the
    general sync of the whole object): only such an object is kept. The kept object saves the next member
    change its read; the general sync, which walks the whole object anyway, ran about twice as long on an
    object kept a checkpoint ago as on a freshly decoded one (cold caches: docs/benchmarks.md,
    twenty-fourth session), so after it the object is read back from its chunks — while the stage is
    idle (``MVChunks.warm``), or by its next read."""
    return touched is not None and not touched.whole


class KeptObjects:
    """The large objects a store's partitions keep whole after their checkpoint, the least recently used
    dropped first past ``limit`` values (0: none kept). One per store, shared by its partitions' codecs."""

    def __init__(self, limit: int = KEPT_VALUES) -> None:
        self.limit = limit
        self._objects: OrderedDict[tuple[int, bytes], _Kept] = OrderedDict()
        #: Values the kept objects' chunks hold.
        self.values = 0

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, codec: MVChunks, key: bytes) -> _Kept | None:
        kept = self._objects.get((id(codec), key))
        if kept is not None:
            self._objects.move_to_end((id(codec), key))
        return kept

    def put(self, codec: MVChunks, key: bytes, kept: _Kept) -> None:
        self.drop(codec, key)
        if kept.values > self.limit:
            return
        self._objects[(id(codec), key)] = kept
        self.values += kept.values
        while self.values > self.limit:
            _oldest, dropped = self._objects.popitem(last=False)
            self.values -= dropped.values

    def drop(self, codec: MVChunks, key: bytes) -> None:
        kept = self._objects.pop((id(codec), key), None)
        if kept is not None:
            self.values -= kept.values

    def drop_all(self, codec: MVChunks) -> None:
        for key in [k for k in self._objects if k[0] == id(codec)]:
            self.values -= self._objects.pop(key).values


class MVChunks:
    """One partition's codec (``streams.store.StateCodec``)."""

    def __init__(
        self, min_values: int, read_values: int = READ_VALUES, kept: KeptObjects | None = None
    ) -> None:
        self.min_values = min_values
        #: Objects read from the database since the last checkpoint that hold containers apart: what their
        #: chunks held then (the database's, until the checkpoint writes the new ones), the latest read
        #: last, and how many values that is, at most ``read_values`` (a scan of the partition's objects
        #: reads every large group: what is dropped is read again from the database if it is saved).
        self._read: dict[bytes, tuple[Chunks, int]] = {}
        self._read_values = 0
        self.read_values = read_values
        #: Objects whose chunks were read and are not remembered any more (read again if saved).
        self._dropped: set[bytes] = set()
        #: Large objects kept whole after their checkpoint (shared with the store's other partitions).
        self.kept = kept if kept is not None else KeptObjects(0)
        #: The records the last ``encode`` returned, and the large objects in them, kept once written.
        self._encoded: dict[bytes, bytes | None] | None = None
        self._saving: dict[bytes, _Kept] = {}
        #: Large objects held in chunks and not kept: read whole while the stage is idle (``warm``), the
        #: oldest first. Those the last ``encode`` saved without keeping them join once written; after
        #: any other write (a restore, a partition opened, cleared) every such object of the partition
        #: is found again in the database (``_discover``).
        self._cold: dict[bytes, None] = {}
        self._saving_cold: list[bytes] = []
        self._discover = True

    def loaded(self, part: PartitionStore, key: bytes, value: Any) -> Any:
        """A value decoded from the database, whole."""
        if not isinstance(value, MVObject) or not value.chunked:
            return value
        kept = self.kept.get(self, key)
        if kept is not None:
            if kept.main == value:
                self._remember(key, kept.chunks, kept.values)
                return kept.whole
            self.kept.drop(self, key)  # not what is stored (cannot happen: every write is seen)
        chunks = self._chunks(part, value.mv_id, value.chunked)
        self._remember(key, chunks, sum(value.chunked.values()))
        return hydrate(value, chunks)

    def _remember(self, key: bytes, chunks: Chunks, values: int) -> None:
        old = self._read.pop(key, None)
        self._read_values += values - (old[1] if old is not None else 0)
        self._read[key] = (chunks, values)
        while self._read_values > self.read_values and len(self._read) > 1:
            oldest = next(iter(self._read))
            self._read_values -= self._read.pop(oldest)[1]
            self._dropped.add(oldest)

    def _chunks(self, part: PartitionStore, mv_id: str, paths: dict[str, int]) -> Chunks:
        chunks: Chunks = {}
        for path in paths:
            prefix = chunk_prefix(mv_id, path)
            chunks[path] = [(low_of(prefix, k), _CHUNK.decode(raw)) for k, raw in part.scan(prefix)]
        return chunks

    def _stored(self, part: PartitionStore, key: bytes) -> Chunks:
        """What the database's chunks of an object not read since the last checkpoint hold."""
        raw = part.get(key)
        if raw is None:
            return {}
        head = _HEAD.decode(raw)
        return self._chunks(part, key.decode(), head.chunked) if head.chunked else {}

    def encode(self, part: PartitionStore, unsaved: dict[bytes, Any]) -> dict[bytes, bytes | None]:
        """The unsaved objects as state records: each object, and the chunks that changed."""
        puts: dict[bytes, bytes | None] = {}
        saving: dict[bytes, _Kept] = {}
        cold: list[bytes] = []
        least = self.min_values // 2
        for key, value in unsaved.items():
            read = self._read.get(key)
            before = read[0] if read is not None else None
            # The weight (every value it holds, schemas.state.values_held) rules out most objects at once.
            big = value is not None and part.weight(key) >= least and large(value, least)
            if before is None and (value is None or big or key in self._dropped):
                # Not remembered (dropped, or written without being read: the stage reads first).
                before = self._stored(part, key)
            if before or big:
                whole = value
                touched = part.touched.get(key)
                missed = unaccounted.total()
                value, writes = split(value, key.decode(), before or {}, self.min_values, touched)
                if unaccounted.total() != missed:
                    log.warning(
                        "metaverse object %s: a step changed a large container without saying so "
                        "(engine.chunks.Touched); it was compared whole and saved right — please report it",
                        key.decode(),
                    )
                for ck, chunk in writes.items():
                    puts[ck] = None if chunk is None else pack(chunk)
                if value is not None and value.chunked and self.kept.limit:
                    if _told(touched):
                        after = stored_chunks(value.mv_id, value.chunked, before or {}, writes)
                        saving[key] = _Kept(value, whole, after, sum(value.chunked.values()))
                    else:
                        cold.append(key)
            puts[key] = None if value is None else pack(value)
        self._encoded, self._saving, self._saving_cold = puts, saving, cold
        return puts

    def written(self, puts: dict[bytes, bytes | None] | None) -> None:
        """The database was written: ``puts`` (the records ``encode`` returned — a checkpoint's — or a
        restore's; None: any of it, a partition cleared or closed). What was read before is read again;
        the large objects a checkpoint saved are kept whole, and nothing else stays kept."""
        if puts is not None and puts is self._encoded:
            for key in puts:
                self._cold.pop(key, None)
                kept = self._saving.get(key)
                if kept is not None:
                    self.kept.put(self, key, kept)
                else:
                    self.kept.drop(self, key)
            self._cold.update(dict.fromkeys(self._saving_cold))
        else:
            self.kept.drop_all(self)
            self._cold = {}
            self._discover = True
        self._encoded, self._saving, self._saving_cold = None, {}, []
        self.saved()

    def warm(self, part: PartitionStore) -> bool:
        """Read one large object whole from its chunks and keep it, as a checkpoint keeps a group after a
        member change — one the general sync saved, or one stored before the partition was opened or
        restored: its next member change then reads it kept, in O(1), instead of decoding every chunk.
        For the stage to call while it is idle (nothing came for a while, everything saved); an object
        written since its save is left to its next checkpoint, and one that does not fit in what the
        store keeps is not read (warming never drops a kept object). Whether it read one or looked for
        them: False once none is left, and then it costs nothing."""
        if not self.kept.limit:
            return False
        if self._discover:
            self._discover = False
            self._cold = dict.fromkeys(self._stored_large(part))
            return True
        while self._cold:
            key = next(iter(self._cold))
            del self._cold[key]
            if key in part.unsaved or self.kept.get(self, key) is not None:
                continue
            raw = part.get(key)
            if raw is None:
                continue
            main = _OBJECT.decode(raw)
            values = sum(main.chunked.values())
            if not main.chunked or self.kept.values + values > self.kept.limit:
                continue
            chunks = self._chunks(part, main.mv_id, main.chunked)
            self.kept.put(self, key, _Kept(main, hydrate(main, chunks), chunks, values))
            return True
        return False

    @staticmethod
    def _stored_large(part: PartitionStore) -> list[bytes]:
        """The keys of the objects the partition's database holds in chunks (one seek per object)."""
        found: list[bytes] = []
        it = part.iterator()
        it.seek(CHUNK_PREFIX)
        while it.valid():
            key = it.key()
            if not key.startswith(CHUNK_PREFIX):
                break
            mv_id = key[len(CHUNK_PREFIX) : key.index(b"\x00", len(CHUNK_PREFIX))]
            found.append(mv_id)
            it.seek(CHUNK_PREFIX + mv_id + b"\x01")  # past every chunk of this object
        return found

    def saved(self) -> None:
        """The unsaved state was saved (or a restore written): chunks are read again from the database."""
        self._read = {}
        self._read_values = 0
        self._dropped = set()


__all__ = ["KEPT_VALUES", "READ_VALUES", "KeptObjects", "MVChunks"]
