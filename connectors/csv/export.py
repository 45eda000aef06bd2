"""CSV export: ``export_path`` always holds the full image of exported objects (MIM file MA style).

The connector keeps the image in memory (loaded from the export file), applies each export to it and
writes the whole file atomically, once per ``apply`` and once per ``apply_batch``; rows are sorted by
anchor so that successive files diff cleanly. The header is the anchor column, the ``dn_column`` (if any)
and the mapped ``columns``, in that order.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import BinaryIO

from connectors.base import ExportOutcome, ImportedObject
from connectors.csv.connector import CsvConnector
from connectors.files.exportfile import ExportFile
from connectors.files.image import Entry, ExportImage
from connectors.files.ldif_format import normalize_dn
from schemas.config import CsvConnectorConfig
from schemas.errors import DataError, FatalError, IdsyncError
from schemas.records import Attrs, PendingExport


def _dn_key(dn: str) -> str:
    """DNs compare as LDAP DNs when they are ones; any other text compares as it is (trimmed)."""
    try:
        return normalize_dn(dn)
    except DataError:
        return dn.strip()


class CsvLayout:
    """The columns of the export file and what each holds."""

    def __init__(self, config: CsvConnectorConfig) -> None:
        self.config = config
        attribute_of = {column: attribute for attribute, column in config.columns.items()}
        self.anchor_attribute = attribute_of.get(config.anchor, config.anchor)
        self.header = [config.anchor]
        if config.dn_column is not None:
            self.header.append(config.dn_column)
        self.header += [c for c in config.columns.values() if c != config.anchor]
        #: Column of each attribute the file can hold.
        self.column_of = {attribute_of.get(c, c): c for c in self.header if c != config.dn_column}
        self.multi = set(config.multi_valued)

    def anchor_of(self, dn: str | None, attrs: Attrs) -> str | None:
        """The anchor column's value (stripped, as the import reads it)."""
        values = attrs.get(self.anchor_attribute, [])
        return values[0].strip() or None if values else None

    def check(self, entry: Entry) -> Entry:
        """The entry as the file will hold it; ``DataError`` (schema-violation) for what no cell can hold.

        Blank values are no value; multi-valued cells are trimmed per value (as the import reads them).
        """
        cfg = self.config
        attrs: Attrs = {}
        for name, values in entry.attributes.items():
            column = self.column_of.get(name)
            where = f"Cannot export {entry.dn or entry.anchor!r}"
            if column is None:
                known = ", ".join(sorted(self.column_of))
                raise DataError(
                    f"{where}: attribute {name!r} has no column in the export file (attributes: {known})",
                    error_type="schema-violation",
                )
            if column in self.multi and cfg.multi_value_separator:
                sep = cfg.multi_value_separator
                if any(sep in v for v in values):
                    raise DataError(
                        f"{where}: a value of {name!r} holds the multi-value separator {sep!r}",
                        error_type="schema-violation",
                    )
                kept = list(dict.fromkeys(v.strip() for v in values if v.strip()))
            else:
                kept = [v for v in values if v.strip()]
                if len(kept) > 1:
                    raise DataError(
                        f"{where}: {name!r} gets {len(kept)} values but column {column!r} is single-valued",
                        error_type="schema-violation",
                    )
            if kept:
                attrs[name] = kept
        for text in [entry.dn or "", *(v for vs in attrs.values() for v in vs)]:
            try:
                text.encode(cfg.encoding)
            except UnicodeEncodeError:
                raise DataError(
                    f"Cannot export {entry.dn or entry.anchor!r}: {text[:40]!r} cannot be written as "
                    f"{cfg.encoding}",
                    error_type="schema-violation",
                ) from None
        return replace(entry, attributes=attrs)

    def row(self, entry: Entry) -> list[str]:
        sep = self.config.multi_value_separator or ""
        cells: list[str] = []
        for column in self.header:
            if column == self.config.dn_column:
                cells.append(entry.dn or "")
                continue
            values = entry.attributes.get(self._attribute(column), [])
            cells.append(sep.join(values) if column in self.multi else (values[0] if values else ""))
        return cells

    def _attribute(self, column: str) -> str:
        return next(a for a, c in self.column_of.items() if c == column)

    def dump(self, image: ExportImage, out: BinaryIO) -> None:
        text = io.TextIOWrapper(out, encoding=self.config.encoding, newline="")
        writer = csv.writer(text, delimiter=self.config.delimiter)
        writer.writerow(self.header)
        for entry in image.entries():
            writer.writerow(self.row(entry))
        text.flush()
        text.detach()


class CsvExportConnector(CsvConnector):
    """The CSV connector with Export and BatchExport to ``export_path``."""

    def __init__(self, name: str, config: CsvConnectorConfig) -> None:
        super().__init__(name, config)
        if config.export_path is None:
            raise FatalError(f"connector {name!r}: export needs export_path")
        self.layout = CsvLayout(config)
        self._file = ExportFile(
            name, config.export_path, load=self._load, dump=self.layout.dump, prepare=self._prepare
        )

    def apply(self, export: PendingExport) -> ExportOutcome:
        """Apply one export to the image and write the file (see connectors.files.image for semantics)."""
        return self._file.apply_one(export)

    def apply_batch(self, exports: list[PendingExport]) -> list[ExportOutcome | IdsyncError]:
        """Apply a batch and write the file once."""
        return self._file.apply(exports)

    def _prepare(self, export: PendingExport) -> PendingExport:
        if export.object_type != self.config.object_type:
            raise DataError(
                f"Cannot export {export.dn!r}: object type {export.object_type!r} is not this file's "
                f"{self.config.object_type!r}",
                error_type="schema-violation",
            )
        return export

    def _new_image(self, entries: list[Entry]) -> ExportImage:
        hint = f" (set dn_column in connector {self.name!r})"
        return ExportImage(
            entries,
            anchor_of=self.layout.anchor_of,
            dn_key=_dn_key if self.config.dn_column is not None else None,
            fold_names=False,
            check=self.layout.check,
            no_dn_hint=hint,
        )

    def _load(self, data: bytes) -> ExportImage:
        path = self.config.export_path
        assert path is not None
        if not data:
            return self._new_image([])
        entries: list[Entry] = []
        for item in self.read(io.BytesIO(data), path):
            if not isinstance(item, ImportedObject):
                raise FatalError(
                    f"connector {self.name!r}: export file {path} cannot be read back ({item.locator}: "
                    f"{item.message}); fix or move it"
                )
            attrs = {k: v for k, v in item.attributes.items() if v}
            entries.append(Entry(item.anchor, item.dn, attrs))
        return self._new_image(entries)


def open_csv(name: str, config: CsvConnectorConfig) -> CsvConnector:
    """The CSV connector; with ``export_path`` it also exports (so ``capabilities()`` tells the truth)."""
    if config.export_path is not None:
        return CsvExportConnector(name, config)
    return CsvConnector(name, config)
