"""A large metaverse object a checkpoint saved is kept whole for its next read (``streams.chunks``), and
a batch tells the store what changed in its large containers (``streams.stages.base.Batch``,
``engine.chunks.Touched``): the object read is the object the database holds, whatever was kept; a
write that is not the checkpoint's own drops what was kept; the journal of a key is known only from a
read of the database on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine import chunks
from engine.chunks import Touched, attribute_path, containers, flow_path, ref_dns_path, refs_path
from schemas.state import MVObject
from streams.chunks import KeptObjects, MVChunks
from streams.stages.base import Batch
from streams.store import PartitionStore

from .test_mv_chunks import KEY, SPLIT, group


def store(tmp_path: Path, kept: KeptObjects, name: str = "p0") -> PartitionStore:
    return PartitionStore(tmp_path / name, 0, None, MVChunks(SPLIT, kept=kept))


def save(part: PartitionStore) -> dict[bytes, bytes | None]:
    """A checkpoint, as ``streams.stages.base.save`` makes it (without the changelog)."""
    puts = part.encode_unsaved()
    part.write(puts)
    part.saved()
    return puts


def put(part: PartitionStore, value: MVObject | None, touched: Touched | None = None) -> None:
    batch = Batch(part, [KEY], MVObject)
    batch.get(KEY)
    batch.put(KEY, value, touched)
    batch.stash()


def told(value: MVObject) -> Touched:
    """A journal that says, of every container, "compare it" — as a step that changed a few members says
    where (not the general sync, whose journal is whole)."""
    touched = Touched()
    for path, _container in containers(value):
        touched.unknown(path)
    return touched


def kept_after(part: PartitionStore, value: MVObject) -> None:
    """Saved as a member change saves it (after a read, with a journal): kept."""
    put(part, value, told(value))
    save(part)


def read(part: PartitionStore) -> Any:
    return Batch(part, [KEY], MVObject).get(KEY)


def fresh_read(tmp_path: Path, part: PartitionStore) -> Any:
    """The object as a codec that kept nothing reads it from the database."""
    part.close()
    again = store(tmp_path, KeptObjects(0))
    try:
        return read(again)
    finally:
        again.close()


def no_scan(part: PartitionStore, m: pytest.MonkeyPatch) -> None:
    def refused(*_args: Any) -> Any:
        raise AssertionError("the chunks were read")

    m.setattr(part, "scan", refused)


def test_a_saved_group_is_read_back_as_saved_without_reading_its_chunks(tmp_path: Path) -> None:
    kept = KeptObjects()
    part = store(tmp_path, kept)
    put(part, group(range(39)))
    save(part)
    whole = group(range(40))
    kept_after(part, whole)
    assert len(kept) == 1 and kept.values > 0
    with pytest.MonkeyPatch.context() as m:
        no_scan(part, m)
        assert read(part) is whole
    # Changed and saved again (the checkpoint compares it with the chunks kept): the database agrees.
    bigger = group(range(41))
    kept_after(part, bigger)
    with pytest.MonkeyPatch.context() as m:
        no_scan(part, m)
        assert read(part) is bigger
    assert fresh_read(tmp_path, part) == bigger


def test_a_group_the_general_sync_walked_is_not_kept(tmp_path: Path) -> None:
    """A save whose journal is whole (the general sync, a contribution, a put that did not say) keeps
    nothing and drops what was kept: the next read decodes the object from its chunks."""
    kept = KeptObjects()
    part = store(tmp_path, kept)
    put(part, group(range(40)))  # written without a journal: whole
    save(part)
    assert len(kept) == 0
    kept_after(part, group(range(41)))
    assert len(kept) == 1
    whole = Touched()
    whole.whole = True
    latest = group(range(42))
    put(part, latest, whole)
    save(part)
    assert len(kept) == 0
    again = read(part)
    assert again == latest and again is not latest  # decoded from its chunks
    part.close()


def test_a_write_that_is_not_the_checkpoints_drops_what_was_kept(tmp_path: Path) -> None:
    """A restore writes the changelog's records (here the same ones): the object is read from the
    database again, not taken from what the checkpoint kept."""
    kept = KeptObjects()
    part = store(tmp_path, kept)
    put(part, group(range(39)))
    save(part)
    whole = group(range(40))
    put(part, whole, told(whole))
    puts = save(part)
    assert len(kept) == 1
    part.write(dict(puts), 17)
    assert len(kept) == 0
    again = read(part)
    assert again == whole and again is not whole
    # Cleared: nothing kept either.
    kept_after(part, group(range(41)))
    assert len(kept) == 1
    part.clear()
    assert len(kept) == 0
    part.close()


def test_what_is_kept_is_bounded_by_its_values(tmp_path: Path) -> None:
    # A group of 40 holds 160 values apart: the attribute, the flow, the references, the target's DNs.
    kept = KeptObjects(limit=240)
    part = store(tmp_path, kept)
    keys = [b"group-a", b"group-b"]
    for size in (39, 40):
        batch = Batch(part, keys, MVObject)
        for k in keys:
            batch.get(k)
            value = msgspec.structs.replace(group(range(size)), mv_id=k.decode())
            batch.put(k, value, told(value) if size == 40 else None)
        batch.stash()
        save(part)
    # Two groups of 160 values over a limit of 240: the latest saved is kept.
    assert len(kept) == 1 and kept.values == 160
    assert isinstance(part.codec, MVChunks) and kept.get(part.codec, b"group-b") is not None
    too_small = KeptObjects(limit=100)
    small = store(tmp_path, too_small, "small")
    put(small, group(range(39)))
    save(small)
    kept_after(small, group(range(40)))
    assert len(too_small) == 0
    part.close()
    small.close()
    assert len(kept) == 0  # a closed partition keeps nothing


def test_a_kept_object_is_used_only_while_it_is_what_is_stored(tmp_path: Path) -> None:
    kept = KeptObjects()
    codec = MVChunks(SPLIT, kept=kept)
    part = PartitionStore(tmp_path / "p0", 0, None, codec)
    put(part, group(range(39)))
    save(part)
    kept_after(part, group(range(40)))
    entry = kept.get(codec, KEY)
    assert entry is not None
    # Kept as something the database does not hold (cannot happen through the store): not used.
    kept.put(codec, KEY, dataclasses.replace(entry, main=msgspec.structs.replace(entry.main, version=99)))
    assert read(part) == group(range(40))
    assert read(part) is not entry.whole
    assert kept.get(codec, KEY) is None
    part.close()


def test_a_batch_journal_runs_from_a_read_of_the_database(tmp_path: Path) -> None:
    part = store(tmp_path, KeptObjects())
    put(part, group(range(40)))
    save(part)
    first, second = Touched(), Touched()
    first.add(refs_path("hr", "member"), ["a"])
    second.add(ref_dns_path("dir"), ["b"])
    put(part, group(range(41)), first)  # read from the database: known from there
    assert part.touched[KEY].paths == {refs_path("hr", "member"): {"a"}}
    put(part, group(range(42)), second)  # read from the unsaved state: merged
    assert part.touched[KEY].paths == {refs_path("hr", "member"): {"a"}, ref_dns_path("dir"): {"b"}}
    put(part, group(range(43)))  # a put that does not say: unknown
    assert KEY not in part.touched
    put(part, group(range(44)), first)  # and stays unknown until the checkpoint
    assert KEY not in part.touched
    save(part)
    assert part.touched == {}
    # Put without a read: unknown (the database may hold the object).
    batch = Batch(part, [KEY], MVObject)
    batch.put(KEY, group(range(45)), first)
    batch.stash()
    assert KEY not in part.touched
    save(part)
    assert fresh_read(tmp_path, part) == group(range(45))


def test_a_group_saved_from_what_its_steps_said_reads_back_as_saved(tmp_path: Path) -> None:
    """The checkpoint writes only the chunks holding what the journal names; the database then holds the
    object whole — as a codec that kept nothing reads it."""
    part = store(tmp_path, KeptObjects())
    put(part, group(range(40)))
    save(part)
    touched = Touched()
    new = f"{40:08x}-person"  # member 40: its DN key in the references, its mv_id everywhere else
    touched.add(refs_path("hr", "member"), ["employeenumber=e40,o=hr"])
    touched.add(attribute_path("member"), [new])
    touched.add(flow_path("hr", "member"), [new])
    touched.add(ref_dns_path("dir"), [new])
    missed = sum(chunks.unaccounted.values())
    put(part, group(range(41)), touched)
    puts = save(part)
    assert sum(chunks.unaccounted.values()) == missed  # looked only where the journal said
    assert 1 < len(puts) <= 1 + 4 * 2  # the object, and per container its chunk (cut in two at most)
    assert fresh_read(tmp_path, part) == group(range(41))


def test_a_journal_that_misses_a_change_is_caught_by_the_length_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that changed a held container without saying so (here: a member added, the journal naming
    nothing): the container's length gives it away, it is compared whole, saved right, and logged."""
    part = store(tmp_path, KeptObjects())
    put(part, group(range(40)))
    save(part)
    missed = sum(chunks.unaccounted.values())
    put(part, group(range(41)), Touched())
    with caplog.at_level("WARNING", logger="idsync.store"):
        save(part)
    assert sum(chunks.unaccounted.values()) > missed
    assert "without saying so" in caplog.text
    assert fresh_read(tmp_path, part) == group(range(41))


def warm_all(part: PartitionStore) -> int:
    """What an idle stage does (``Store.warm``): pieces of warming until none is left; how many."""
    assert isinstance(part.codec, MVChunks)
    n = 0
    while part.codec.warm(part):
        n += 1
        assert n < 100
    return n


def general_sync_save(part: PartitionStore, value: MVObject) -> None:
    """Saved as the general sync saves it (its journal whole): not kept."""
    whole = Touched()
    whole.whole = True
    put(part, value, whole)
    save(part)


def test_a_group_the_general_sync_saved_is_read_back_whole_while_the_stage_is_idle(tmp_path: Path) -> None:
    """Its next read — a member change — then takes it as kept instead of decoding every chunk."""
    kept = KeptObjects()
    part = store(tmp_path, kept)
    warm_all(part)  # the empty partition looked at once
    put(part, group(range(39)))
    save(part)
    latest = group(range(40))
    general_sync_save(part, latest)
    assert len(kept) == 0
    assert warm_all(part) == 1
    assert len(kept) == 1
    with pytest.MonkeyPatch.context() as m:
        no_scan(part, m)
        again = read(part)
    assert again == latest and again is not latest  # as the database holds it
    # A member change of the warmed group is saved from its journal and kept as before.
    bigger = group(range(41))
    kept_after(part, bigger)
    with pytest.MonkeyPatch.context() as m:
        no_scan(part, m)
        assert read(part) is bigger
    assert warm_all(part) == 0  # nothing cold: kept already
    assert fresh_read(tmp_path, part) == bigger


def test_after_a_restore_the_large_objects_stored_are_found_and_read_back(tmp_path: Path) -> None:
    """A write that is not the checkpoint's (a restore: a worker took the partition) drops what was kept;
    the idle stage finds the partition's large objects in the database (not the small ones, not the
    deleted ones) and reads them back whole."""
    kept = KeptObjects()
    part = store(tmp_path, kept)
    keys = [b"group-a", b"group-b", b"group-c"]
    batch = Batch(part, keys, MVObject)
    for k, size in zip(keys, (40, 3, 41), strict=True):  # group-b is small: never held apart
        batch.get(k)
        batch.put(k, msgspec.structs.replace(group(range(size)), mv_id=k.decode()))
    batch.stash()
    puts = save(part)
    part.write(dict(puts), 7)  # as a restore writes the changelog's records
    assert len(kept) == 0
    # One seek per object over its chunks (four containers of several chunks each).
    assert MVChunks._stored_large(part) == [b"group-a", b"group-c"]
    assert warm_all(part) == 1 + 2  # the search, then group-a and group-c
    assert isinstance(part.codec, MVChunks)
    assert {k for k in keys if kept.get(part.codec, k) is not None} == {b"group-a", b"group-c"}
    with pytest.MonkeyPatch.context() as m:
        no_scan(part, m)
        batch = Batch(part, keys, MVObject)
        assert [len(batch.get(k).attributes["member"]) for k in keys] == [40, 3, 41]
    # Deleted before the next restore: only group-a is found.
    batch = Batch(part, [b"group-c"], MVObject)
    batch.get(b"group-c")
    batch.put(b"group-c", None)
    batch.stash()
    puts = save(part)
    part.write(dict(puts), 8)
    assert warm_all(part) == 1 + 1
    assert [k for k in keys if kept.get(part.codec, k) is not None] == [b"group-a"]
    part.close()


def test_warming_leaves_what_was_written_since_and_never_drops_a_kept_object(tmp_path: Path) -> None:
    # A group of 40 holds 160 values apart: room for one, not two.
    kept = KeptObjects(limit=240)
    part = store(tmp_path, kept)
    warm_all(part)
    keys = [b"group-a", b"group-b"]
    batch = Batch(part, keys, MVObject)
    for k in keys:
        batch.get(k)
        batch.put(k, msgspec.structs.replace(group(range(40)), mv_id=k.decode()))
    batch.stash()
    save(part)
    # group-a written again since its save (unsaved): its next checkpoint decides, warming leaves it.
    batch = Batch(part, [b"group-a"], MVObject)
    batch.get(b"group-a")
    batch.put(b"group-a", msgspec.structs.replace(group(range(41)), mv_id="group-a"))
    batch.stash()
    assert warm_all(part) == 1
    assert isinstance(part.codec, MVChunks)
    assert kept.get(part.codec, b"group-a") is None and kept.get(part.codec, b"group-b") is not None
    # Saved by the general sync: cold again, but it does not fit beside group-b, which stays kept.
    save(part)
    assert warm_all(part) == 0
    assert kept.get(part.codec, b"group-a") is None and kept.get(part.codec, b"group-b") is not None
    part.close()


def test_a_store_that_keeps_nothing_does_no_idle_work(tmp_path: Path) -> None:
    part = store(tmp_path, KeptObjects(0))
    put(part, group(range(40)))
    save(part)
    assert warm_all(part) == 0
    part.close()


def test_the_metaverse_stage_warms_during_a_trickle_but_not_through_a_backlog(tmp_path: Path) -> None:
    """``MetaverseStage.idle``: a group the general sync saved is read back at once after a fetch that
    brought nothing while the worker is not behind (a trickle); while a stage that feeds the metaverse
    works through a backlog (a load) only once nothing came for ``IDLE_S`` — the load's general syncs would
    make it cold again."""
    from streams.consumer import IDLE_S
    from streams.stages.metaverse import BEHIND_RECORDS, MetaverseStage

    from .test_mv_chunks import runtime

    rt = runtime("", tmp_path, "w")
    stage = MetaverseStage(rt)
    stage.input_stages = ("staging", "join", "metaverse")
    try:
        part = stage.store.partition(0)
        stage.store.owned.add(0)
        assert stage.idle(0.0) and not stage.idle(0.0)  # nothing stored: the partition looked at once
        general_sync_save(part, group(range(40)))
        rt.record_input_lag("join", BEHIND_RECORDS)  # a load: the join stage's last batch left a backlog
        assert stage.idle(IDLE_S / 2) and len(rt.kept) == 0  # later
        assert stage.idle(IDLE_S) and len(rt.kept) == 1  # quiet long enough: read back
        general_sync_save(part, group(range(41)))
        assert len(rt.kept) == 0
        rt.record_input_lag("join", 0)  # caught up: a trickle
        assert stage.idle(0.0) and len(rt.kept) == 1
        with pytest.MonkeyPatch.context() as m:
            no_scan(part, m)
            assert read(part) == group(range(41))
    finally:
        stage.table.close()
        stage.store.close()
