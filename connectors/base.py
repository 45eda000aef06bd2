"""The connector protocol: one small protocol per capability (ConnId style).

Connector methods are blocking (ldap3, file I/O, SQL drivers); the streams runtime calls them in a
thread, never on the event loop. A connector never talks to Kafka and never imports ``engine``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import SecretStr

from schemas.config import ConnectorConfigBase
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import Attrs, PendingExport


@dataclass(frozen=True, slots=True)
class ImportedObject:
    """One object as read from the connected system."""

    anchor: str
    object_type: str
    attributes: Attrs
    dn: str | None = None
    #: Where a human finds it: "hr.csv:42" or the DN.
    locator: str | None = None


@dataclass(frozen=True, slots=True)
class ImportFailure:
    """An object that could not be read (malformed row, undecodable entry): reported, the run goes on."""

    locator: str
    error_type: str
    message: str
    raw: str | None = None


@dataclass(frozen=True, slots=True)
class DeletedObject:
    """A delete seen by a delta import or follow (never inferred from absence: that is the full import's job).

    ``anchor`` may be unknown when the system only reports the DN of what it deleted; staging then matches
    by DN.
    """

    anchor: str | None
    object_type: str
    dn: str | None = None
    locator: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything yielded before this is complete: a run resumed from ``watermark`` misses nothing."""

    watermark: str


#: What a delta import or a follow yields: full images of changed objects, deletes, failures, checkpoints.
DeltaItem = ImportedObject | DeletedObject | ImportFailure | Checkpoint


class CursorExpired(IdsyncError):
    """The stored watermark is no longer valid (changelog purged, sync cookie too old): the runtime runs a
    full refresh, deriving deletes from what is present, then resumes deltas from
    ``DeltaImport.current_watermark()`` taken before the refresh."""

    error_type = "cursor-expired"


@dataclass(frozen=True, slots=True)
class AttributeSchema:
    name: str
    syntax: Literal["string", "integer", "boolean", "binary", "reference", "datetime"] = "string"
    multi_valued: bool = False
    required: bool = False


@dataclass(frozen=True, slots=True)
class ObjectTypeSchema:
    name: str
    attributes: tuple[AttributeSchema, ...]
    anchor: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectorSchema:
    """What a connected system offers: its object types and their attributes."""

    object_types: tuple[ObjectTypeSchema, ...]

    def object_type(self, name: str) -> ObjectTypeSchema | None:
        return next((t for t in self.object_types if t.name == name), None)


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    """What the connected system now holds for an applied export."""

    anchor: str | None
    dn: str | None
    #: A MIM special action taken on the way ("converted-add-to-update", "created-parent", ...).
    actions: tuple[str, ...] = field(default=())


@runtime_checkable
class Connector(Protocol):
    """Every connector: a name and resources to release."""

    name: str

    def close(self) -> None: ...


@runtime_checkable
class FullImport(Protocol):
    """Reads every object in scope; the runtime brackets the run and infers deletes from absence."""

    def full_import(self) -> Iterator[ImportedObject | ImportFailure]: ...


@runtime_checkable
class DeltaImport(Protocol):
    """Changes since a watermark (``None``: from now). Yields ``Checkpoint``s; the runtime stores the last one
    after the records before it are published, so a resumed run misses nothing (it may see a change twice,
    which staging drops as a duplicate or stale record). Raises ``CursorExpired`` when the watermark is gone.
    """

    def current_watermark(self) -> str:
        """Where a delta would start now (taken before a full import, to resume after it)."""
        ...

    def delta_import(self, watermark: str | None) -> Iterator[DeltaItem]: ...


@runtime_checkable
class Follow(Protocol):
    """Near-real-time changes: like ``delta_import`` but blocks for new changes until ``stop`` is set.

    The connector must notice ``stop`` within about a second and return; it never polls on an interval
    when the system can push (RFC 4533 refreshAndPersist, database notifications).
    """

    def follow(self, watermark: str | None, stop: threading.Event) -> Iterator[DeltaItem]: ...


@runtime_checkable
class SchemaDiscovery(Protocol):
    def discover_schema(self) -> ConnectorSchema: ...


@runtime_checkable
class PasswordSet(Protocol):
    """Sets a password on an object of the connected system (the secret never leaves this call)."""

    def set_password(self, anchor: str, dn: str | None, password: SecretStr) -> None: ...


@runtime_checkable
class Export(Protocol):
    """Applies one pending export, idempotently: a re-delivered export has one effect.

    Raises ``RetriableError`` (server down: retry), ``DataError`` (this object: report, go on) or
    ``FatalError`` (credentials, config: stop), each with a MIM error type.
    """

    def apply(self, export: PendingExport) -> ExportOutcome: ...


@runtime_checkable
class BatchExport(Protocol):
    """Optional, next to ``Export``: applies a batch at once (a file written once per batch, a bulk SQL
    statement). Returns one result per export, in order: its outcome, or the error that export hit (the
    others still apply). Each export keeps ``apply``'s idempotency contract."""

    def apply_batch(self, exports: list[PendingExport]) -> list[ExportOutcome | IdsyncError]: ...


@runtime_checkable
class ConnectionCheck(Protocol):
    """Checks that the connected system is reachable with the configured credentials."""

    def test_connection(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectorKind:
    """A connector kind as registered under the ``idsync.connectors`` entry point group.

    The entry point's name is the kind; its object is a ``ConnectorKind``. ``factory(name, config)`` builds
    a connector from a validated instance of ``config_model``.
    """

    config_model: type[ConnectorConfigBase]
    factory: Callable[[str, Any], Connector]
    description: str = ""


CAPABILITIES: dict[str, type] = {
    "full-import": FullImport,
    "delta-import": DeltaImport,
    "follow": Follow,
    "export": Export,
    "batch-export": BatchExport,
    "schema": SchemaDiscovery,
    "test-connection": ConnectionCheck,
    "password-set": PasswordSet,
}


def capabilities(connector: object) -> list[str]:
    """The capability names a connector implements (shown by ``idsync connectors``)."""
    return [name for name, proto in CAPABILITIES.items() if isinstance(connector, proto)]


__all__ = [
    "CAPABILITIES",
    "AttributeSchema",
    "BatchExport",
    "Checkpoint",
    "ConnectionCheck",
    "Connector",
    "ConnectorKind",
    "ConnectorSchema",
    "CursorExpired",
    "DataError",
    "DeletedObject",
    "DeltaImport",
    "DeltaItem",
    "Export",
    "ExportOutcome",
    "FatalError",
    "Follow",
    "FullImport",
    "ImportFailure",
    "ImportedObject",
    "ObjectTypeSchema",
    "PasswordSet",
    "RetriableError",
    "SchemaDiscovery",
    "capabilities",
]
