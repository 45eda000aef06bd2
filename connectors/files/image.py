"""The full image of an export file (MIM file MA style) and how pending exports change it.

A file connector's export file always holds the whole current set of exported objects. The connector keeps
that set in memory as an :class:`ExportImage` (loaded from the file), applies each pending export to it and
writes the whole file back atomically. The file format (CSV, LDIF) is the connector's business; this module
only knows entries, anchors, DNs and the export contract of ``connectors.base.Export``:

- add: creates the entry; an entry that already exists (same anchor, or same DN) is updated to hold the
  add's values instead (MIM "converted-add-to-update"), so a re-delivered add has one effect;
- update: value-level changes (replace / add / delete values); a missing entry is ``cd-missing-object``;
- rename: moves the entry to ``new_dn`` (and applies the export's attribute changes);
- delete: removes the entry; a missing entry is a success ("already-deleted").

Values compare exactly (a file has no matching rules); attribute names compare case-insensitively when the
format says so (LDIF), exactly otherwise (CSV columns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from connectors.base import ExportOutcome
from schemas.errors import DataError
from schemas.records import AttrChange, Attrs, PendingExport


@dataclass(frozen=True, slots=True)
class Entry:
    """One exported object: its anchor, its DN (None when the format keeps none) and its values."""

    anchor: str
    dn: str | None
    #: Never holds an empty list: no value is no attribute.
    attributes: Attrs


#: The anchor an entry with this DN and these values has (None: it cannot be anchored).
AnchorOf = Callable[[str | None, Attrs], str | None]
#: Checks (and may normalise) an entry before it is stored; raises ``DataError`` when the format cannot
#: hold it (a value with no column, two values in a single-valued column, ...).
Check = Callable[[Entry], Entry]
#: Adjusts the values of an entry moved from the first DN to the second (LDIF drops the old RDN values).
OnRename = Callable[[str | None, str, Attrs], Attrs]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ExportImage:
    """Entries by anchor, with a DN index when the format keeps DNs (``dn_key`` given)."""

    def __init__(
        self,
        entries: Iterable[Entry],
        *,
        anchor_of: AnchorOf,
        dn_key: Callable[[str], str] | None,
        fold_names: bool,
        check: Check | None = None,
        on_rename: OnRename | None = None,
        no_dn_hint: str = "",
    ) -> None:
        self._anchor_of = anchor_of
        self._dn_key = dn_key
        self._fold = fold_names
        self._check = check
        self._on_rename = on_rename
        self._no_dn_hint = no_dn_hint
        self._by_anchor: dict[str, Entry] = {}
        self._by_dn: dict[str, str] = {}
        for entry in entries:
            if entry.anchor in self._by_anchor:
                raise DataError(
                    f"two objects have the anchor {entry.anchor!r}", error_type="duplicate-anchor"
                )
            self._store(entry)

    # ------------------------------------------------------------------ access
    def copy(self) -> ExportImage:
        """An independent image (entries are immutable, so copying the indexes is enough)."""
        new = ExportImage.__new__(ExportImage)
        new._anchor_of, new._dn_key, new._fold = self._anchor_of, self._dn_key, self._fold
        new._check, new._on_rename, new._no_dn_hint = self._check, self._on_rename, self._no_dn_hint
        new._by_anchor = dict(self._by_anchor)
        new._by_dn = dict(self._by_dn)
        return new

    def entries(self) -> list[Entry]:
        """Every entry, sorted by anchor (so the file diffs cleanly from one write to the next)."""
        return [self._by_anchor[a] for a in sorted(self._by_anchor)]

    def get(self, anchor: str) -> Entry | None:
        return self._by_anchor.get(anchor)

    def __len__(self) -> int:
        return len(self._by_anchor)

    def _at_dn(self, dn: str | None) -> Entry | None:
        if not dn or self._dn_key is None:
            return None
        anchor = self._by_dn.get(self._dn_key(dn))
        return None if anchor is None else self._by_anchor[anchor]

    def _store(self, entry: Entry) -> None:
        self._by_anchor[entry.anchor] = entry
        if entry.dn and self._dn_key is not None:
            self._by_dn[self._dn_key(entry.dn)] = entry.anchor

    def _remove(self, entry: Entry) -> None:
        del self._by_anchor[entry.anchor]
        if entry.dn and self._dn_key is not None:
            self._by_dn.pop(self._dn_key(entry.dn), None)

    def _checked(self, entry: Entry) -> Entry:
        return self._check(entry) if self._check is not None else entry

    # ------------------------------------------------------------------ applying exports
    def apply(self, export: PendingExport) -> ExportOutcome:
        """Apply one pending export to the image; on ``DataError`` the image is unchanged."""
        if export.op == "add":
            return self._add(export)
        if export.op == "delete":
            return self._delete(export)
        entry = self._locate(export)
        if entry is None and export.op == "rename" and not export.anchor:
            # A re-delivered rename located by DN: the first delivery already moved it.
            entry = self._at_dn(export.new_dn)
        if entry is None:
            raise self._missing(export)
        if export.op == "rename":
            return self._rename(entry, export)
        return self._update(entry, export)

    def _locate(self, export: PendingExport) -> Entry | None:
        # The anchor wins: the DN may be stale (renamed since), the anchor never is.
        if export.anchor:
            return self._by_anchor.get(export.anchor)
        if self._dn_key is None:
            raise DataError(
                f"Cannot {export.op} {export.dn!r}: the export carries no anchor and the export file keeps "
                f"no DN to find it by{self._no_dn_hint}",
                error_type="cd-missing-object",
            )
        return self._at_dn(export.dn)

    @staticmethod
    def _missing(export: PendingExport) -> DataError:
        by = f"anchor {export.anchor!r}" if export.anchor else "DN"
        return DataError(
            f"Cannot {export.op} {export.dn!r}: no object with this {by} in the export file",
            error_type="cd-missing-object",
        )

    def _add(self, export: PendingExport) -> ExportOutcome:
        values = {name: _unique(ch.values) for name, ch in export.attributes.items() if ch.values}
        dn = (export.dn or None) if self._dn_key is not None else None
        anchor = self._anchor_of(dn, values)
        if anchor is None:
            raise DataError(
                f"Cannot add {export.dn!r}: it has no value for the anchor attribute",
                error_type="schema-violation",
            )
        existing = self._by_anchor.get(anchor)
        occupant = self._at_dn(dn)
        if occupant is not None and occupant is not existing:
            raise DataError(
                f"Cannot add {export.dn!r} (anchor {anchor!r}): the DN is held by the object with anchor "
                f"{occupant.anchor!r}",
                error_type="cd-existing-object",
            )
        if existing is None:
            entry = self._checked(Entry(anchor=anchor, dn=dn, attributes=values))
            self._store(entry)
            return ExportOutcome(anchor=entry.anchor, dn=entry.dn)
        # MIM "existing object: convert add to update": hold the add's values; an add never removes.
        as_set = {name: AttrChange(op="replace", values=v) for name, v in values.items()}
        merged = self._overlay(existing.attributes, as_set)
        entry = self._checked(replace(existing, attributes=merged))
        self._swap(existing, entry)
        return ExportOutcome(anchor=entry.anchor, dn=entry.dn, actions=("converted-add-to-update",))

    def _update(self, entry: Entry, export: PendingExport) -> ExportOutcome:
        attributes = self._overlay(entry.attributes, export.attributes)
        if self._anchor_of(entry.dn, attributes) != entry.anchor:
            raise DataError(
                f"Cannot update {entry.dn or entry.anchor!r}: the update would change its anchor "
                f"{entry.anchor!r}",
                error_type="constraint-violation",
            )
        new = self._checked(replace(entry, attributes=attributes))
        self._swap(entry, new)
        return ExportOutcome(anchor=new.anchor, dn=new.dn)

    def _rename(self, entry: Entry, export: PendingExport) -> ExportOutcome:
        new_dn = export.new_dn
        if not new_dn:
            raise DataError(f"Rename of {export.dn!r} has no new DN", error_type="rename-missing-new-dn")
        if self._dn_key is None:
            # The format keeps no DN: a rename is only its attribute changes.
            return self._update(entry, export)
        occupant = self._at_dn(new_dn)
        if occupant is not None and occupant is not entry:
            raise DataError(
                f"Cannot rename {entry.dn!r} to {new_dn!r}: another object already has that DN",
                error_type="rename-to-existing-dn",
            )
        attributes = dict(entry.attributes)
        moves = entry.dn is None or self._dn_key(entry.dn) != self._dn_key(new_dn)
        if self._on_rename is not None and moves:
            attributes = self._on_rename(entry.dn, new_dn, attributes)
        attributes = self._overlay(attributes, export.attributes)
        anchor = self._anchor_of(new_dn, attributes)
        if anchor is None:
            raise DataError(
                f"Cannot rename {entry.dn!r}: it would lose its anchor", error_type="schema-violation"
            )
        if anchor != entry.anchor and anchor in self._by_anchor:
            raise DataError(
                f"Cannot rename {entry.dn!r} to {new_dn!r}: its new anchor {anchor!r} is taken",
                error_type="rename-to-existing-dn",
            )
        new = self._checked(Entry(anchor=anchor, dn=new_dn, attributes=attributes))
        self._swap(entry, new)
        return ExportOutcome(anchor=new.anchor, dn=new.dn)

    def _delete(self, export: PendingExport) -> ExportOutcome:
        entry = self._locate(export)
        if entry is None:
            return ExportOutcome(anchor=export.anchor, dn=export.dn, actions=("already-deleted",))
        self._remove(entry)
        return ExportOutcome(anchor=entry.anchor, dn=entry.dn)

    def _swap(self, old: Entry, new: Entry) -> None:
        self._remove(old)
        self._store(new)

    # ------------------------------------------------------------------ values
    def _name(self, attrs: Mapping[str, list[str]], name: str) -> str:
        """The spelling ``attrs`` already uses for ``name`` (LDIF names are case-insensitive)."""
        if name in attrs or not self._fold:
            return name
        folded = name.casefold()
        return next((k for k in attrs if k.casefold() == folded), name)

    def _overlay(self, current: Attrs, changes: Mapping[str, AttrChange]) -> Attrs:
        """``current`` with value-level ``changes`` applied; attributes left without a value are dropped."""
        out = dict(current)
        for raw_name, change in changes.items():
            name = self._name(out, raw_name)
            have = out.get(name, [])
            values = _unique(change.values)
            if change.op == "replace":
                new = values
            elif change.op == "add":
                new = have + [v for v in values if v not in have]
            elif not values:
                new = []  # delete with no values: the whole attribute
            else:
                gone = set(values)
                new = [v for v in have if v not in gone]
            if new:
                out[name] = new
            else:
                out.pop(name, None)
        return out
