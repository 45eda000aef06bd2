"""Example third-party idsync connector (``kind: jsondir``), the one docs/connectors.md walks through.

The connected system is deliberately small so the connector is all there is to read: a directory holding
one JSON file per person (``objects/<id>.json``) and a journal (``journal.jsonl``) to which every change
is appended, the way a database keeps a change log. ``JsonDirStore`` plays the system's client library;
``JsonDirConnector`` is the connector: full import, delta import from the journal, idempotent export and
a connection check. The conformance suite runs against it (tests/conformance/test_example_connector.py),
so this file cannot drift from what idsync expects.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

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
from schemas.config import ConnectorConfigBase
from schemas.errors import DataError, RetriableError
from schemas.records import Attrs, PendingExport


# ============================================================================ the connected system
class JsonDirStore:
    """The system's "client library": people as JSON files, every change journalled."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.journal_path = root / "journal.jsonl"

    def create_layout(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.journal_path.touch()

    def reachable(self) -> bool:
        return self.objects.is_dir() and self.journal_path.is_file()

    def get(self, anchor: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.objects / f"{anchor}.json").read_text("utf-8"))
        except FileNotFoundError:
            return None
        return data

    def put(self, anchor: str, person: dict[str, Any]) -> None:
        tmp = self.objects / f".{anchor}.tmp"
        tmp.write_text(json.dumps(person, sort_keys=True), "utf-8")
        os.replace(tmp, self.objects / f"{anchor}.json")  # atomic: a reader never sees half a file
        self._journal("put", anchor)

    def remove(self, anchor: str) -> bool:
        try:
            (self.objects / f"{anchor}.json").unlink()
        except FileNotFoundError:
            return False
        self._journal("remove", anchor)
        return True

    def anchors(self) -> list[str]:
        return sorted(p.stem for p in self.objects.glob("*.json"))

    def find(self, login: str) -> str | None:
        return next((a for a in self.anchors() if (self.get(a) or {}).get("login") == login), None)

    def journal(self) -> list[str]:
        """Every journal line; line n (1-based) is change number n."""
        return self.journal_path.read_text("utf-8").splitlines()

    def _journal(self, op: str, anchor: str) -> None:
        with self.journal_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"op": op, "anchor": anchor}) + "\n")


# ============================================================================ the connector
class JsonDirConfig(ConnectorConfigBase):
    """``kind: jsondir``. Validated when the configuration file loads; errors name the field."""

    kind: Literal["jsondir"]
    root: Path
    object_type: str = "person"
    #: A delta import emits a Checkpoint after this many journal entries (and at its end).
    checkpoint_every: int = Field(default=100, ge=1)


def _attributes(person: dict[str, Any]) -> Attrs:
    """Attributes are ``dict[str, list[str]]``; an attribute without values is left out."""
    out: Attrs = {}
    for name, value in person.items():
        values = value if isinstance(value, list) else [value]
        texts = [v if isinstance(v, str) else json.dumps(v) for v in values if v is not None]
        if texts:
            out[name] = texts
    return out


class JsonDirConnector:
    """FullImport, DeltaImport, Export and ConnectionCheck: it implements their methods, nothing more."""

    def __init__(self, name: str, config: JsonDirConfig) -> None:
        self.name = name
        self.config = config
        self.store = JsonDirStore(config.root)

    def close(self) -> None:
        """Nothing held open between calls."""

    # ------------------------------------------------------------------ ConnectionCheck
    def test_connection(self) -> None:
        if not self.store.reachable():
            # Like a server that is down: retriable, and `no-start-*` because no run could start.
            raise RetriableError(
                f"connector {self.name!r}: {self.config.root} holds no objects/ and journal.jsonl "
                "(not mounted?)",
                error_type="no-start-connection",
            )

    # ------------------------------------------------------------------ FullImport
    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        self.test_connection()
        for anchor in self.store.anchors():
            item = self._read(anchor)
            if item is not None:
                yield item

    def _read(self, anchor: str) -> ImportedObject | ImportFailure | None:
        locator = f"objects/{anchor}.json"
        try:
            person = self.store.get(anchor)
        except (ValueError, UnicodeDecodeError) as exc:
            # One bad object is reported and the run goes on; it never stops the import.
            return ImportFailure(locator, "import-malformed-object", f"{locator}: not JSON: {exc}")
        if person is None:
            return None
        if not isinstance(person, dict):
            return ImportFailure(locator, "import-malformed-object", f"{locator}: not a JSON object")
        return ImportedObject(anchor, self.config.object_type, _attributes(person), None, locator)

    # ------------------------------------------------------------------ DeltaImport
    def current_watermark(self) -> str:
        self.test_connection()
        return f"jsondir1:{len(self.store.journal())}"

    def delta_import(self, watermark: str | None) -> Iterator[DeltaItem]:
        self.test_connection()
        lines = self.store.journal()
        done = len(lines) if watermark is None else self._position(watermark, len(lines))
        for number in range(done + 1, len(lines) + 1):
            entry = json.loads(lines[number - 1])
            anchor = entry["anchor"]
            if entry["op"] == "remove":
                yield DeletedObject(anchor, self.config.object_type, locator=f"journal.jsonl:{number}")
            else:
                # The journal says what changed; the object file holds its current full image. An
                # object removed later is skipped here, its own "remove" entry follows.
                item = self._read(anchor)
                if item is not None:
                    yield item
            if number % self.config.checkpoint_every == 0:
                yield Checkpoint(f"jsondir1:{number}")
        # Always end with a checkpoint: the runtime stores it once everything before it is published.
        yield Checkpoint(f"jsondir1:{len(lines)}")

    @staticmethod
    def _position(watermark: str, length: int) -> int:
        prefix, _, number = watermark.partition(":")
        if prefix != "jsondir1" or not number.isdigit():
            raise CursorExpired(f"not a jsondir watermark: {watermark[:40]!r}")
        if int(number) > length:
            # The journal was truncated or replaced: what happened in between is unknown. The runtime
            # answers CursorExpired with a full import, which finds deletes by absence.
            raise CursorExpired(f"the journal has {length} entries, the watermark is at {number}")
        return int(number)

    # ------------------------------------------------------------------ Export
    def apply(self, export: PendingExport) -> ExportOutcome:
        self.test_connection()
        if export.op == "delete":
            if export.anchor is not None:
                self.store.remove(export.anchor)  # already gone: success, a re-delivery has one effect
            return ExportOutcome(export.anchor, None)
        if export.op == "add":
            login = self._login(export)
            existing = self.store.find(login)
            if existing is not None:
                # A re-delivered add (or an object created meanwhile): MIM's converted-add-to-update.
                self._update(existing, export)
                return ExportOutcome(existing, None, ("converted-add-to-update",))
            anchor = uuid.uuid4().hex
            self.store.put(anchor, self._changed({}, export))
            return ExportOutcome(anchor, None)
        if export.op == "update" and export.anchor is not None:
            self._update(export.anchor, export)
            return ExportOutcome(export.anchor, None)
        raise DataError(f"{export.op} is not supported by jsondir", error_type="export-not-supported")

    def _update(self, anchor: str, export: PendingExport) -> None:
        person = self.store.get(anchor)
        if person is None:
            raise DataError(f"object {anchor} is not in {self.config.root}", error_type="cd-missing-object")
        self.store.put(anchor, self._changed(person, export))

    @staticmethod
    def _login(export: PendingExport) -> str:
        change = export.attributes.get("login")
        if change is None or change.op != "replace" or len(change.values) != 1:
            raise DataError("an add needs exactly one login", error_type="schema-violation")
        return change.values[0]

    @staticmethod
    def _changed(person: dict[str, Any], export: PendingExport) -> dict[str, Any]:
        """Applies replace / add / delete of values; idempotent, so re-applying changes nothing."""
        out = {k: (v if isinstance(v, list) else [v]) for k, v in person.items()}
        for name, change in export.attributes.items():
            current = [str(v) for v in out.get(name, [])]
            if change.op == "replace":
                values = list(change.values)
            elif change.op == "add":
                values = current + [v for v in change.values if v not in current]
            else:
                values = [v for v in current if change.values and v not in change.values]
            out[name] = values
        return {k: v[0] if len(v) == 1 else v for k, v in out.items() if v}


#: What the ``idsync.connectors`` entry point names (pyproject.toml beside this package). The factory is
#: called as ``factory(name, config)`` with a validated ``JsonDirConfig``.
KIND = ConnectorKind(JsonDirConfig, JsonDirConnector, "Example: JSON files with a change journal")
