"""Staging: a change record against the connector-space object -> pending import type and new hologram."""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol

from msgspec.structs import replace

from engine.values import dn_key, dn_keys, same_values
from schemas.messages import DnClaim
from schemas.records import Attrs
from schemas.state import ConnectorState, CSObject
from schemas.wire import ChangeRecord

PendingImport = Literal["none", "add", "update", "rename", "delete", "delete-add", "stale", "duplicate"]


#: attribute -> (values added, values removed): what a value-level change record did to the hologram.
ValueChanges = dict[str, tuple[list[str], list[str]]]


@dataclass(frozen=True, slots=True)
class Staged:
    """Result of staging one record. ``after`` None means the object is gone from the connector space."""

    pending: PendingImport
    before: CSObject | None
    after: CSObject | None
    changed: frozenset[str] = field(default_factory=frozenset)
    #: A value-level record (``added``/``removed``) applied to an object already staged: the values each
    #: of its attributes gained and lost, as they changed the hologram (a value it already had is not
    #: added again, one it did not have is not removed). None for a record given by whole values.
    values: ValueChanges | None = None

    @property
    def skipped(self) -> bool:
        return self.pending in ("stale", "duplicate")


def changed_attributes(old: Attrs, new: Attrs) -> frozenset[str]:
    """Names of attributes whose value sets differ."""
    if not old:
        return frozenset(k for k, v in new.items() if v)
    return frozenset(k for k in old.keys() | new.keys() if not same_values(old.get(k), new.get(k)))


def apply_values(
    have: list[str], added: list[str], removed: list[str], dn_valued: bool
) -> tuple[list[str], list[str], list[str]]:
    """A multi-valued attribute after a value-level change: (its values, those added, those removed).

    Values match exactly, or as DNs (``dn_valued``: case and spaces around separators ignored); the
    values kept keep their order and the added ones follow. Still O(values held): the members' DN keys
    (C-level when cached or plain, ``engine.values.dn_keys``), a set of them, and, when a value goes, one
    Python pass that takes it out — the hologram is one record (docs/architecture.md)."""
    keys = dn_keys(have) if dn_valued else have
    gone = set(dn_keys(removed) if dn_valued else removed)
    gone.discard("")
    present = set(keys)
    if gone and not gone.isdisjoint(present):
        kept = [v for v, k in zip(have, keys, strict=True) if k not in gone]
        lost = [v for v, k in zip(have, keys, strict=True) if k in gone]
        present -= gone  # the keys of what is kept
    else:
        kept, lost = list(have), []
    gained: list[str] = []
    for value, key in zip(added, dn_keys(added) if dn_valued else added, strict=True):
        if key and key not in present:
            present.add(key)
            gained.append(value)
    kept.extend(gained)
    return kept, gained, lost


def _value_changes(
    record: ChangeRecord, current: CSObject, image: Attrs, dn_valued: Collection[str]
) -> ValueChanges:
    """Apply a record's ``added``/``removed`` to ``image`` (the hologram being built); what changed."""
    added, removed = record.added or {}, record.removed or {}
    done: ValueChanges = {}
    for name in sorted({*added, *removed}):
        have = current.attributes.get(name, [])
        values, gained, lost = apply_values(
            have, added.get(name, []), removed.get(name, []), name in dn_valued
        )
        image[name] = values
        if gained or lost:
            done[name] = (gained, lost)
    return done


def _without(attrs: Attrs, names: set[str]) -> Attrs:
    return {k: v for k, v in attrs.items() if k not in names}


def _new_object(record: ChangeRecord, image: Attrs) -> CSObject:
    src = record.source
    return CSObject(
        connector=src.connector,
        anchor=record.anchor,
        object_type=record.object_type,
        dn=src.dn,
        attributes=image,
        version=src.version,
        event_id=src.event_id,
        last_run=src.run_id,
        locator=src.locator,
        source_ts_ms=src.ts_ms,
    )


def _restaged(current: CSObject, record: ChangeRecord, image: Attrs) -> CSObject:
    """The object after a record that updates it: its attributes ``image``, the record's source facts."""
    src = record.source
    return replace(
        current,
        attributes=image,
        dn=src.dn if src.dn is not None else current.dn,
        version=src.version,
        event_id=src.event_id,
        last_run=src.run_id or current.last_run,
        locator=src.locator or current.locator,
        source_ts_ms=src.ts_ms,
    )


def skipped_by(seen: CSObject | None, record: ChangeRecord) -> Literal["stale", "duplicate"] | None:
    """Whether a record changes nothing of what staging has seen of its object (the object, or its
    tombstone): older than it (stale), or the record it saw last again (duplicate)."""
    if seen is None:
        return None
    if record.source.version < seen.version:
        return "stale"
    if record.source.event_id == seen.event_id:
        return "duplicate"
    return None


def _overlay(attributes: Attrs, record: ChangeRecord) -> Attrs:
    """A delta carrying only changed attributes (``changes``, given whole in ``after``) overlaid on the
    hologram's attributes."""
    after = record.after or {}
    merged = dict(attributes)
    for name in record.changes or ():
        merged[name] = after.get(name, [])
    return merged


def stage(
    current: CSObject | None,
    record: ChangeRecord,
    tombstone: CSObject | None = None,
    dn_valued: Collection[str] = (),
) -> Staged:
    """Stage one change record (MIM import step). Stale and duplicate records change nothing.

    ``tombstone`` (when the object is not in the connector space) is what is known of its deletion: a
    record older than the delete, or the delete again, is stale or a duplicate, never a resurrection.

    A value-level record (``added``/``removed``, version 2) changes those attributes value by value;
    ``dn_valued``: the attributes whose values match as DNs (the connector's reference attributes). For
    an object not staged yet it is an add whose attributes are what the record gives (its added values:
    there is nothing to remove them from), as MIM stages an update of an unknown object."""
    src = record.source
    skip = skipped_by(current if current is not None else tombstone, record)
    if skip is not None:
        return Staged(skip, current, current)
    if record.op == "d":
        if current is None:
            return Staged("none", None, None)
        return Staged("delete", current, None, frozenset(current.attributes))
    image: Attrs = dict(record.after or {})
    values: ValueChanges | None = None
    if record.changes is not None and record.op == "u" and current is not None:
        merged = _overlay(current.attributes, record)
        if record.added is not None or record.removed is not None:
            values = _value_changes(record, current, merged, dn_valued)
        image = merged
    elif record.added:
        for name, added in record.added.items():
            image[name] = list(dict.fromkeys(added))
    image = {k: v for k, v in image.items() if v}
    if current is None:
        new = _new_object(record, image)
        return Staged("add", None, new, frozenset(image))
    if current.object_type != record.object_type:
        new = _new_object(record, image)
        return Staged("delete-add", current, new, frozenset(image) | frozenset(current.attributes))
    if values is not None:
        # Whole attributes compare as sets; those given by value changed when a value did (no sort of
        # a large group's members to find out).
        by_value = {*(record.added or {}), *(record.removed or {})}
        whole = changed_attributes(_without(current.attributes, by_value), _without(image, by_value))
        changed = whole | frozenset(values)
    else:
        changed = changed_attributes(current.attributes, image)
    renamed = src.dn is not None and dn_key(src.dn) != dn_key(current.dn)
    new = _restaged(current, record, image)
    if renamed:
        # A new DN: whatever it was transient for was the old one (the index says if the new one is taken).
        return Staged("rename", current, replace(new, transient=False), changed, values)
    return Staged("update" if changed else "none", current, new, changed, values)


# --------------------------------------------------------------------------- large attributes, by value
#: From this many values a splittable attribute (``Rules.split_sources``: a group's members) is held
#: apart from the object (``pipeline.split_values_from`` sets it), so a change of one member reads and
#: writes the member's bucket of values, not the group (docs/architecture.md). It goes back inside the
#: object below half of it.
SPLIT_VALUES = 1_000
#: How many buckets (``HeldBucket`` under ``held_bucket_key``) an attribute's held values are spread over,
#: by a hash of their normalized form: about 200 values each at 50,000 members, 4,000 at a million (a
#: changelog record of ~200 KB). A member change reads and writes one; reading the attribute whole reads
#: them all with one prefix scan and decodes each in one call, where one key per value cost 2 us a value.
HELD_BUCKETS = 256

#: attribute -> normalized value (its DN key) -> the value as the connector gave it.
HeldAttrs = dict[str, dict[str, str]]
#: What to write of held values: attribute -> normalized value -> the value, or None to forget it.
HeldWrites = dict[str, dict[str, str | None]]


class HeldValues(Protocol):
    """Where one object's held values are read from (the staging stage's store, the tests' dicts)."""

    def lookup(self, attribute: str, keys: Collection[str]) -> dict[str, str]:
        """The held values of ``attribute`` among ``keys`` (normalized), by key; absent ones left out."""
        ...

    def values(self, attribute: str) -> dict[str, str]:
        """Every held value of ``attribute``, by key."""
        ...


def apply_held(held: HeldAttrs, writes: HeldWrites) -> HeldAttrs:
    """Held values after ``writes`` (a new mapping; an attribute left with none is gone): what a store of
    held values holds once they are written, for the models that keep them in memory."""
    out = {attr: dict(values) for attr, values in held.items()}
    for attr, changes in writes.items():
        values = out.setdefault(attr, {})
        for k, v in changes.items():
            if v is None:
                values.pop(k, None)
            else:
                values[k] = v
        if not values:
            del out[attr]
    return out


def held_prefix(connector: str, anchor: str, attribute: str) -> bytes:
    """Where an object's held values of one attribute are kept: beside the connector space and its
    tombstones, outside both key ranges (this byte sorts before any connector name)."""
    return f"\x02{connector}\x00{anchor}\x00{attribute}\x00".encode()


def held_bucket(key: str) -> int:
    """The bucket of a held value, by its normalized form (a hash that does not change between runs)."""
    return zlib.crc32(key.encode()) % HELD_BUCKETS


def held_bucket_key(connector: str, anchor: str, attribute: str, bucket: int) -> bytes:
    return held_prefix(connector, anchor, attribute) + b"%02x" % bucket


def held_of(cs: CSObject, store: HeldValues) -> HeldAttrs:
    """Every value an object holds outside itself, per split attribute."""
    return {attr: store.values(attr) for attr in sorted(cs.split)}


def hydrate(cs: CSObject, held: HeldAttrs) -> CSObject:
    """The object with its held values back in ``attributes`` (in the order they are held: a
    multi-valued attribute's values have none): what the steps that read an object whole are given."""
    if not cs.split:
        return cs
    attributes = dict(cs.attributes)
    for attr in cs.split:
        values = held.get(attr, {})
        if values:
            attributes[attr] = list(values.values())
    return replace(cs, attributes=attributes, split={})


def _keyed(values: list[str], had: dict[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """Values by their DN key (the first value of a key wins; blank ones refer to nothing), and the keys
    of the values ``had`` does not hold as they are (new, or in another spelling): only those can need
    a write. The keys of values held already are taken from ``had`` instead of parsing the DNs again."""
    if had:
        known = dict(zip(had.values(), had.keys(), strict=True))
        keys: list[str | None] = list(map(known.get, values))
        if None in keys:
            missing = [v for v, k in zip(values, keys, strict=True) if k is None]
            fresh = dn_keys(missing)
            parsed = iter(fresh)
            keys = [k if k is not None else next(parsed) for k in keys]
        else:
            fresh = []
    else:
        keys = list(dn_keys(values))
        fresh = keys  # type: ignore[assignment]  # every key is parsed: no None
    mine = dict(zip(keys, values, strict=True))
    if len(mine) < len(values):
        # A DN twice (in two spellings): the first one stays, in the values' order.
        mine = {}
        for key, value in zip(keys, values, strict=True):
            if key not in mine:
                mine[key] = value
    mine.pop("", None)
    return mine, fresh  # type: ignore[return-value]  # no None key left: every value has its key


def split_object(
    cs: CSObject | None,
    before: HeldAttrs,
    splittable: Collection[str],
    min_values: int | None = None,
) -> tuple[CSObject | None, HeldWrites]:
    """What to store of a whole object (``hydrate``'s form, None when it is gone) that held ``before``:
    the object without its large splittable attributes, and the held values to write. An attribute is
    held from ``min_values`` values (default ``SPLIT_VALUES``), and stays held down to half of it."""
    if cs is not None and cs.split:
        raise ValueError(
            f"split_object needs the whole object, {cs.connector} {cs.anchor} holds values apart"
        )
    least = SPLIT_VALUES if min_values is None else min_values
    writes: HeldWrites = {}
    keep: dict[str, dict[str, str]] = {}
    fresh_keys: dict[str, list[str]] = {}
    if cs is not None:
        for attr in sorted(splittable):
            values = cs.attributes.get(attr)
            need = least // 2 if attr in before else least
            if not values or len(values) < need:
                continue
            mine, fresh = _keyed(values, before.get(attr))
            if len(mine) >= need:
                keep[attr] = mine
                fresh_keys[attr] = fresh
    for attr, had in before.items():
        now = keep.get(attr, {})
        # Gone: a set operation on the keys (C-level over a large group's members); new or respelled: only
        # the values not held as they are.
        changes: dict[str, str | None] = dict.fromkeys(had.keys() - now.keys())
        for k in fresh_keys.get(attr, ()):
            value = now.get(k)
            if value is not None and had.get(k) != value:
                changes[k] = value
        if changes:
            writes[attr] = changes
    for attr, now in keep.items():
        if attr not in before:
            writes[attr] = dict(now)
    if cs is None:
        return None, writes
    if not keep:
        return cs, writes
    attributes = {k: v for k, v in cs.attributes.items() if k not in keep}
    return replace(cs, attributes=attributes, split={a: len(v) for a, v in sorted(keep.items())}), writes


def stage_by_value(
    current: CSObject,
    record: ChangeRecord,
    dn_valued: Collection[str],
    store: HeldValues,
    min_values: int | None = None,
) -> tuple[Staged, HeldWrites] | None:
    """``stage`` for an object with held attributes (``CSObject.split``) and a value-level record that
    changes them value by value: O(values changed), the held values looked up by key in ``store``.
    Gives what ``stage`` gives for the hydrated object (``before`` and ``after`` in stored form, the held
    values to write beside), or None when the record needs the whole object: not a value-level update of
    held attributes alone, a rename, or an attribute left with fewer values than it is held from."""
    src = record.source
    if record.op != "u" or record.changes is None or not current.split:
        return None
    skip = skipped_by(current, record)
    if skip is not None:
        return Staged(skip, current, current), {}
    added, removed = record.added or {}, record.removed or {}
    by_value = {*added, *removed}
    if (
        not by_value
        or not by_value <= current.split.keys()
        or not set(record.changes).isdisjoint(current.split)
    ):
        return None
    if src.dn is not None and dn_key(src.dn) != dn_key(current.dn):
        return None
    if record.object_type != current.object_type:
        return None
    least = (SPLIT_VALUES if min_values is None else min_values) // 2
    image = {k: v for k, v in _overlay(current.attributes, record).items() if v}
    counts = dict(current.split)
    values: ValueChanges = {}
    writes: HeldWrites = {}
    for name in sorted(by_value):
        plus, minus = added.get(name, []), removed.get(name, [])
        dn = name in dn_valued
        plus_keys = dn_keys(plus) if dn else plus
        minus_keys = dn_keys(minus) if dn else minus
        have = store.lookup(name, [k for k in {*plus_keys, *minus_keys} if k])
        gone = {k for k in minus_keys if k and k in have}
        lost = [have[k] for k in dict.fromkeys(k for k in minus_keys if k in gone)]
        present = have.keys() - gone
        gained: list[str] = []
        changes: dict[str, str | None] = dict.fromkeys(gone)
        for value, key in zip(plus, plus_keys, strict=True):
            if key and key not in present:
                present.add(key)
                gained.append(value)
                changes[key] = value
        counts[name] += len(gained) - len(lost)
        if counts[name] < least:
            return None
        if gained or lost:
            values[name] = (gained, lost)
            writes[name] = changes
    whole = changed_attributes(_without(current.attributes, by_value), _without(image, by_value))
    if not whole.isdisjoint(dn_valued):
        return None  # references changed whole too: registered by comparing the whole objects
    changed = whole | frozenset(values)
    new = replace(_restaged(current, record, image), split=counts)
    return Staged("update" if changed else "none", current, new, changed, values), writes


def apply_dn_claim(current: CSObject | None, claim: DnClaim) -> CSObject | None:
    """The DN index's word on whether this object still holds its DN (MIM's transient object). None when
    nothing changes: the object is gone, or it has left that DN since (a rename the index has not seen)."""
    if current is None or not current.dn or dn_key(current.dn) != claim.dn_key:
        return None
    if current.transient == claim.transient:
        return None
    return replace(current, transient=claim.transient)


def tombstone_key(connector: str, anchor: str) -> bytes:
    """Where a deleted object's tombstone is kept: beside the connector space, outside its key range
    (connector-space keys start with the connector name; this byte sorts before any name)."""
    return f"\x01{connector}\x00{anchor}".encode()


def tombstone(deleted: CSObject, version: int, event_id: str, now_ms: int) -> CSObject:
    """What is kept of an object deleted by a change of ``version``: enough to refuse older records."""
    return CSObject(
        connector=deleted.connector,
        anchor=deleted.anchor,
        object_type=deleted.object_type,
        version=version,
        event_id=event_id,
        deleted_ts_ms=now_ms,
    )


def missed_by_run(last_run: str | None, version: int, run_id: str, run_version: int) -> bool:
    """Did a full import (``run_id`` at ``run_version``) miss an object last seen by ``last_run`` at
    ``version``? Not if the run saw it, nor if it changed after the run started (a delta raced the full
    import: newer than the snapshot)."""
    return last_run != run_id and version <= run_version


def stage_absent(current: CSObject, run_id: str, version: int) -> Staged | None:
    """At the end of a full import, an object the run did not see is deleted; None if it was seen."""
    if not missed_by_run(current.last_run, current.version, run_id, version):
        return None
    return Staged("delete", current, None, frozenset(current.attributes))


def apply_link(current: CSObject, mv_id: str | None, outcome: str) -> CSObject:
    """Record the join step's decision on the connector-space object."""
    if outcome in ("joined", "projected"):
        state = (
            current.state if current.state == ConnectorState.EXPLICIT_CONNECTOR else ConnectorState.CONNECTOR
        )
        return replace(current, mv_id=mv_id, state=state)
    if outcome in ("disconnected", "explicitly-disconnected"):
        # Deprovisioned by a disconnect action: a disconnector (the join rules may join it again at its
        # next change, as in MIM) or an explicit disconnector (never again, until an operator releases it).
        explicit = outcome == "explicitly-disconnected"
        return replace(
            current,
            mv_id=None,
            join_route=None,
            join_routes=[],
            state=ConnectorState.EXPLICIT_DISCONNECTOR if explicit else ConnectorState.DISCONNECTOR,
        )
    # ambiguous: stays a disconnector on its route(s); unlinked: metaverse object gone, route again.
    keep = outcome == "ambiguous"
    return replace(
        current,
        mv_id=None,
        join_route=current.join_route if keep else None,
        join_routes=list(current.join_routes) if keep else [],
        state=ConnectorState.DISCONNECTOR,
    )
