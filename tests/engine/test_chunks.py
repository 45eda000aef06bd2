"""A metaverse object's large containers held in chunks (``engine.chunks``): stored and read back, the
object is the same; a change writes only the chunks whose runs changed; nothing stale is left behind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.chunks import (
    Chunks,
    ChunkWrites,
    chunk_prefix,
    chunk_size,
    hydrate,
    low_of,
    object_prefix,
    split,
    stored_chunks,
)
from schemas.state import ConnectorLink, LedgerEntry, MVChunk, MVObject, TargetState

MV_ID = "mv-group"
MIN = 8  # chunks of 2 values: every path through cutting and emptying chunks is taken


def mv_id(i: int) -> str:
    return f"{i:08x}-0000"


def dn(i: int) -> str:
    return f"uid=u{i},ou=people,dc=example"


def group(
    members: set[int], *, unsorted: bool = False, image: bool = False, pending: bool = False
) -> MVObject:
    """A group as the metaverse holds it: members resolved from a source's DNs, exported to a target
    (``pending``: the export of all of them waits for its confirming import in the ledger)."""
    ids = sorted(mv_id(i) for i in members)
    links = {
        "hr": ConnectorLink(
            anchor="g1",
            flows={"member": ids, "name": ["staff"]},
            refs={"member": {dn(i).lower(): mv_id(i) for i in members}},
        )
    }
    if image:
        # In ascending order: a connector's image in another order stays inside (below).
        links["dir"] = ConnectorLink(anchor="cn=staff", image={"member": sorted(dn(i) for i in members)})
    return MVObject(
        mv_id=MV_ID,
        object_type="group",
        attributes={"member": list(reversed(ids)) if unsorted else ids, "name": ["staff"]},
        contributors={"member": "hr", "name": "hr"},
        links=links,
        targets={
            "dir": TargetState(
                status="exists",
                ref_dns={mv_id(i): f"cn=u{i},dc=dir" for i in members},
                ledger={
                    "member": LedgerEntry(values=sorted(f"cn=u{i},dc=dir" for i in members), seq=2)
                    if pending
                    else LedgerEntry(op="delta", values=["cn=u1,dc=dir"], seq=3)
                },
            )
        },
    )


class Db:
    """The store's chunk keys, as the metaverse stage's codec reads and writes them."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, MVChunk] = {}
        self.written: list[ChunkWrites] = []

    def read(self, main: MVObject) -> Chunks:
        out: Chunks = {}
        for path in main.chunked:
            prefix = chunk_prefix(main.mv_id, path)
            out[path] = [
                (low_of(prefix, k), c) for k, c in sorted(self.chunks.items()) if k.startswith(prefix)
            ]
        return out

    def store(self, whole: MVObject | None, before: Chunks, least: int = MIN) -> MVObject | None:
        main, writes = split(whole, MV_ID, before, least)
        self.written.append(writes)
        for k, c in writes.items():
            if c is None:
                self.chunks.pop(k, None)
            else:
                self.chunks[k] = c
        return main


def test_a_large_group_is_stored_in_chunks_and_read_back_whole() -> None:
    db = Db()
    whole = group(set(range(20)), image=True, pending=True)
    main = db.store(whole, {})
    assert main is not None
    assert main.chunked == {
        "a\x1fmember": 20,
        "d\x1fdir": 20,
        "f\x1fhr\x1fmember": 20,
        "i\x1fdir\x1fmember": 20,
        "l\x1fdir\x1fmember": 20,
        "r\x1fhr\x1fmember": 20,
    }
    # The small containers stay inside; the held ones are out of the stored object.
    assert main.attributes == {"name": ["staff"]}
    assert main.links["hr"].flows == {"name": ["staff"]} and main.links["hr"].refs == {}
    assert main.targets["dir"].ref_dns == {} and main.targets["dir"].ledger["member"].values == []
    assert main.targets["dir"].ledger["member"].seq == 2
    assert whole.attributes["member"] and whole.links["hr"].refs  # the given object is not changed
    assert all(len(c.values) + len(c.items) <= 2 * chunk_size(MIN) for c in db.chunks.values())
    assert hydrate(main, db.read(main)) == whole
    # Stored again unchanged: nothing to write.
    assert db.store(whole, db.read(main)) == main
    assert db.written[-1] == {}


def test_one_member_writes_one_chunk_per_container() -> None:
    db = Db()
    members = set(range(0, 400, 2))
    main = db.store(group(members), {})
    assert main is not None
    for change in ({101}, {102}):
        now = members ^ change
        whole = group(now)
        main = db.store(whole, db.read(main))
        assert main is not None
        writes = db.written[-1]
        # attribute, flow, references, target DNs: one chunk each (no cut: the chunk had room)
        assert len(writes) == 4, sorted(writes)
        assert hydrate(main, db.read(main)) == whole
        members = now


def test_small_containers_and_unordered_lists_stay_inside() -> None:
    db = Db()
    assert db.store(group(set(range(MIN - 1))), {}) == group(set(range(MIN - 1)))
    whole = group(set(range(20)), unsorted=True)
    main = db.store(whole, {})
    assert main is not None and "a\x1fmember" not in main.chunked
    assert main.attributes["member"] == whole.attributes["member"]
    assert hydrate(main, db.read(main)) == whole


def test_held_down_to_half_then_back_inside_with_no_chunk_left() -> None:
    db = Db()
    main = db.store(group(set(range(MIN))), {})
    assert main is not None and main.chunked
    main = db.store(group(set(range(MIN // 2))), db.read(main))
    assert main is not None and main.chunked  # half: still held
    back = db.store(group(set(range(MIN // 2 - 1))), db.read(main))
    assert back == group(set(range(MIN // 2 - 1))) and not back.chunked
    assert db.chunks == {}


def test_a_deleted_object_leaves_no_chunk() -> None:
    db = Db()
    main = db.store(group(set(range(30))), {})
    assert main is not None and db.chunks
    assert db.store(None, db.read(main)) is None
    assert not [k for k in db.chunks if k.startswith(object_prefix(MV_ID))]


def test_missing_chunks_are_refused_not_read_short() -> None:
    db = Db()
    main = db.store(group(set(range(30))), {})
    assert main is not None
    chunks = db.read(main)
    chunks["r\x1fhr\x1fmember"] = chunks["r\x1fhr\x1fmember"][:-1]
    with pytest.raises(ValueError, match=r"holds \d+ values in its chunks, the object says 30"):
        hydrate(main, chunks)


def test_split_needs_the_whole_object() -> None:
    main = Db().store(group(set(range(30))), {})
    assert main is not None
    with pytest.raises(ValueError, match="needs the whole"):
        split(main, MV_ID, {}, MIN)


@settings(max_examples=150, deadline=None)
@given(
    start=st.sets(st.integers(0, 300), max_size=120),
    steps=st.lists(
        st.tuples(st.sets(st.integers(0, 300), max_size=40), st.booleans(), st.booleans(), st.booleans()),
        min_size=1,
        max_size=8,
    ),
)
def test_any_history_of_changes_reads_back_what_was_stored(
    start: set[int], steps: list[tuple[set[int], bool, bool, bool]]
) -> None:
    db = Db()
    members = start
    main = db.store(group(members, image=True), {})
    size = chunk_size(MIN)
    for flip, image, unsorted, pending in steps:
        members = members ^ flip
        whole = group(members, image=image, unsorted=unsorted, pending=pending)
        before = db.read(main) if main is not None else {}
        main = db.store(whole, before)
        assert main is not None
        assert hydrate(main, db.read(main)) == whole
        # What the codec keeps of a saved object for its next read is what reading it back gives.
        assert stored_chunks(MV_ID, main.chunked, before, db.written[-1]) == db.read(main)
        # Only the held containers have chunks, each starting with its first chunk (low ""), none too large.
        paths = {k[len(object_prefix(MV_ID)) :].split(b"\x00")[0].decode() for k in db.chunks}
        assert paths == set(main.chunked)
        for chunks in db.read(main).values():
            assert chunks[0][0] == ""
            assert all(len(c.values) + len(c.items) <= 2 * size for _low, c in chunks)
            assert all(c.values or c.items for _low, c in chunks[1:])
        # What changed is what was written: the chunks written are those whose runs differ.
        assert all(db.chunks.get(k) == c for k, c in db.written[-1].items())
