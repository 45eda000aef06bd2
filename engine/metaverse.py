"""The metaverse step (keyed by mv_id): contributions and disconnects update the metaverse object through
precedence and the deletion rule; outbound sync then plans exports; export results and confirming imports
settle the export ledger."""

from __future__ import annotations

from engine.confirmation import DELETED_KEY, confirm_delete, confirm_import
from engine.deletion import should_delete
from engine.export import OutboundOutput, plan_exports, record_result
from engine.precedence import resolve
from engine.rules import Rules
from engine.staging import changed_attributes
from schemas.records import (
    CSLink,
    ErrorRecord,
    ExportConfirmed,
    ExportResult,
    JoinIndexUpdate,
    MVChange,
    MVContribution,
    MVDisconnect,
    PendingExport,
)
from schemas.state import ConnectorLink, MVObject, TargetState

MVOutput = MVChange | PendingExport | JoinIndexUpdate | CSLink | ErrorRecord | ExportConfirmed


def metaverse_step(
    rules: Rules, mv: MVObject | None, msg: MVContribution | MVDisconnect | ExportResult
) -> tuple[MVObject | None, list[MVOutput]]:
    """Apply one message to one metaverse object; None as the result removes it from the table."""
    if isinstance(msg, ExportResult):
        return _export_result(mv, msg)
    if isinstance(msg, MVDisconnect):
        return _disconnect(rules, mv, msg)
    return _contribute(rules, mv, msg)


def _export_result(mv: MVObject | None, msg: ExportResult) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None or msg.connector not in mv.targets:
        return mv, []
    mv = mv.model_copy(deep=True)
    target = mv.targets[msg.connector]
    record_result(target, msg)
    link = mv.links.get(msg.connector)
    if msg.status != "applied" or link is None or link.image is None:
        return mv, []
    # Values the last import already shows are confirmed now; others wait for the next import.
    confirmed, _ = confirm_import(
        target, msg.connector, mv.mv_id, link.image, link.dn, msg.ts_ms, final=False
    )
    return mv, list(confirmed)


def _contribute(
    rules: Rules, mv: MVObject | None, msg: MVContribution
) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None or mv.deleted:
        if mv is not None or not msg.projected:
            # Its metaverse object was deleted while the join was in flight: join again.
            outputs: list[MVOutput] = [
                CSLink(
                    connector=msg.connector,
                    anchor=msg.anchor,
                    mv_id=None,
                    outcome="unlinked",
                    ts_ms=msg.ts_ms,
                )
            ]
            if msg.route is not None:
                outputs.append(
                    JoinIndexUpdate(
                        route=msg.route,
                        mv_id=msg.mv_id,
                        connector=msg.connector,
                        anchor=msg.anchor,
                        ts_ms=msg.ts_ms,
                    )
                )
            return mv, outputs
        mv = MVObject(mv_id=msg.mv_id, object_type=msg.mv_type)
        for connector in msg.joining:
            if connector in rules.targets:
                # Its existing object is joining right behind this message: no provisioning meanwhile.
                mv.targets[connector] = TargetState(status="joining")
        created = True
    else:
        mv = mv.model_copy(deep=True)
        created = False
    old = mv.links.get(msg.connector)
    if old is not None and old.anchor != msg.anchor:
        return mv, [
            CSLink(
                connector=msg.connector, anchor=msg.anchor, mv_id=None, outcome="ambiguous", ts_ms=msg.ts_ms
            ),
            ErrorRecord(
                step_id="metaverse.join",
                error_type="ambiguous-join",
                algorithm_step="join",
                connector=msg.connector,
                anchor=msg.anchor,
                mv_id=mv.mv_id,
                message=f"metaverse object {mv.mv_id} already has {msg.connector} object {old.anchor}",
                ts_ms=msg.ts_ms,
            ),
        ]
    if old is not None and old.cs_version > msg.cs_version:
        return mv, []  # stale (invariant 5)
    mv.links[msg.connector] = ConnectorLink(
        anchor=msg.anchor,
        dn=msg.dn,
        cs_version=msg.cs_version,
        flows=msg.flows,
        image=msg.image,
        route=msg.route,
        ts_ms=msg.ts_ms,
    )
    if msg.route is not None and msg.route not in mv.routes:
        mv.routes.append(msg.route)
    outputs = []
    if msg.connector in rules.targets and msg.image is not None:
        target = mv.targets.setdefault(msg.connector, TargetState())
        if target.status in ("none", "pending-add", "joining"):
            target.status = "exists"
        target.anchor = msg.anchor
        target.dn = msg.dn
        confirmed, errors = confirm_import(target, msg.connector, mv.mv_id, msg.image, msg.dn, msg.ts_ms)
        outputs.extend(confirmed)
        outputs.extend(errors)
    outputs.extend(_sync(rules, mv, created, msg.connector, msg.ts_ms))
    return mv, outputs


def _disconnect(
    rules: Rules, mv: MVObject | None, msg: MVDisconnect
) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None:
        return None, []
    link = mv.links.get(msg.connector)
    if link is None or link.anchor != msg.anchor or link.cs_version > msg.cs_version:
        return mv, []
    mv = mv.model_copy(deep=True)
    del mv.links[msg.connector]
    outputs: list[MVOutput] = []
    if link.route is not None:
        outputs.append(
            JoinIndexUpdate(
                route=link.route, mv_id=mv.mv_id, connector=msg.connector, anchor=msg.anchor, ts_ms=msg.ts_ms
            )
        )
    target = mv.targets.get(msg.connector)
    if target is not None:
        outputs.extend(confirm_delete(target, msg.connector, mv.mv_id, msg.ts_ms))
        # Deleted in the target: provisioned again if still in scope (MIM re-provisioning).
        mv.targets[msg.connector] = TargetState(
            seq=target.seq, status="disconnected" if target.status == "disconnected" else "none"
        )
    if mv.deleted:
        return _maybe_drop(mv), outputs
    if should_delete(rules.deletion[mv.object_type], mv, msg.connector, set(rules.targets)):
        outputs.extend(_delete(rules, mv, msg.connector, msg.ts_ms))
        return _maybe_drop(mv), outputs
    outputs.extend(_sync(rules, mv, False, msg.connector, msg.ts_ms))
    return mv, outputs


def _delete(rules: Rules, mv: MVObject, cause: str, ts_ms: int) -> list[MVOutput]:
    """Delete the metaverse object: deprovision, free its join routes, unlink what stays connected."""
    mv.deleted = True
    outputs: list[MVOutput] = [
        MVChange(
            op="delete",
            mv_id=mv.mv_id,
            object_type=mv.object_type,
            attributes={},
            changed=sorted(mv.attributes),
            connectors=[],
            cause=cause,
            ts_ms=ts_ms,
        )
    ]
    for rule in rules.outbound.get(mv.object_type, []):
        outputs.extend(plan_exports(mv, rule, ts_ms))
    for route in mv.routes:
        outputs.append(JoinIndexUpdate(route=route, mv_id=mv.mv_id, mv_deleted=True, ts_ms=ts_ms))
    for connector, link in sorted(mv.links.items()):
        target = mv.targets.get(connector)
        if target is not None and DELETED_KEY in target.ledger:
            continue  # stays linked until the delete is confirmed by an import
        outputs.append(
            CSLink(connector=connector, anchor=link.anchor, mv_id=None, outcome="unlinked", ts_ms=ts_ms)
        )
        del mv.links[connector]
    mv.attributes = {}
    return outputs


def _maybe_drop(mv: MVObject) -> MVObject | None:
    """A deleted metaverse object is kept as a tombstone until its deprovisioning deletes are confirmed."""
    if mv.links or any(DELETED_KEY in t.ledger for t in mv.targets.values()):
        return mv
    return None


def _sync(rules: Rules, mv: MVObject, created: bool, cause: str, ts_ms: int) -> list[MVOutput]:
    """Recompute attributes by precedence, publish the change, plan exports for every target."""
    attrs, winners = resolve(mv.links, rules.contributors.get(mv.object_type, {}), mv.attributes)
    changed = changed_attributes(mv.attributes, attrs)
    mv.attributes = attrs
    mv.contributors = winners
    outputs: list[MVOutput] = []
    if created or changed:
        mv.version += 1
        outputs.append(
            MVChange(
                op="create" if created else "update",
                mv_id=mv.mv_id,
                object_type=mv.object_type,
                attributes=attrs,
                changed=sorted(changed),
                connectors=sorted(mv.links),
                cause=cause,
                ts_ms=ts_ms,
            )
        )
    exports: list[OutboundOutput] = []
    for rule in rules.outbound.get(mv.object_type, []):
        exports.extend(plan_exports(mv, rule, ts_ms))
    outputs.extend(exports)
    return outputs
