"""The metaverse store's codec: large containers of its objects held in chunks (``engine.chunks``).

Objects are read whole: a stored object that holds containers apart is put together from its chunks (one
scan per container) as it is decoded, and what its chunks held is remembered until the partition's next
checkpoint. The checkpoint stores each object written since through ``engine.chunks.split`` against what
it was read from: only the chunks whose runs changed go to the changelog and the database, with the
object (now small). Everything above the store — the stage, the engine — sees whole objects.

A chunked object a checkpoint saved is also *kept* whole (up to ``KEEP_VALUES`` values over the partition's
objects, the latest saved first): the next batch that reads it finds the stored object equal to the one
saved and takes the whole one kept instead of scanning and decoding its chunks again (a group whose members
keep changing is read once, not once per checkpoint). A restore into the partition forgets them all.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from engine.chunks import (
    Chunks,
    ChunkWrites,
    chunk_prefix,
    hydrate,
    large,
    low_of,
    object_prefix,
    split,
)
from schemas.codec import pack, unpacker
from schemas.state import MVChunk, MVObject, values_held
from streams.store import PartitionStore

_CHUNK = unpacker(MVChunk)
#: Values of the chunked objects a partition keeps whole after saving them (a 50,000-member group with a
#: source and a target: ~200,000).
KEEP_VALUES = 1_000_000


class _Head(Struct, kw_only=True):
    """What a stored metaverse object says of its chunks (the rest is not decoded)."""

    chunked: dict[str, int] = {}


_HEAD = unpacker(_Head)


class MVChunks:
    """One partition's codec (``streams.store.StateCodec``)."""

    def __init__(self, min_values: int, keep_values: int = KEEP_VALUES) -> None:
        self.min_values = min_values
        self.keep_values = keep_values
        #: Objects read from the database since the last checkpoint that hold containers apart: what their
        #: chunks held then (the database's, until the checkpoint writes the new ones).
        self._read: dict[bytes, Chunks] = {}
        #: Chunked objects saved: key -> (the stored object, the whole one, its chunks), the latest last;
        #: ``_saving``: those of the checkpoint in progress (kept once it is written).
        self._kept: dict[bytes, tuple[MVObject, MVObject, Chunks]] = {}
        self._saving: dict[bytes, tuple[MVObject, MVObject, Chunks]] = {}
        #: How many times a read found its object kept, and read its chunks (tests, inspection).
        self.hits = self.reads = 0

    def loaded(self, part: PartitionStore, key: bytes, value: Any) -> Any:
        """A value decoded from the database, whole."""
        if not isinstance(value, MVObject) or not value.chunked:
            return value
        kept = self._kept.get(key)
        if kept is not None and kept[0] == value:
            self.hits += 1
            self._read[key] = kept[2]
            return kept[1]
        self.reads += 1
        chunks = self._chunks(part, value.mv_id, value.chunked)
        self._read[key] = chunks
        return hydrate(value, chunks)

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
        least = self.min_values // 2
        for key, value in unsaved.items():
            before = self._read.get(key)
            big = value is not None and large(value, least)
            if before is None and (value is None or big):
                before = self._stored(part, key)  # written without being read (not done by the stage)
            self._kept.pop(key, None)
            if before or big:
                whole = value
                value, writes = split(value, key.decode(), before or {}, self.min_values)
                for ck, chunk in writes.items():
                    puts[ck] = None if chunk is None else pack(chunk)
                if whole is not None and value is not None and value.chunked:
                    self._saving[key] = (value, whole, _after(value, before or {}, writes))
            puts[key] = None if value is None else pack(value)
        return puts

    def saved(self) -> None:
        """The database holds what ``encode`` gave: what was read before is read again from it, but the
        chunked objects just saved are kept whole (within ``keep_values``, the oldest kept dropped first)."""
        self._read = {}
        self._kept.update(self._saving)
        self._saving = {}
        total = 0
        for key in reversed(list(self._kept)):
            total += values_held(self._kept[key][1])
            if total > self.keep_values:
                del self._kept[key]

    def forget(self) -> None:
        self._read = {}
        self._kept = {}
        self._saving = {}

    def chunk_keys(self, part: PartitionStore, mv_id: str) -> list[bytes]:
        """Every chunk key the database holds for an object (for tests and inspection)."""
        return [k for k, _raw in part.scan(object_prefix(mv_id))]


def _after(main: MVObject, before: Chunks, writes: ChunkWrites) -> Chunks:
    """What the chunks of a stored object hold once ``writes`` are written over ``before``."""
    after: Chunks = {}
    for path in main.chunked:
        prefix = chunk_prefix(main.mv_id, path)
        runs = dict(before.get(path, ()))
        for k, chunk in writes.items():
            if k.startswith(prefix):
                low = low_of(prefix, k)
                if chunk is None:
                    runs.pop(low, None)
                else:
                    runs[low] = chunk
        after[path] = sorted(runs.items())
    return after


__all__ = ["KEEP_VALUES", "MVChunks"]
