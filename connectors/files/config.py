"""Config models of the file connector kinds ``jsonl`` and ``ldif`` (``csv``: schemas.config)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from schemas.config import ConnectorConfigBase


def same_path(a: Path | None, b: Path | None) -> bool:
    """True when both name the same file (whether or not it exists yet)."""
    return a is not None and b is not None and a.resolve() == b.resolve()


def _known_encoding(v: str) -> str:
    try:
        codecs.lookup(v)
    except LookupError:
        raise ValueError(f"unknown encoding {v!r}") from None
    return v


def check_export_path(v: Path | None) -> Path | None:
    """An export file's directory must exist (the file itself is created by the first export)."""
    if v is None:
        return v
    if v.is_dir():
        raise ValueError("is a directory, not a file")
    if not v.parent.is_dir():
        raise ValueError(f"directory {str(v.parent)!r} not found")
    return v


class JsonlConnectorConfig(ConnectorConfigBase):
    """A JSON Lines file: full import, one JSON object per line."""

    kind: Literal["jsonl"]
    path: Path
    #: Field holding the immutable anchor; a nested field by its dotted name (``ids.employee``).
    anchor: str = Field(min_length=1)
    #: Object type of every object, unless ``object_type_field`` is set.
    object_type: str = "person"
    #: Field naming each object's type (a string); an object without it is an import failure.
    object_type_field: str | None = None
    encoding: str = "utf-8"

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError("file not found")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        return _known_encoding(v)


class LdifConnectorConfig(ConnectorConfigBase):
    """LDIF files (RFC 2849): full import of a content LDIF, delta import from an appended change LDIF,
    export to a content LDIF that always holds the full image of exported entries."""

    kind: Literal["ldif"]
    #: Export file (written whole and atomically on every export). Declared before ``path`` so that
    #: ``path`` may name it before it exists (a confirming import of what is exported).
    export_path: Path | None = None
    #: Content LDIF: the snapshot a full import reads.
    path: Path | None = None
    #: Change LDIF, appended to: replayed over ``path`` by full imports, read from a watermark by deltas.
    changes_path: Path | None = None
    #: Attribute holding the anchor; an entry without it is anchored by its normalised DN.
    anchor_attribute: str = "entryUUID"
    #: Object types this connector imports and exports, mapped to their object class.
    object_classes: dict[str, str] = Field(default_factory=lambda: {"person": "inetOrgPerson"})
    #: One writer: the export file is rewritten whole on every export.
    export_connections: Literal[1] = 1

    @field_validator("export_path")
    @classmethod
    def _export_dir(cls, v: Path | None) -> Path | None:
        return check_export_path(v)

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None and not v.is_file() and not same_path(v, info.data.get("export_path")):
            raise ValueError("file not found")
        return v

    @field_validator("changes_path")
    @classmethod
    def _changes_exist(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError("file not found (create it empty if no change was written yet)")
        return v

    @field_validator("object_classes")
    @classmethod
    def _classes(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("name at least one object type and its object class")
        return v

    @model_validator(mode="after")
    def _files(self) -> LdifConnectorConfig:
        if self.path is None and self.changes_path is None:
            raise ValueError("give path (a content LDIF) and/or changes_path (a change LDIF) to import from")
        if same_path(self.changes_path, self.path) or same_path(self.changes_path, self.export_path):
            raise ValueError("changes_path must be a file of its own, not path or export_path")
        return self
