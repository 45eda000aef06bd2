"""CSV connector: full import of a delimited file (an HR feed), one row per object.

Rows are read leniently: a malformed row becomes an ``ImportFailure`` and the import goes on with the next
row. Only a file that cannot be read at all (missing, no header, no anchor column) is fatal.

The header names the attributes, through the optional mapping ``columns: {attribute: column}``; the
optional ``dn_column`` holds each object's DN. Export (``export_path``) is in ``connectors.csv.export``.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from connectors.base import ImportedObject, ImportFailure
from connectors.files.atomic import check_files
from schemas.config import CsvConnectorConfig
from schemas.errors import FatalError
from schemas.records import Attrs

_RAW_MAX = 500


class CsvConnector:
    """Reads ``config.path`` with the csv module; the header row names the attributes."""

    def __init__(self, name: str, config: CsvConnectorConfig) -> None:
        self.name = name
        self.config = config
        #: Attribute name of each mapped column.
        self._attribute_of = {column: attribute for attribute, column in config.columns.items()}
        if config.multi_valued and not config.multi_value_separator:
            raise FatalError(
                f"connector {name!r}: multi_valued columns {config.multi_valued} need a multi_value_separator"
            )
        try:
            encoder = codecs.getincrementalencoder(config.encoding)()
        except LookupError as exc:
            raise FatalError(f"connector {name!r}: unknown encoding {config.encoding!r}") from exc
        encoder.encode("a")  # let a BOM-writing codec emit its BOM first
        #: Lines can be split on b"\n" and decoded one by one (false for UTF-16/32).
        self._line_safe = encoder.encode("\n") == b"\n"

    def close(self) -> None:
        """Nothing to release: the file is opened and closed by each import."""

    def test_connection(self) -> None:
        """The file can be read and the export file's directory written (FatalError ``no-start-*``)."""
        write = [self.config.export_path] if self.config.export_path is not None else []
        check_files(self.name, read=[self.config.path], write=write, optional=write)

    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        """Yields one ``ImportedObject`` per data row, or an ``ImportFailure`` for a row that is wrong."""
        path = self.config.path
        export = self.config.export_path
        if export is not None and path.resolve() == export.resolve() and not path.exists():
            return  # importing the export file, and nothing was exported yet
        try:
            raw = path.open("rb")
        except OSError as exc:
            raise FatalError(f"connector {self.name!r}: cannot read {path}: {exc.strerror or exc}") from exc
        with raw:
            yield from self.read(raw, path)

    def read(self, raw: BinaryIO, path: Path) -> Iterator[ImportedObject | ImportFailure]:
        """The rows of an open file (``path`` names it in locators and messages)."""
        bad_lines: set[int] = set()
        lines = self._lines(raw, bad_lines) if self._line_safe else self._text_lines(raw, path)
        yield from self._rows(lines, bad_lines, path)

    # ------------------------------------------------------------------ reading
    def _lines(self, raw: BinaryIO, bad_lines: set[int]) -> Iterator[str]:
        """Decodes each physical line on its own: an undecodable line is recorded and replaced, not fatal."""
        for number, line in enumerate(raw, start=1):
            try:
                yield line.decode(self.config.encoding)
            except UnicodeDecodeError:
                bad_lines.add(number)
                yield line.decode(self.config.encoding, errors="replace")

    def _text_lines(self, raw: BinaryIO, path: Path) -> Iterator[str]:
        """For encodings whose newline is not b"\\n": a decode error cannot be resynchronised, it is fatal."""
        try:
            yield from io.TextIOWrapper(raw, encoding=self.config.encoding, newline="")
        except UnicodeDecodeError as exc:
            message = f"connector {self.name!r}: {path}: not valid {self.config.encoding}: {exc}"
            raise FatalError(message) from exc

    def _rows(
        self, lines: Iterable[str], bad_lines: set[int], path: Path
    ) -> Iterator[ImportedObject | ImportFailure]:
        cfg = self.config
        reader = csv.reader(lines, delimiter=cfg.delimiter, strict=True)
        try:
            header_row = next(reader, None)
        except csv.Error as exc:
            raise FatalError(f"connector {self.name!r}: {path}: unreadable header row: {exc}") from exc
        if header_row is None or not any(h.strip() for h in header_row):
            raise FatalError(f"connector {self.name!r}: {path}: no header row")
        if bad_lines:
            raise FatalError(f"connector {self.name!r}: {path}: header row is not valid {cfg.encoding}")
        header = [h.replace("\ufeff", "").strip() for h in header_row]
        named = [h for h in header if h]
        if dupes := sorted({h for h in named if named.count(h) > 1}):
            raise FatalError(f"connector {self.name!r}: {path}: duplicate column(s) {dupes} in the header")
        dn_column = [cfg.dn_column] if cfg.dn_column is not None else []
        for column in (cfg.anchor, *cfg.multi_valued, *dn_column, *cfg.columns.values()):
            if column not in header:
                if column == cfg.anchor:
                    what = "anchor column"
                elif column == cfg.dn_column:
                    what = "dn_column"
                elif column in cfg.multi_valued:
                    what = "multi-valued column"
                else:
                    what = f"column (of attribute {self._attribute_of[column]!r})"
                columns = ", ".join(named)
                raise FatalError(
                    f"connector {self.name!r}: {path}: {what} {column!r} not in the header ({columns})"
                )
        names = [self._attribute_of.get(h, h) if h and h != cfg.dn_column else "" for h in header]
        by_name: dict[str, str] = {}
        for column, attribute in zip(header, names, strict=True):
            if attribute and by_name.setdefault(attribute, column) != column:
                raise FatalError(
                    f"connector {self.name!r}: {path}: columns {by_name[attribute]!r} and {column!r} "
                    f"both give attribute {attribute!r} (see columns)"
                )
        anchor_index = header.index(cfg.anchor)
        dn_index = header.index(cfg.dn_column) if cfg.dn_column is not None else None
        multi = set(cfg.multi_valued)
        seen: dict[str, int] = {}
        last = reader.line_num
        while True:
            error: str | None = None
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # strict mode: stray quote, unclosed quote at end of file, huge field
                row, error = [], f"unparsable row: {exc}"
            start, end, last = last + 1, reader.line_num, reader.line_num
            locator = f"{path.name}:{start}"
            raw = cfg.delimiter.join(row)[:_RAW_MAX] if row else None
            spans = f" (row spans lines {start}-{end}: unbalanced quote?)" if end > start else ""
            if any(n in bad_lines for n in range(start, end + 1)):
                message = f"row holds bytes that are not valid {cfg.encoding}"
                yield ImportFailure(locator, "import-decode-error", message, raw)
                continue
            if error is not None or (row and len(row) != len(header)):
                message = error or f"expected {len(header)} fields, got {len(row)}"
                yield ImportFailure(locator, "import-malformed-row", message + spans, raw)
                continue
            if not row:
                continue  # blank line
            anchor = row[anchor_index].strip()
            if not anchor:
                message = f"empty anchor column {cfg.anchor!r}"
                yield ImportFailure(locator, "import-missing-anchor", message, raw)
                continue
            if anchor in seen:
                message = f"duplicate anchor {anchor!r}: first seen on line {seen[anchor]}"
                yield ImportFailure(locator, "import-duplicate-anchor", message, raw)
                continue
            seen[anchor] = start
            dn = row[dn_index].strip() if dn_index is not None else ""
            yield ImportedObject(
                anchor=anchor,
                object_type=cfg.object_type,
                attributes=self._attributes(header, names, row, multi),
                dn=dn or None,
                locator=locator,
            )

    def _attributes(self, header: list[str], names: list[str], row: list[str], multi: set[str]) -> Attrs:
        """Empty (or blank) cell -> []; a multi-valued cell is split, stripped, de-duplicated."""
        attrs: Attrs = {}
        for column, name, value in zip(header, names, row, strict=True):
            if not name:
                continue
            if column in multi and self.config.multi_value_separator:
                parts = (p.strip() for p in value.split(self.config.multi_value_separator))
                attrs[name] = list(dict.fromkeys(p for p in parts if p))
            else:
                attrs[name] = [value] if value.strip() else []
        return attrs
