"""The connector protocol: one small protocol per capability (ConnId style).

Connector methods are blocking (ldap3, file I/O, SQL drivers); the streams runtime calls them in a
thread, never on the event loop. A connector never talks to Kafka and never imports ``engine``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from schemas.errors import DataError, FatalError, RetriableError
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
class Export(Protocol):
    """Applies one pending export, idempotently: a re-delivered export has one effect.

    Raises ``RetriableError`` (server down: retry), ``DataError`` (this object: report, go on) or
    ``FatalError`` (credentials, config: stop), each with a MIM error type.
    """

    def apply(self, export: PendingExport) -> ExportOutcome: ...


@runtime_checkable
class ConnectionCheck(Protocol):
    """Checks that the connected system is reachable with the configured credentials."""

    def test_connection(self) -> None: ...


__all__ = [
    "ConnectionCheck",
    "Connector",
    "DataError",
    "Export",
    "ExportOutcome",
    "FatalError",
    "FullImport",
    "ImportFailure",
    "ImportedObject",
    "RetriableError",
]
