"""The metaverse store's codec: large containers of its objects held in chunks (``engine.chunks``).

Objects are read whole: a stored object that holds containers apart is put together from its chunks (one
scan per container) as it is decoded, and what its chunks held is remembered until the partition's next
checkpoint. The checkpoint stores each object written since through ``engine.chunks.split`` against what
it was read from: only the chunks whose runs changed go to the changelog and the database, with the
object (now small). Everything above the store — the stage, the engine — sees whole objects.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from engine.chunks import Chunks, chunk_prefix, hydrate, large, low_of, split
from schemas.codec import pack, unpacker
from schemas.state import MVChunk, MVObject
from streams.store import PartitionStore

_CHUNK = unpacker(MVChunk)
#: Values of the chunks a partition's codec remembers from its reads until the checkpoint (a 50,000-member
#: group with a source and a target: ~250,000).
READ_VALUES = 2_000_000


class _Head(Struct, kw_only=True):
    """What a stored metaverse object says of its chunks (the rest is not decoded)."""

    chunked: dict[str, int] = {}


_HEAD = unpacker(_Head)


class MVChunks:
    """One partition's codec (``streams.store.StateCodec``)."""

    def __init__(self, min_values: int, read_values: int = READ_VALUES) -> None:
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

    def loaded(self, part: PartitionStore, key: bytes, value: Any) -> Any:
        """A value decoded from the database, whole."""
        if not isinstance(value, MVObject) or not value.chunked:
            return value
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
                value, writes = split(value, key.decode(), before or {}, self.min_values)
                for ck, chunk in writes.items():
                    puts[ck] = None if chunk is None else pack(chunk)
            puts[key] = None if value is None else pack(value)
        return puts

    def saved(self) -> None:
        """The database was written (a checkpoint's records, a restore's): chunks are read again from it."""
        self._read = {}
        self._read_values = 0
        self._dropped = set()


__all__ = ["READ_VALUES", "MVChunks"]
