"""JSON Lines connector: full import of a ``.jsonl`` file, one JSON object per line.

Each object becomes attributes by these rules (docs/connectors/files.md):

- a string is one value; a number or boolean is one value as JSON writes it (``42``, ``1.5``, ``true``);
- an array of scalars is a multi-valued attribute (duplicates dropped, ``null`` items skipped);
- a nested object is flattened into dotted names: ``{"address": {"city": "Oslo"}}`` -> ``address.city``;
- an array holding objects or arrays keeps each such item as compact JSON text (sorted keys);
- ``null``, ``[]`` and ``{}`` are no value: the attribute is absent.

A line that is not a JSON object, has no anchor or repeats one is an ``ImportFailure`` located by
``file:line``; the import goes on with the next line.
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from connectors.base import ConnectorKind, ImportedObject, ImportFailure
from connectors.files.atomic import check_files
from connectors.files.config import JsonlConnectorConfig
from connectors.jsonimage import Bad, flatten, reject_constant, single
from schemas.errors import FatalError
from schemas.records import Attrs

_RAW_MAX = 500


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


class JsonlConnector:
    """Reads ``config.path``; one ``ImportedObject`` per object line."""

    def __init__(self, name: str, config: JsonlConnectorConfig) -> None:
        self.name = name
        self.config = config
        encoder = codecs.getincrementalencoder(config.encoding)()
        encoder.encode("a")  # let a BOM-writing codec emit its BOM first
        #: Lines can be split on b"\n" and decoded one by one (false for UTF-16/32).
        self._line_safe = encoder.encode("\n") == b"\n"

    def close(self) -> None:
        """Nothing to release: the file is opened and closed by each import."""

    def test_connection(self) -> None:
        """The file can be read (FatalError ``no-start-file-not-found`` / ``-unreadable`` otherwise)."""
        check_files(self.name, read=[self.config.path], write=[], optional=[])

    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        """One ``ImportedObject`` per object line, an ``ImportFailure`` per bad line; blank lines skipped."""
        path = self.config.path
        try:
            raw = path.open("rb")
        except OSError as exc:
            raise FatalError(f"connector {self.name!r}: cannot read {path}: {exc.strerror or exc}") from exc
        seen: dict[str, int] = {}
        with raw:
            lines = self._lines(raw) if self._line_safe else self._text_lines(raw, path)
            for number, text in lines:
                if text is not None and not text.strip():
                    continue
                yield self._object(path, number, text, seen)

    # ------------------------------------------------------------------ reading
    def _lines(self, raw: BinaryIO) -> Iterator[tuple[int, str | None]]:
        """Decodes each line on its own: an undecodable line is one failure (None), not the end."""
        for number, line in enumerate(raw, start=1):
            try:
                text = line.decode(self.config.encoding)
            except UnicodeDecodeError:
                yield number, None
                continue
            yield number, text.lstrip("\ufeff") if number == 1 else text

    def _text_lines(self, raw: BinaryIO, path: Path) -> Iterator[tuple[int, str | None]]:
        """For encodings whose newline is not b"\\n": a decode error cannot be resynchronised, it is fatal."""
        try:
            text = io.TextIOWrapper(raw, encoding=self.config.encoding, newline="\n")
            for number, line in enumerate(text, start=1):
                yield number, line.lstrip("\ufeff") if number == 1 else line
        except UnicodeDecodeError as exc:
            message = f"connector {self.name!r}: {path}: not valid {self.config.encoding}: {exc}"
            raise FatalError(message) from exc

    def _object(
        self, path: Path, number: int, text: str | None, seen: dict[str, int]
    ) -> ImportedObject | ImportFailure:
        locator = f"{path.name}:{number}"
        if text is None:
            message = f"line holds bytes that are not valid {self.config.encoding}"
            return ImportFailure(locator, "import-decode-error", message)
        raw = text.rstrip("\r\n")[:_RAW_MAX]
        try:
            attributes, anchor, object_type = self._parse(text)
        except Bad as bad:
            return ImportFailure(locator, bad.error_type, bad.message, raw)
        if anchor in seen:
            message = f"duplicate anchor {anchor!r}: first seen on line {seen[anchor]}"
            return ImportFailure(locator, "import-duplicate-anchor", message, raw)
        seen[anchor] = number
        return ImportedObject(anchor=anchor, object_type=object_type, attributes=attributes, locator=locator)

    def _parse(self, text: str) -> tuple[Attrs, str, str]:
        cfg = self.config
        try:
            value = json.loads(text, object_pairs_hook=_pairs, parse_constant=reject_constant)
        except (ValueError, RecursionError) as exc:
            raise Bad("import-malformed-line", f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise Bad("import-malformed-line", f"expected a JSON object, got {type(value).__name__}")
        attributes = flatten(value, "import-malformed-line", "the object")
        anchor = single(attributes, cfg.anchor, "anchor", "import-missing-anchor")
        object_type = cfg.object_type
        if cfg.object_type_field is not None:
            object_type = single(
                attributes, cfg.object_type_field, "object type", "import-missing-object-type"
            )
        return attributes, anchor, object_type


KIND = ConnectorKind(
    JsonlConnectorConfig, JsonlConnector, "JSON Lines file: full import, one object per line"
)
