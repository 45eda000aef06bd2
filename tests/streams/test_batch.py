"""A stage's batch view of one partition's state (real RocksDB in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from schemas.codec import pack
from streams.stages.base import Batch
from streams.store import PartitionStore


class Item(msgspec.Struct):
    value: str
    extra: str = ""


class Head(msgspec.Struct):
    value: str


def test_scan_sees_the_store_with_this_batchs_writes(tmp_path: Path) -> None:
    part = PartitionStore(tmp_path / "p0")
    part.write(
        {b"a\x001": pack(Item("stored-1")), b"a\x002": pack(Item("stored-2")), b"b\x001": pack(Item("b"))}
    )
    batch = Batch(part, [b"a\x001"], Item)
    assert batch.get(b"a\x001") == Item("stored-1")  # read, not written: the store's value
    batch.put(b"a\x003", Item("new"))
    batch.put(b"a\x002", None)  # deleted in this batch
    batch.put(b"a\x001", Item("changed"))
    batch.put(b"ab", Item("other prefix"))
    assert batch.scan(b"a\x00") == [(b"a\x001", Item("changed")), (b"a\x003", Item("new"))]
    assert batch.scan(b"b") == [(b"b\x001", Item("b"))]
    assert [k for k, _v in batch.scan(b"a")] == [b"a\x001", b"a\x003", b"ab"]
    part.close()


def test_scans_through_one_iterator_find_what_scans_of_their_own_find(tmp_path: Path) -> None:
    """The reference table's applier seeks every route of a slice with one iterator, in any order."""
    part = PartitionStore(tmp_path / "p0")
    part.write({f"r{i % 7}\x00{i}".encode(): pack(Item(str(i))) for i in range(50)}, changelog_offset=3)
    batch = Batch(part, [], Item)
    batch.put(b"r2\x00new", Item("new"))
    prefixes = [b"r5\x00", b"r1\x00", b"absent\x00", b"r2\x00", b"r5\x00", b"", b"r"]
    it = batch.iterator()
    shared = [batch.scan(prefix, it=it) for prefix in prefixes]
    del it
    assert shared == [batch.scan(prefix) for prefix in prefixes]
    assert [len(found) for found in shared] == [7, 7, 0, 8, 7, 51, 51]  # bookkeeping keys never come
    part.close()
    PartitionStore(tmp_path / "p0").close()  # the iterator gone, the database opens again


def test_scan_into_a_head_decodes_stored_objects_partly(tmp_path: Path) -> None:
    part = PartitionStore(tmp_path / "p0")
    part.write({b"k1": pack(Item("one", extra="x")), b"k2": pack(Item("two", extra="y"))})
    batch = Batch(part, [], Item)
    batch.put(b"k2", Item("two-changed", extra="z"))
    got = dict(batch.scan(b"k", head=Head))
    assert got[b"k1"] == Head("one")  # stored: only the head's fields
    assert got[b"k2"] == Item("two-changed", extra="z")  # written by the batch: whole
    part.close()


def test_update_writes_only_what_changed(tmp_path: Path) -> None:
    part = PartitionStore(tmp_path / "p0")
    part.write({b"same": pack(Item("v")), b"gone": pack(Item("g"))})
    batch = Batch(part, [b"same", b"gone", b"absent"], Item)
    batch.update(b"same", Item("v"))  # equal to what is stored: no write, no changelog record
    batch.update(b"absent", None)  # deleting what is not there: nothing either
    batch.update(b"gone", None)
    batch.update(b"new", Item("n"))
    batch.stash()
    assert part.unsaved == {b"gone": None, b"new": Item("n")}
    part.close()
