"""A metaverse object's large containers held apart in chunks (a group's members, their references).

A 50,000-member group's metaverse object holds its members four to six times over: the attribute (mv_ids),
the source link's flow (mv_ids) and references (DN key -> mv_id), each member's DN in a target
(``TargetState.ref_dns``), for a target that imports the group the imported image, and while the export of
its members waits for the confirming import the export ledger's values. Stored as one value,
every change of one member wrote all of it again (12.7 MB at 49,528 members) to the state store and to
its changelog — above a Kafka cluster's default ``message.max.bytes`` (1 MB) from a few thousand members.

Here such a container, once it holds ``min_values`` entries (``pipeline.split_values_from``; back inside
below half of it), is stored in *chunks*, runs of it in order under keys of their own; the object keeps
only a count per container (``MVObject.chunked``). A chunk's key ends with the lowest value (a list) or key
(a dict) it may hold — its *low*: the first chunk's is "" and it is kept, even empty, while the container
is held — so the chunks of a container, read in key order, are the container in order. A list is held only
when its values are in ascending order (the reference flows and attributes are sorted sets: precedence and
``engine.values.sorted_set`` keep them so); another list stays inside the object.

The engine never sees a chunked object: the stage reads the object whole (``hydrate``, one scan per held
container) and stores it with ``split``, which compares it with the chunks it was read from and writes only
the chunks whose runs changed (one member: one chunk per container, ~10 KB). A chunk that grows past twice
the chunk size is cut in pieces; an emptied one (but the first) is deleted.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from itertools import chain, islice

from msgspec.structs import replace

from schemas.state import ConnectorLink, MVChunk, MVObject, TargetState

#: State keys of chunks start with this (``streams.store.APART``: beside the objects, never listed by a
#: scan of the objects' range).
CHUNK_PREFIX = b"\x00\x01mv\x00"
_SEP = "\x1f"
#: Container kinds: a path is the kind, then the names that find it, separated by ``_SEP``.
ATTRIBUTE, FLOW, REFS, IMAGE, REF_DNS, LEDGER = "a", "f", "r", "i", "d", "l"

#: What a stored object's chunks hold, as read: container path -> [(low, chunk)] in key order.
Chunks = dict[str, list[tuple[str, MVChunk]]]
#: Chunk writes: state key -> the chunk (None deletes it).
ChunkWrites = dict[bytes, MVChunk | None]
Container = list[str] | dict[str, str]


def chunk_size(min_values: int) -> int:
    """Entries per chunk: a quarter of the size from which a container is held (250 by default)."""
    return max(min_values // 4, 1)


def object_prefix(mv_id: str) -> bytes:
    """Where every chunk of one object is kept."""
    return CHUNK_PREFIX + mv_id.encode() + b"\x00"


def chunk_prefix(mv_id: str, path: str) -> bytes:
    """Where the chunks of one container of one object are kept, in order."""
    return object_prefix(mv_id) + path.encode() + b"\x00"


def chunk_key(mv_id: str, path: str, low: str) -> bytes:
    return chunk_prefix(mv_id, path) + low.encode()


def low_of(prefix: bytes, key: bytes) -> str:
    """The low of a chunk's key (``key`` under ``prefix``, a ``chunk_prefix``)."""
    return key[len(prefix) :].decode()


def containers(mv: MVObject) -> Iterator[tuple[str, Container]]:
    """Every container of an object that may be held, with its path."""
    for attr, values in mv.attributes.items():
        yield _SEP.join((ATTRIBUTE, attr)), values
    for connector, link in mv.links.items():
        for attr, values in link.flows.items():
            yield _SEP.join((FLOW, connector, attr)), values
        for attr, refs in link.refs.items():
            yield _SEP.join((REFS, connector, attr)), refs
        for attr, values in (link.image or {}).items():
            yield _SEP.join((IMAGE, connector, attr)), values
    for connector, target in mv.targets.items():
        yield _SEP.join((REF_DNS, connector)), target.ref_dns
        for attr, entry in target.ledger.items():
            yield _SEP.join((LEDGER, connector, attr)), entry.values


def large(mv: MVObject, least: int) -> bool:
    """Whether any container of ``mv`` holds at least ``least`` entries (C-level passes: this is asked of
    every object saved)."""
    if any(len(v) >= least for v in mv.attributes.values()):
        return True
    for link in mv.links.values():
        for part in (link.flows, link.refs, link.image or {}):
            if any(len(v) >= least for v in part.values()):
                return True
    for t in mv.targets.values():
        if len(t.ref_dns) >= least or any(len(e.values) >= least for e in t.ledger.values()):
            return True
    return False


def hydrate(main: MVObject, chunks: Chunks) -> MVObject:
    """The whole object: a stored one (``split``'s form) with the containers its chunks hold put back."""
    if not main.chunked:
        return main
    whole: dict[str, Container] = {}
    for path, count in main.chunked.items():
        runs = [chunk for _low, chunk in chunks.get(path, ())]
        container: Container
        if _parse(path)[0] in (REFS, REF_DNS):
            container = {}
            for chunk in runs:
                container.update(chunk.items)
        else:
            container = list(chain.from_iterable(chunk.values for chunk in runs))
        if len(container) != count:
            # Chunks missing from the state (or left over): refused loudly, never synced short of values.
            raise ValueError(
                f"metaverse object {main.mv_id}: {path.replace(_SEP, ' ')} holds {len(container)} values in "
                f"its chunks, the object says {count}"
            )
        whole[path] = container
    return _with(replace(main, chunked={}), whole)


def split(
    whole: MVObject | None, mv_id: str, before: Chunks, min_values: int
) -> tuple[MVObject | None, ChunkWrites]:
    """What to store of a whole object (None: gone) whose stored form held ``before``: the object without
    its held containers, and the chunk writes. A container is held from ``min_values`` entries (down to
    half of it once held); a list only when ascending."""
    if whole is not None and whole.chunked:
        raise ValueError(f"split needs the whole metaverse object, {mv_id} holds containers apart")
    writes: ChunkWrites = {}
    keep: dict[str, Container] = {}
    if whole is not None and large(whole, min_values // 2):
        for path, container in containers(whole):
            need = min_values // 2 if path in before else min_values
            if len(container) < need:
                continue
            if isinstance(container, list) and not _ascending(container):
                continue
            keep[path] = container
    for path, had in before.items():
        if path not in keep:
            for low, _chunk in had:
                writes[chunk_key(mv_id, path, low)] = None
    size = chunk_size(min_values)
    for path, container in keep.items():
        if isinstance(container, dict):
            _dict_writes(writes, mv_id, path, container, before.get(path, []), size)
        else:
            _list_writes(writes, mv_id, path, container, before.get(path, []), size)
    if whole is None or not keep:
        return whole, writes
    return _without(whole, keep), writes


def _ascending(values: list[str]) -> bool:
    return values == sorted(values)  # Timsort on a sorted list: one C-level pass


def _list_writes(
    writes: ChunkWrites, mv_id: str, path: str, values: list[str], had: list[tuple[str, MVChunk]], size: int
) -> None:
    if not had:
        for low, run in _cut(values, "", size):
            writes[chunk_key(mv_id, path, low)] = MVChunk(values=run)
        return
    lows = [low for low, _chunk in had]
    # Chunk i holds values[starts[i]:starts[i + 1]]: from its low on (the first chunk: from the start).
    starts = [0, *(bisect.bisect_left(values, low) for low in lows[1:]), len(values)]
    for i, (low, chunk) in enumerate(had):
        run = values[starts[i] : starts[i + 1]]
        if run == chunk.values:
            continue
        if not run and i > 0:
            writes[chunk_key(mv_id, path, low)] = None
        elif len(run) > 2 * size:
            for piece_low, piece in _cut(run, low, size):
                writes[chunk_key(mv_id, path, piece_low)] = MVChunk(values=piece)
        else:
            writes[chunk_key(mv_id, path, low)] = MVChunk(values=run)


def _cut(values: list[str], low: str, size: int) -> list[tuple[str, list[str]]]:
    """An ascending run in pieces of about ``size``: the first keeps ``low``, each other piece's low is its
    first value, above every value before it (equal values stay in one piece) and above ``low``."""
    pieces: list[tuple[str, list[str]]] = []
    start = 0
    while start < len(values):
        end = min(start + size, len(values))
        while end < len(values) and (values[end] == values[end - 1] or values[end] <= low):
            end += 1
        pieces.append((values[start] if pieces else low, values[start:end]))
        start = end
    return pieces or [(low, [])]


def _dict_writes(
    writes: ChunkWrites,
    mv_id: str,
    path: str,
    items: dict[str, str],
    had: list[tuple[str, MVChunk]],
    size: int,
) -> None:
    if not had:
        for low, piece in _cut(sorted(items), "", size):
            writes[chunk_key(mv_id, path, low)] = MVChunk(items={k: items[k] for k in piece})
        return
    changed = _changed_keys(items, had)
    if not changed:
        return
    for i, keys in changed.items():
        low, chunk = had[i]
        run = dict(chunk.items)
        for k in keys:
            value = items.get(k)
            if value is None:
                run.pop(k, None)
            else:
                run[k] = value
        if not run and i > 0:
            writes[chunk_key(mv_id, path, low)] = None
        elif len(run) > 2 * size:
            for piece_low, piece in _cut(sorted(run), low, size):
                writes[chunk_key(mv_id, path, piece_low)] = MVChunk(items={k: run[k] for k in piece})
        else:
            writes[chunk_key(mv_id, path, low)] = MVChunk(items=run)


def _changed_keys(items: dict[str, str], had: list[tuple[str, MVChunk]]) -> dict[int, list[str]]:
    """The keys whose item differs between ``items`` and the chunks ``had``, by chunk index, with C-level
    passes where nothing changed: each chunk's items checked as a subset of ``items`` (a set difference of
    all the items allocated a pair per item: about 12 ms at 50,000 members, where a member change changes
    one). Keys no chunk holds are looked for at the end of ``items`` first — the engine changes a copy of
    the dict it was given, so a new key comes last — and in all of it when they are not all there."""
    changed: dict[int, list[str]] = {}
    present = 0
    view = items.items()
    for i, (_low, chunk) in enumerate(had):
        mine = chunk.items
        present += len(mine)
        if mine.items() <= view:
            continue
        diff = [k for k, v in mine.items() if items.get(k) != v]
        present -= sum(1 for k in diff if k not in items)
        changed[i] = diff
    new = len(items) - present
    if new > 0:
        lows = [low for low, _chunk in had]

        def chunk_of(k: str) -> int:
            # Chunk i holds the keys from its low up to the next chunk's (the first: all below the second's).
            return max(bisect.bisect_right(lows, k) - 1, 0)

        tail = [k for k in islice(reversed(items), new) if k not in had[chunk_of(k)][1].items]
        if len(tail) < new:
            held: set[str] = set()
            held.update(*(chunk.items for _low, chunk in had))
            tail = list(items.keys() - held)
        for k in tail:
            changed.setdefault(chunk_of(k), []).append(k)
    return changed


def _parse(path: str) -> tuple[str, list[str]]:
    kind, *names = path.split(_SEP)
    return kind, names


def _without(whole: MVObject, keep: dict[str, Container]) -> MVObject:
    """The stored form: ``whole`` without the containers ``keep`` names (copied where they are removed)."""
    attributes = dict(whole.attributes)
    links: dict[str, ConnectorLink] = {}
    targets: dict[str, TargetState] = {}
    for path in keep:
        kind, names = _parse(path)
        if kind == ATTRIBUTE:
            del attributes[names[0]]
        elif kind == REF_DNS:
            target = targets.get(names[0]) or replace(whole.targets[names[0]])
            targets[names[0]] = replace(target, ref_dns={})
        elif kind == LEDGER:
            connector, attr = names
            target = targets.get(connector) or replace(whole.targets[connector])
            entry = replace(target.ledger[attr], values=[])
            targets[connector] = replace(target, ledger={**target.ledger, attr: entry})
        else:
            connector, attr = names
            link = links.get(connector) or replace(whole.links[connector])
            if kind == FLOW:
                link.flows = {a: v for a, v in link.flows.items() if a != attr}
            elif kind == REFS:
                link.refs = {a: v for a, v in link.refs.items() if a != attr}
            else:
                link.image = {a: v for a, v in (link.image or {}).items() if a != attr}
            links[connector] = link
    return replace(
        whole,
        attributes=attributes,
        links={**whole.links, **links},
        targets={**whole.targets, **targets},
        chunked={path: len(container) for path, container in sorted(keep.items())},
    )


def _with(main: MVObject, whole: dict[str, Container]) -> MVObject:
    """``main`` (not chunked any more) with the held containers put back (copied where they go)."""
    attributes = dict(main.attributes)
    links: dict[str, ConnectorLink] = {}
    targets: dict[str, TargetState] = {}
    for path, container in whole.items():
        kind, names = _parse(path)
        if kind == ATTRIBUTE:
            assert isinstance(container, list)
            attributes[names[0]] = container
        elif kind == REF_DNS:
            assert isinstance(container, dict)
            targets[names[0]] = replace(targets.get(names[0]) or main.targets[names[0]], ref_dns=container)
        elif kind == LEDGER:
            assert isinstance(container, list)
            connector, attr = names
            target = targets.get(connector) or main.targets[connector]
            entry = replace(target.ledger[attr], values=container)
            targets[connector] = replace(target, ledger={**target.ledger, attr: entry})
        else:
            connector, attr = names
            link = links.get(connector) or replace(main.links[connector])
            if kind == FLOW:
                assert isinstance(container, list)
                link.flows = {**link.flows, attr: container}
            elif kind == REFS:
                assert isinstance(container, dict)
                link.refs = {**link.refs, attr: container}
            else:
                assert isinstance(container, list)
                link.image = {**(link.image or {}), attr: container}
            links[connector] = link
    return replace(
        main, attributes=attributes, links={**main.links, **links}, targets={**main.targets, **targets}
    )


__all__ = [
    "CHUNK_PREFIX",
    "ChunkWrites",
    "Chunks",
    "chunk_key",
    "chunk_prefix",
    "chunk_size",
    "containers",
    "hydrate",
    "large",
    "low_of",
    "object_prefix",
    "split",
]
