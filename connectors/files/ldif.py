"""LDIF connector: full import of a content LDIF plus an appended change LDIF, delta import from the change
LDIF by byte-offset watermark, export to a content LDIF holding the full image of exported entries.

Why the change LDIF is replayed over the content LDIF (docs/connectors/files.md, "LDIF delta"): staging
replaces a connector-space object's image with what a delta reports, so a ``modify`` record must become the
entry's full image, not just the changed attributes. Connectors keep no state, so that image cannot live
in the connector between runs; it does not need to: the content LDIF and the change LDIF before the
watermark *are* the state. Every run rebuilds the images by replaying them (a file is read whole anyway),
then reports the records after the watermark as full images and deletes.

The watermark is ``ldif1:<offset>:<hash of the change file up to offset>:<hash of the content file>``:
an appended change file keeps its prefix, so the watermark stays valid; a rewritten (compacted, truncated,
edited) change file or a changed content file no longer matches and the delta raises ``CursorExpired``,
which makes the runtime run a full import instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from connectors.base import (
    Checkpoint,
    ConnectorKind,
    CursorExpired,
    DeletedObject,
    DeltaItem,
    ExportOutcome,
    ImportedObject,
    ImportFailure,
)
from connectors.files.atomic import check_files
from connectors.files.config import LdifConnectorConfig, same_path
from connectors.files.exportfile import ExportFile
from connectors.files.image import Entry, ExportImage
from connectors.files.ldif_format import (
    Chunk,
    LdifError,
    Record,
    boundary,
    chunks,
    is_attribute_name,
    normalize_dn,
    parse_chunk,
    record_line,
    write_entry,
)
from connectors.ldap.dn import dn_key, join_dn, parent_dn, split_dn
from schemas.errors import DataError, FatalError, IdsyncError
from schemas.records import AttrChange, Attrs, PendingExport

_RAW_MAX = 500
#: A delta yields a checkpoint after this many change records (and always at its end).
CHECKPOINT_EVERY = 500
_WATERMARK_PREFIX = "ldif1"


def _get(attrs: Attrs, name: str) -> list[str]:
    """Values of ``name``, matching attribute names case-insensitively as LDAP does."""
    folded = name.casefold()
    for key, values in attrs.items():
        if key.casefold() == folded:
            return values
    return []


def _name_in(attrs: Attrs, name: str) -> str:
    folded = name.casefold()
    return next((k for k in attrs if k.casefold() == folded), name)


def _differ(a: ImportedObject, b: ImportedObject) -> bool:
    return (a.anchor, a.object_type, a.dn, a.attributes) != (b.anchor, b.object_type, b.dn, b.attributes)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Node:
    """One entry as the files describe it. Never mutated: a change makes a new node."""

    dn: str
    attributes: Attrs
    #: The record that last touched it: "people.ldif:12".
    locator: str


#: A change to the tree: the entry before and after (None: absent).
_Touch = tuple[_Node | None, _Node | None]


class _Tree:
    """Entries by normalised DN, changed by LDIF records with LDAP's semantics (values compare exactly;
    adding a present value or deleting an absent one changes nothing)."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}

    def apply(self, record: Record, locator: str) -> list[_Touch]:
        key = normalize_dn(record.dn)
        node = self.nodes.get(key)
        if record.change in ("content", "add"):
            if node is not None:
                raise LdifError(record.line, f"entry {record.dn!r} already exists", "import-existing-object")
            attrs: Attrs = {}
            for name, value in record.attributes:
                values = attrs.setdefault(_name_in(attrs, name), [])
                if value not in values:
                    values.append(value)
            new = _Node(record.dn, attrs, locator)
            self.nodes[key] = new
            return [(None, new)]
        if node is None:
            raise LdifError(
                record.line, f"{record.change} of {record.dn!r}: no such entry", "import-missing-object"
            )
        if record.change == "delete":
            del self.nodes[key]
            return [(node, None)]
        if record.change == "modify":
            new = _Node(node.dn, self._modified(node.attributes, record), locator)
            self.nodes[key] = new
            return [(node, new)]
        return self._moved(key, node, record, locator)

    @staticmethod
    def _modified(current: Attrs, record: Record) -> Attrs:
        attrs = dict(current)
        for mod in record.mods:
            name = _name_in(attrs, mod.attribute)
            have = attrs.get(name, [])
            values = list(dict.fromkeys(mod.values))
            if mod.op == "replace":
                new = values
            elif mod.op == "add":
                new = have + [v for v in values if v not in have]
            elif values:
                new = [v for v in have if v not in values]
            else:
                new = []
            if new:
                attrs[name] = new
            else:
                attrs.pop(name, None)
        return attrs

    def _moved(self, key: str, node: _Node, record: Record, locator: str) -> list[_Touch]:
        assert record.new_rdn is not None
        superior = record.new_superior if record.new_superior is not None else parent_dn(node.dn)
        new_dn = f"{record.new_rdn},{superior}" if superior else record.new_rdn
        new_key = normalize_dn(new_dn)
        if new_key != key and new_key in self.nodes:
            message = f"cannot move {node.dn!r}: {new_dn!r} exists"
            raise LdifError(record.line, message, "import-existing-object")
        attrs = rdn_values(node.dn, new_dn, node.attributes, delete_old=record.delete_old_rdn)
        moved = _Node(new_dn, attrs, locator)
        touched: list[_Touch] = [(node, moved)]
        del self.nodes[key]
        self.nodes[new_key] = moved
        # Entries below move with it (their DNs end with the old DN).
        depth = len(split_dn(node.dn))
        old = dn_key(node.dn)
        suffix = "," + key
        below = [k for k, n in self.nodes.items() if k.endswith(suffix) and dn_key(n.dn)[-depth:] == old]
        for child_key in below:
            child = self.nodes.pop(child_key)
            rdns = split_dn(child.dn)
            child_dn = join_dn(rdns[: len(rdns) - depth]) + "," + new_dn
            new_child = _Node(child_dn, child.attributes, locator)
            self.nodes[normalize_dn(child_dn)] = new_child
            touched.append((child, new_child))
        return touched


def rdn_values(old_dn: str | None, new_dn: str, attrs: Attrs, *, delete_old: bool = True) -> Attrs:
    """``attrs`` of an entry moved from ``old_dn`` to ``new_dn``: the old RDN's values removed (when
    ``delete_old``), the new RDN's values present (RDN values compare case-insensitively)."""
    out = dict(attrs)
    if delete_old and old_dn is not None:
        for ava in split_dn(old_dn)[0]:
            name = _name_in(out, ava.attr)
            kept = [v for v in out.get(name, []) if v.casefold() != ava.value.casefold()]
            if kept:
                out[name] = kept
            else:
                out.pop(name, None)
    return with_rdn_values(new_dn, out)


def with_rdn_values(dn: str, attrs: Attrs) -> Attrs:
    """``attrs`` holding the values of ``dn``'s RDN (an LDAP entry always does)."""
    out = dict(attrs)
    for ava in split_dn(dn)[0]:
        name = _name_in(out, ava.attr)
        have = out.get(name, [])
        if ava.value.casefold() not in {v.casefold() for v in have}:
            out[name] = [*have, ava.value]
    return out


class LdifConnector:
    """Full import of ``path`` with ``changes_path`` replayed over it (see the module docstring)."""

    def __init__(self, name: str, config: LdifConnectorConfig) -> None:
        self.name = name
        self.config = config
        self._types = {t: oc.casefold() for t, oc in config.object_classes.items()}

    def close(self) -> None:
        """Nothing to release: files are opened and closed by each call."""

    def test_connection(self) -> None:
        """Files to import can be read, the export file's directory written (FatalError ``no-start-*``)."""
        cfg = self.config
        read = [p for p in (cfg.path, cfg.changes_path) if p is not None]
        write = [cfg.export_path] if cfg.export_path is not None else []
        check_files(self.name, read=read, write=write, optional=write)

    # ------------------------------------------------------------------ files
    def _read(self, path: Path | None) -> bytes:
        if path is None:
            return b""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if same_path(path, self.config.export_path):
                return b""  # nothing exported yet
            raise FatalError(f"connector {self.name!r}: cannot read {path}: file not found") from None
        except OSError as exc:
            raise FatalError(f"connector {self.name!r}: cannot read {path}: {exc.strerror or exc}") from None

    @staticmethod
    def _file_name(path: Path | None) -> str:
        return path.name if path is not None else "-"

    def _records(
        self, data: bytes, path: Path | None, *, offset: int = 0, complete_only: bool = False
    ) -> Iterator[tuple[Chunk, Record | ImportFailure | None]]:
        """Each chunk of ``data`` from ``offset`` with its record, or the failure that record is."""
        name = self._file_name(path)
        line = data.count(b"\n", 0, offset) + 1
        for chunk in chunks(data, offset=offset, line=line, complete_only=complete_only):
            try:
                yield chunk, parse_chunk(chunk, first=chunk.start == 0)
            except LdifError as exc:
                yield chunk, self._failure(name, chunk, data, exc)

    def _failure(self, name: str, chunk: Chunk, data: bytes, exc: LdifError) -> ImportFailure:
        raw = data[chunk.start : chunk.end].decode("utf-8", errors="replace").rstrip("\r\n")[:_RAW_MAX]
        return ImportFailure(f"{name}:{record_line(chunk)}", exc.error_type, str(exc), raw)

    def _apply(
        self,
        tree: _Tree,
        chunk: Chunk,
        item: Record | ImportFailure,
        data: bytes,
        path: Path | None,
        *,
        content: bool,
    ) -> list[_Touch] | ImportFailure:
        if isinstance(item, ImportFailure):
            return item
        name = self._file_name(path)
        if content and item.change not in ("content", "add"):
            error = LdifError(item.line, f"changetype {item.change} in a content LDIF (use changes_path)")
            return self._failure(name, chunk, data, error)
        try:
            return tree.apply(item, f"{name}:{item.line}")
        except LdifError as exc:
            return self._failure(name, chunk, data, exc)
        except DataError as exc:  # a DN that cannot be built (modrdn onto a malformed superior)
            return self._failure(name, chunk, data, LdifError(item.line, exc.message))

    def _replay(
        self,
        tree: _Tree,
        data: bytes,
        path: Path | None,
        *,
        content: bool,
        end: int | None = None,
    ) -> Iterator[ImportFailure]:
        """Apply every record of ``data`` (up to ``end``) to ``tree``; yields the failures. A content file
        ends its last record at its end; in an appended change file that record may be half written."""
        view = data if end is None else data[:end]
        for chunk, item in self._records(view, path, complete_only=not content):
            if item is not None:
                result = self._apply(tree, chunk, item, view, path, content=content)
                if isinstance(result, ImportFailure):
                    yield result

    # ------------------------------------------------------------------ objects
    def anchor_of(self, dn: str | None, attrs: Attrs) -> str | None:
        """The anchor attribute's value, else the normalised DN (None without either)."""
        values = _get(attrs, self.config.anchor_attribute)
        if values and values[0].strip():
            return values[0]
        return normalize_dn(dn) if dn else None

    def object_type(self, attrs: Attrs) -> str | None:
        classes = {c.casefold() for c in _get(attrs, "objectClass")}
        return next((t for t, oc in self._types.items() if oc in classes), None)

    def _project(self, node: _Node) -> ImportedObject | ImportFailure | None:
        """The object the connector reports for ``node``; None when out of scope (no configured class)."""
        if not _get(node.attributes, "objectClass"):
            message = f"Entry {node.dn!r} has no objectClass"
            return ImportFailure(node.locator, "import-missing-object-class", message)
        object_type = self.object_type(node.attributes)
        if object_type is None:
            return None
        anchor = self.anchor_of(node.dn, node.attributes)
        assert anchor is not None  # a node always has a DN
        return ImportedObject(anchor, object_type, dict(node.attributes), node.dn, node.locator)

    # ------------------------------------------------------------------ full import
    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        """Every in-scope entry of the content LDIF with the change LDIF applied (complete records only)."""
        tree = _Tree()
        yield from self._replay(tree, self._read(self.config.path), self.config.path, content=True)
        changes = self.config.changes_path
        yield from self._replay(tree, self._read(changes), changes, content=False)
        seen: dict[str, str] = {}
        for node in tree.nodes.values():
            item = self._project(node)
            if isinstance(item, ImportedObject):
                if item.anchor in seen:
                    message = f"duplicate anchor {item.anchor!r}: first seen at {seen[item.anchor]}"
                    yield ImportFailure(node.locator, "import-duplicate-anchor", message)
                    continue
                seen[item.anchor] = node.locator
            if item is not None:
                yield item


class LdifDeltaConnector(LdifConnector):
    """Adds delta import from the appended change LDIF."""

    def _watermark(self, offset: int, prefix: str, base: bytes) -> str:
        return f"{_WATERMARK_PREFIX}:{offset}:{prefix}:{_digest(base)}"

    def current_watermark(self) -> str:
        """The end of the last complete record of the change LDIF (and the content LDIF as it is now)."""
        base = self._read(self.config.path)
        changes = self._read(self.config.changes_path)
        end = boundary(changes)
        return self._watermark(end, _digest(changes[:end]), base)

    def delta_import(self, watermark: str | None) -> Iterator[DeltaItem]:
        """Full images and deletes for the change records after ``watermark``, then a ``Checkpoint``."""
        base = self._read(self.config.path)
        changes = self._read(self.config.changes_path)
        if watermark is None:
            end = boundary(changes)
            yield Checkpoint(self._watermark(end, _digest(changes[:end]), base))
            return
        offset = self._offset_of(watermark, base, changes)
        tree = _Tree()
        for _ in self._replay(tree, base, self.config.path, content=True):
            pass  # failures were reported by the full import
        for _ in self._replay(tree, changes, self.config.changes_path, content=False, end=offset):
            pass
        hasher = hashlib.sha256(changes[:offset])
        hashed = position = offset
        since = 0
        last = ""
        path = self.config.changes_path
        for chunk, item in self._records(changes, path, offset=offset, complete_only=True):
            position = chunk.end
            if item is None:
                continue
            result = self._apply(tree, chunk, item, changes, path, content=False)
            if isinstance(result, ImportFailure):
                yield result
            elif isinstance(item, Record):
                locator = f"{self._file_name(path)}:{item.line}"
                for before, after in result:
                    yield from self._delta_items(before, after, locator)
            since += 1
            if since >= CHECKPOINT_EVERY:
                hasher.update(changes[hashed:position])
                hashed, since = position, 0
                last = self._watermark(position, hasher.hexdigest()[:32], base)
                yield Checkpoint(last)
        hasher.update(changes[hashed:position])
        final = self._watermark(position, hasher.hexdigest()[:32], base)
        if final != last:  # not again right after a periodic checkpoint
            yield Checkpoint(final)

    def _offset_of(self, watermark: str, base: bytes, changes: bytes) -> int:
        """The offset of a watermark that still fits the files; ``CursorExpired`` otherwise."""
        parts = watermark.split(":")
        if len(parts) != 4 or parts[0] != _WATERMARK_PREFIX or not parts[1].isdigit():
            raise CursorExpired(
                f"connector {self.name!r}: watermark {watermark[:80]!r} is not an LDIF watermark"
            )
        offset, prefix, base_digest = int(parts[1]), parts[2], parts[3]
        if base_digest != _digest(base):
            raise CursorExpired(
                f"connector {self.name!r}: the content LDIF {self.config.path} changed since the watermark"
            )
        if offset > len(changes) or _digest(changes[:offset]) != prefix:
            raise CursorExpired(
                f"connector {self.name!r}: the change LDIF {self.config.changes_path} was rewritten "
                "(it no longer starts with what the watermark covered)"
            )
        return offset

    def _delta_items(self, before: _Node | None, after: _Node | None, locator: str) -> Iterator[DeltaItem]:
        old = self._project(before) if before is not None else None
        new = self._project(after) if after is not None else None
        old_obj = old if isinstance(old, ImportedObject) else None
        if old_obj is not None and (not isinstance(new, ImportedObject) or new.anchor != old_obj.anchor):
            yield DeletedObject(old_obj.anchor, old_obj.object_type, old_obj.dn, locator)
        if isinstance(new, ImportFailure):
            yield new
        elif isinstance(new, ImportedObject) and (old_obj is None or _differ(old_obj, new)):
            yield replace(new, locator=locator)


class LdifExportConnector(LdifConnector):
    """Adds export (and batch export) to ``export_path``: a content LDIF holding every exported entry."""

    def __init__(self, name: str, config: LdifConnectorConfig) -> None:
        super().__init__(name, config)
        if config.export_path is None:
            raise FatalError(f"connector {name!r}: export needs export_path")
        self._file = ExportFile(
            name, config.export_path, load=self._load, dump=self._dump, prepare=self._prepare
        )

    def apply(self, export: PendingExport) -> ExportOutcome:
        """Apply one export to the image and write the file (see connectors.files.image for semantics)."""
        return self._file.apply_one(export)

    def apply_batch(self, exports: list[PendingExport]) -> list[ExportOutcome | IdsyncError]:
        """Apply a batch and write the file once."""
        return self._file.apply(exports)

    def _new_image(self, entries: list[Entry]) -> ExportImage:
        return ExportImage(
            entries,
            anchor_of=self.anchor_of,
            dn_key=normalize_dn,
            fold_names=True,
            check=self._check_entry,
            on_rename=lambda old, new, attrs: rdn_values(old, new, attrs),
        )

    def _load(self, data: bytes) -> ExportImage:
        path = self.config.export_path
        tree = _Tree()
        for failure in self._replay(tree, data, path, content=True):
            raise FatalError(
                f"connector {self.name!r}: export file {path} cannot be read back ({failure.locator}: "
                f"{failure.message}); fix or move it"
            )
        entries: list[Entry] = []
        for node in tree.nodes.values():
            anchor = self.anchor_of(node.dn, node.attributes)
            assert anchor is not None
            entries.append(Entry(anchor, node.dn, node.attributes))
        try:
            return self._new_image(entries)
        except DataError as exc:
            raise FatalError(f"connector {self.name!r}: export file {path}: {exc.message}") from None

    def _prepare(self, export: PendingExport) -> PendingExport:
        """Checks the object type; an add gets its type's object class when it lacks it."""
        object_class = self.config.object_classes.get(export.object_type)
        if object_class is None:
            known = ", ".join(self.config.object_classes)
            raise DataError(
                f"Cannot export {export.dn!r}: object type {export.object_type!r} is not one of {known}",
                error_type="schema-violation",
            )
        if export.op == "add" and not export.dn.strip():
            raise DataError("Cannot add an entry without a DN", error_type="invalid-dn")
        for dn in (export.dn, export.new_dn):
            if dn:
                normalize_dn(dn)  # a malformed DN is an invalid-dn DataError before anything changes
        if export.op != "add":
            return export
        name = next((k for k in export.attributes if k.casefold() == "objectclass"), "objectClass")
        change = export.attributes.get(name)
        have = change.values if change is not None else []
        if object_class.casefold() in {v.casefold() for v in have}:
            return export
        attributes = dict(export.attributes)
        attributes[name] = AttrChange(op="replace", values=[*have, object_class])
        return export.model_copy(update={"attributes": attributes})

    def _check_entry(self, entry: Entry) -> Entry:
        for name in entry.attributes:
            if not is_attribute_name(name):
                raise DataError(
                    f"Cannot export {entry.dn!r}: {name!r} is not an LDAP attribute name",
                    error_type="schema-violation",
                )
        assert entry.dn is not None
        return replace(entry, attributes=with_rdn_values(entry.dn, entry.attributes))

    @staticmethod
    def _dump(image: ExportImage, out: BinaryIO) -> None:
        out.write(b"version: 1\n\n")
        for entry in image.entries():
            assert entry.dn is not None
            names = sorted(entry.attributes, key=lambda n: (n.casefold() != "objectclass", n.casefold()))
            write_entry(out, entry.dn, ((n, entry.attributes[n]) for n in names))


class LdifDeltaExportConnector(LdifDeltaConnector, LdifExportConnector):
    """Delta import and export."""


def open_ldif(name: str, config: LdifConnectorConfig) -> LdifConnector:
    """The LDIF connector with the capabilities its config enables (delta: changes_path; export:
    export_path), so that ``capabilities()`` reports what it can really do."""
    delta = config.changes_path is not None
    export = config.export_path is not None
    cls: type[LdifConnector]
    if delta and export:
        cls = LdifDeltaExportConnector
    elif delta:
        cls = LdifDeltaConnector
    elif export:
        cls = LdifExportConnector
    else:
        cls = LdifConnector
    return cls(name, config)


KIND = ConnectorKind(
    LdifConnectorConfig,
    open_ldif,
    "LDIF files (RFC 2849): full import, delta from an appended change LDIF, export",
)
