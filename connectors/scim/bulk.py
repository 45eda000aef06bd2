"""SCIM Bulk (RFC 7644 §3.7) for ``apply_batch``: operations from pending exports, answers to outcomes.

Pure functions; the connector sends the request and applies on its own (through ``apply``) every export
these functions return None for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from connectors.base import ExportOutcome
from connectors.scim.errors import map_status
from connectors.scim.mapping import ResourceMapping, build_resource, needs_state, plan_patch
from connectors.scim.paths import BULK_REQUEST, PATCH_OP, get_ci
from schemas.errors import DataError, IdsyncError
from schemas.records import PendingExport

BulkOperation = dict[str, Any]
#: Room kept under maxPayloadSize for the request envelope.
ENVELOPE_BYTES = 200


def limits(bulk: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(maxOperations, maxPayloadSize)`` of the ServiceProviderConfig ``bulk`` object; None: no Bulk."""
    if get_ci(bulk, "supported") is not True:
        return None
    max_ops = get_ci(bulk, "maxOperations")
    max_bytes = get_ci(bulk, "maxPayloadSize")
    ops = max_ops if isinstance(max_ops, int) and max_ops > 0 else 0
    size = max_bytes if isinstance(max_bytes, int) and max_bytes > 0 else 1_048_576
    return (ops, size) if ops else None


def operation(
    mapping: ResourceMapping, export: PendingExport, bulk_id: str, *, patch: bool, version: str | None
) -> BulkOperation | None:
    """The Bulk operation of an export, or None when it must go on its own (it needs a read first).

    ``patch``: the server takes PATCH; ``version``: the resource's known ETag (sent as the operation's
    ``version``). Raises IdsyncError for an export that cannot be expressed (the caller applies it alone,
    which reports the error).
    """
    if export.op == "add":
        if mapping.match is not None and not mapping.attribute(mapping.match).unique:
            return None  # a lookup must come before the create (see ScimConnector._existing_for_add)
        body = build_resource(mapping, export.attributes)
        return {"method": "POST", "path": mapping.endpoint, "bulkId": bulk_id, "data": body}
    if not export.anchor:
        return None
    path = f"{mapping.endpoint}/{export.anchor}"
    if export.op == "delete":
        return {"method": "DELETE", "path": path, "bulkId": bulk_id}
    if not patch or not export.attributes:
        return None
    if any(needs_state(mapping.attribute(n), c) for n, c in export.attributes.items()):
        return None
    op: BulkOperation = {
        "method": "PATCH",
        "path": path,
        "bulkId": bulk_id,
        "data": {"schemas": [PATCH_OP], "Operations": plan_patch(mapping, export.attributes, None)},
    }
    if version:
        op["version"] = version
    return op


def size(op: BulkOperation) -> int:
    return len(json.dumps(op)) + 1


def request(ops: list[BulkOperation]) -> dict[str, Any]:
    # No failOnErrors: every operation is tried; their results are independent.
    return {"schemas": [BULK_REQUEST], "Operations": ops}


def answers(body: Any) -> dict[str, dict[str, Any]]:
    """The answered operations of a BulkResponse, by bulkId."""
    out: dict[str, dict[str, Any]] = {}
    ops = get_ci(body, "Operations") if isinstance(body, dict) else None
    for answer in ops if isinstance(ops, list) else []:
        if isinstance(answer, dict) and isinstance(answer.get("bulkId"), str):
            out[answer["bulkId"]] = answer
    return out


def _status(value: Any) -> int:
    """A Bulk operation status: RFC 7644 says a string, some servers send an int or "201 Created"."""
    try:
        return int(str(value).split()[0])
    except (ValueError, IndexError):
        return 0


def anchor_of_location(location: Any) -> str | None:
    if not isinstance(location, str) or not location.rstrip("/"):
        return None
    return location.rstrip("/").rsplit("/", 1)[-1] or None


def result(
    mapping: ResourceMapping,
    export: PendingExport,
    op: BulkOperation,
    answer: Mapping[str, Any],
    *,
    base_url: str,
    secrets: tuple[str, ...] = (),
) -> ExportOutcome | IdsyncError | None:
    """The outcome or error of one answered operation; None when the export must be applied on its own
    (a 409 to convert into an update, a 412 or ``noTarget`` to re-read, an answer without a location)."""
    status = _status(answer.get("status"))
    method = op["method"]
    anchor = export.anchor
    if 200 <= status < 300:
        if method == "POST":
            anchor = anchor_of_location(answer.get("location"))
            if anchor is None:
                return None
        return ExportOutcome(anchor=anchor, dn=None)
    if method == "DELETE" and status == 404:
        return ExportOutcome(anchor=anchor, dn=None, actions=("already-deleted",))
    body = answer.get("response")
    scim_type = get_ci(body, "scimType") if isinstance(body, dict) else None
    detail = get_ci(body, "detail") if isinstance(body, dict) else None
    kind = str(scim_type).lower()
    if method == "POST" and (status == 409 or kind == "uniqueness"):
        return None
    if method == "PATCH" and (status == 412 or kind == "notarget"):
        return None
    if method == "PATCH" and status == 404:
        return DataError(
            f"Cannot update {mapping.locator(anchor)}: no such resource on the SCIM server",
            error_type="cd-missing-object",
        )
    return map_status(
        status,
        scim_type=scim_type if isinstance(scim_type, str) else None,
        detail=" ".join(str(detail or "").split()),
        retry_after=None,
        operation=f"{method} (bulk)",
        target=mapping.locator(anchor),
        base_url=base_url,
        secrets=secrets,
    )
