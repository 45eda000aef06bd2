"""Partitioned RocksDB state (rocksdict): one database per stage and partition, batched reads and writes.

A stage reads the keys of a whole batch with one multi-get and writes the batch's results with one
WriteBatch, so per-event Python work, not RocksDB, bounds the speed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch


class PartitionStore:
    """One partition of one stage's state: bytes keys to bytes values."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.path = path
        self._db = Rdict(str(path), options=opts)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        result: list[bytes | None] = self._db.get(keys)
        return result

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def write(self, puts: dict[bytes, bytes | None]) -> None:
        """Apply puts (None = delete) atomically."""
        if not puts:
            return
        wb = WriteBatch(raw_mode=True)
        for k, v in puts.items():
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self._db.write(wb)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def close(self) -> None:
        self._db.close()


class Store:
    """A stage's state across the partitions this worker holds."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        self._parts: dict[int, PartitionStore] = {}

    def partition(self, p: int) -> PartitionStore:
        part = self._parts.get(p)
        if part is None:
            part = self._parts[p] = PartitionStore(self.root / f"p{p}")
        return part

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
