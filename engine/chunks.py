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
from collections import Counter
from collections.abc import Iterable, Iterator
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


class Touched:
    """What steps changed in an object's containers since it was read from the store: per container path
    (``containers``), the values of a list or the keys of a dict that were added, removed or changed
    (None: something else — the container is compared whole); ``whole``: anything may have changed.

    The engine fills it where it changes a few entries of a large container (a group's member answer,
    ``engine.membership``); ``split`` then looks at the chunks that hold those entries instead of
    comparing every chunk with the container. A step that does not say what it changed makes it whole."""

    __slots__ = ("paths", "whole")

    def __init__(self) -> None:
        self.paths: dict[str, set[str] | None] = {}
        self.whole = False

    def add(self, path: str, entries: Iterable[str]) -> None:
        if path not in self.paths:
            self.paths[path] = set(entries)
            return
        known = self.paths[path]
        if known is not None:
            known.update(entries)

    def unknown(self, path: str) -> None:
        """``path`` changed in a way not recorded: compared whole."""
        self.paths[path] = None

    def merged(self, later: Touched) -> Touched:
        """This and then ``later``."""
        out = Touched()
        out.whole = self.whole or later.whole
        if not out.whole:
            for changes in (self.paths, later.paths):
                for path, entries in changes.items():
                    if entries is None:
                        out.unknown(path)
                    else:
                        out.add(path, entries)
        return out


def attribute_path(attr: str) -> str:
    return _SEP.join((ATTRIBUTE, attr))


def flow_path(connector: str, attr: str) -> str:
    return _SEP.join((FLOW, connector, attr))


def refs_path(connector: str, attr: str) -> str:
    return _SEP.join((REFS, connector, attr))


def ref_dns_path(connector: str) -> str:
    return _SEP.join((REF_DNS, connector))


def ledger_path(connector: str, attr: str) -> str:
    return _SEP.join((LEDGER, connector, attr))


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
        yield attribute_path(attr), values
    for connector, link in mv.links.items():
        for attr, values in link.flows.items():
            yield flow_path(connector, attr), values
        for attr, refs in link.refs.items():
            yield refs_path(connector, attr), refs
        for attr, values in (link.image or {}).items():
            yield _SEP.join((IMAGE, connector, attr)), values
    for connector, target in mv.targets.items():
        yield ref_dns_path(connector), target.ref_dns
        for attr, entry in target.ledger.items():
            yield ledger_path(connector, attr), entry.values


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
    whole: MVObject | None, mv_id: str, before: Chunks, min_values: int, touched: Touched | None = None
) -> tuple[MVObject | None, ChunkWrites]:
    """What to store of a whole object (None: gone) whose stored form held ``before``: the object without
    its held containers, and the chunk writes. A container is held from ``min_values`` entries (down to
    half of it once held); a list only when ascending. ``touched``: what changed since ``before`` was read
    (None: unknown) — a held container is then looked at only where it changed."""
    if touched is not None and touched.whole:
        touched = None
    if whole is not None and whole.chunked:
        raise ValueError(f"split needs the whole metaverse object, {mv_id} holds containers apart")
    writes: ChunkWrites = {}
    keep: dict[str, Container] = {}
    #: Per held list, the runs that differ from its chunks (found while checking that it is ascending).
    runs: dict[str, list[tuple[int, list[str]]]] = {}
    if whole is not None and large(whole, min_values // 2):
        for path, container in containers(whole):
            need = min_values // 2 if path in before else min_values
            if len(container) < need:
                continue
            if isinstance(container, list):
                had = before.get(path)
                if had:
                    changed = _touched_runs(container, had, touched, path)
                    if changed is None:
                        continue  # not ascending any more: back inside
                    runs[path] = changed
                elif not _ascending(container):
                    continue
            keep[path] = container
    for path, had in before.items():
        if path not in keep:
            for low, _chunk in had:
                writes[chunk_key(mv_id, path, low)] = None
    size = chunk_size(min_values)
    for path, container in keep.items():
        if isinstance(container, dict):
            _dict_writes(writes, mv_id, path, container, before.get(path, []), size, touched)
        else:
            _list_writes(writes, mv_id, path, container, before.get(path, []), runs.get(path, []), size)
    if whole is None or not keep:
        return whole, writes
    return _without(whole, keep), writes


def stored_chunks(mv_id: str, paths: Iterable[str], before: Chunks, writes: ChunkWrites) -> Chunks:
    """What the chunks of the containers ``paths`` of an object hold once ``split``'s ``writes`` are applied
    to those it was read from (``before``): what reading them back would give (``paths``: the stored
    object's ``chunked``)."""
    after: Chunks = {}
    for path in paths:
        prefix = chunk_prefix(mv_id, path)
        runs = dict(before.get(path, ()))
        for key, chunk in writes.items():
            if key.startswith(prefix):
                low = low_of(prefix, key)
                if chunk is None:
                    runs.pop(low, None)
                else:
                    runs[low] = chunk
        # A str's order is its UTF-8 encoding's: the keys' order.
        after[path] = sorted(runs.items(), key=lambda run: run[0])
    return after


def _ascending(values: list[str]) -> bool:
    return values == sorted(values)  # Timsort on a sorted list: one C-level pass


def _changed_runs(values: list[str], had: list[tuple[str, MVChunk]]) -> list[tuple[int, list[str]]] | None:
    """The runs of ``values`` that differ from the chunks ``had`` they would be stored in, by chunk index;
    None if ``values`` is not ascending. Chunk i holds ``values`` from its low up to the next chunk's (the
    first: from the start). A chunk's values were ascending and within its bounds when it was written,
    so only a run that differs is checked: the list is checked ascending without a pass over all of it
    (a held group whose one member changed: one run)."""
    lows = [low for low, _chunk in had]
    starts = [0, *(bisect.bisect_left(values, low) for low in lows[1:]), len(values)]
    changed: list[tuple[int, list[str]]] = []
    for i, (_low, chunk) in enumerate(had):
        start, end = starts[i], starts[i + 1]
        if start > end:
            return None
        run = values[start:end]
        if run == chunk.values:
            continue
        if not _fits(run, i, lows):
            return None
        changed.append((i, run))
    return changed


#: Saves of a held container whose ``Touched`` entries did not account for its length, by container kind:
#: a step changed it without saying so. It is compared whole (the result is right either way); a count
#: above zero is a defect of the step, which the tests look for.
unaccounted: Counter[str] = Counter()


def _fits(run: list[str], i: int, lows: list[str]) -> bool:
    """Whether ``run`` may be chunk ``i``'s values: ascending, from its low up to the next chunk's."""
    return not run or (
        _ascending(run) and (i == 0 or run[0] >= lows[i]) and (i == len(lows) - 1 or run[-1] < lows[i + 1])
    )


def _chunk_of(lows: list[str], entry: str) -> int:
    """The chunk that holds ``entry`` (a list's value or a dict's key): from its low up to the next chunk's
    (the first: everything below the second's)."""
    return max(bisect.bisect_right(lows, entry) - 1, 0)


def _held(had: list[tuple[str, MVChunk]]) -> int:
    return sum(len(chunk.values) + len(chunk.items) for _low, chunk in had)


def _touched_runs(
    values: list[str], had: list[tuple[str, MVChunk]], touched: Touched | None, path: str
) -> list[tuple[int, list[str]]] | None:
    """``_changed_runs``, looking only at the chunks that hold what ``touched`` says changed (none if it
    names nothing of ``path``); compared whole when it does not say, or when the chunks it names do not
    account for the list's length (a change not recorded)."""
    if touched is None or path not in touched.paths:
        if touched is not None:
            if len(values) == _held(had):
                return []
            unaccounted[_parse(path)[0]] += 1
        return _changed_runs(values, had)
    entries = touched.paths[path]
    if entries is None:
        return _changed_runs(values, had)
    lows = [low for low, _chunk in had]
    last = len(had) - 1
    count = len(values) - _held(had)
    changed: list[tuple[int, list[str]]] = []
    for i in sorted({_chunk_of(lows, v) for v in entries}):
        low, chunk = had[i]
        start = bisect.bisect_left(values, low) if i > 0 else 0
        end = bisect.bisect_left(values, lows[i + 1]) if i < last else len(values)
        if start > end:
            return None
        run = values[start:end]
        count -= len(run) - len(chunk.values)
        if run == chunk.values:
            continue
        if not _fits(run, i, lows):
            return None
        changed.append((i, run))
    if count:
        unaccounted[_parse(path)[0]] += 1
        return _changed_runs(values, had)
    return changed


def _list_writes(
    writes: ChunkWrites,
    mv_id: str,
    path: str,
    values: list[str],
    had: list[tuple[str, MVChunk]],
    changed: list[tuple[int, list[str]]],
    size: int,
) -> None:
    if not had:
        for low, run in _cut(values, "", size):
            writes[chunk_key(mv_id, path, low)] = MVChunk(values=run)
        return
    for i, run in changed:
        low = had[i][0]
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
    touched: Touched | None = None,
) -> None:
    if not had:
        for low, piece in _cut(sorted(items), "", size):
            writes[chunk_key(mv_id, path, low)] = MVChunk(items={k: items[k] for k in piece})
        return
    changed = _touched_keys(items, had, touched, path)
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


def _touched_keys(
    items: dict[str, str], had: list[tuple[str, MVChunk]], touched: Touched | None, path: str
) -> dict[int, list[str]]:
    """``_changed_keys``, looking only at the keys ``touched`` says changed (none if it names nothing of
    ``path``); compared whole when it does not say, or when those keys do not account for the dict's
    length (a change not recorded)."""
    entries = touched.paths.get(path, set()) if touched is not None else None
    if entries is None:
        return _changed_keys(items, had)
    lows = [low for low, _chunk in had]
    count = len(items) - _held(had)
    changed: dict[int, list[str]] = {}
    for k in sorted(entries):
        i = _chunk_of(lows, k)
        mine = had[i][1].items
        value = items.get(k)
        count -= (value is not None) - (k in mine)
        if mine.get(k) != value:
            changed.setdefault(i, []).append(k)
    if count:
        unaccounted[_parse(path)[0]] += 1
        return _changed_keys(items, had)
    return changed


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
        tail = [k for k in islice(reversed(items), new) if k not in had[_chunk_of(lows, k)][1].items]
        if len(tail) < new:
            held: set[str] = set()
            held.update(*(chunk.items for _low, chunk in had))
            tail = list(items.keys() - held)
        for k in tail:
            changed.setdefault(_chunk_of(lows, k), []).append(k)
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
    "Touched",
    "attribute_path",
    "chunk_key",
    "chunk_prefix",
    "chunk_size",
    "containers",
    "flow_path",
    "hydrate",
    "large",
    "ledger_path",
    "low_of",
    "object_prefix",
    "ref_dns_path",
    "refs_path",
    "split",
    "stored_chunks",
    "unaccounted",
]
