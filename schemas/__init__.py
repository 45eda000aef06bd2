"""Contracts of idsync: change records, connector-space and metaverse objects, pending exports, config.

Every model here is a topic or state contract. Field names are part of the wire format: change them only
with a new ``version``.
"""

from schemas.records import (
    AttrChange,
    Attrs,
    ChangeRecord,
    CSLink,
    ErrorRecord,
    ExportConfirmed,
    ExportResult,
    ImportMessage,
    JoinIndexUpdate,
    JoinMessage,
    JoinRequest,
    MVChange,
    MVContribution,
    MVDisconnect,
    MVInbound,
    PendingExport,
    RunMarker,
    Source,
)
from schemas.state import (
    ConnectorLink,
    ConnectorState,
    CSObject,
    JoinEntry,
    LedgerEntry,
    MVObject,
    TargetState,
)

__all__ = [
    "AttrChange",
    "Attrs",
    "CSLink",
    "CSObject",
    "ChangeRecord",
    "ConnectorLink",
    "ConnectorState",
    "ErrorRecord",
    "ExportConfirmed",
    "ExportResult",
    "ImportMessage",
    "JoinEntry",
    "JoinIndexUpdate",
    "JoinMessage",
    "JoinRequest",
    "LedgerEntry",
    "MVChange",
    "MVContribution",
    "MVDisconnect",
    "MVInbound",
    "MVObject",
    "PendingExport",
    "RunMarker",
    "Source",
    "TargetState",
]
