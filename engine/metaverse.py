"""The metaverse step (keyed by mv_id): contributions and disconnects update the metaverse object through
precedence and the deletion rule; outbound sync then plans exports; export results and confirming imports
settle the export ledger."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence

from engine.chunks import Touched, ref_dns_path, refs_path
from engine.confirmation import DELETED_KEY, confirm_delete, confirm_import
from engine.deletion import due_at, due_deletions, is_due, rescued_by, should_delete
from engine.export import OutboundOutput, plan_exports, record_result, unaffected
from engine.join import mv_join_keys
from engine.membership import ByValue, by_value_always, member_sync, track_answer
from engine.precedence import resolve_all
from engine.references import (
    Lookup,
    mv_updates,
    no_table,
    published_dns,
    register_target,
    registered,
    registers,
)
from engine.rules import Rules
from engine.shared import SharedMaps, journal_of, pop_entry, set_entry
from engine.staging import changed_attributes
from engine.values import same_values, sorted_set
from schemas.config import OutboundRuleConfig
from schemas.messages import (
    CSLink,
    ExportResult,
    JoinIndexUpdate,
    MVContribution,
    MVDisconnect,
    MVInbound,
    RefRegister,
    RefResolved,
    RefSync,
    RefValue,
)
from schemas.state import ConnectorLink, MVObject, RetainedValue, TargetState
from schemas.wire import ErrorRecord, ExportConfirmed, MVChange, PendingExport

MVOutput = (
    MVChange
    | PendingExport
    | JoinIndexUpdate
    | CSLink
    | ErrorRecord
    | ExportConfirmed
    | RefRegister
    | RefValue
    | RefSync
)

__all__ = ["MVOutput", "due_deletions", "expire", "metaverse_step", "metaverse_steps"]


def metaverse_step(
    rules: Rules,
    mv: MVObject | None,
    msg: MVInbound,
    now_ms: int | None = None,
    lookup: Lookup = no_table,
    by_value: ByValue = by_value_always,
) -> tuple[MVObject | None, list[MVOutput]]:
    """Apply one message to one metaverse object; None as the result removes it from the table.

    ``now_ms`` (default: the message's time) first deletes the object if its deletion fell due.
    """
    after, [outputs] = metaverse_steps(rules, mv, [msg], now_ms, lookup=lookup, by_value=by_value)
    return after, outputs


def metaverse_steps(
    rules: Rules,
    mv: MVObject | None,
    msgs: Sequence[MVInbound],
    now_ms: int | None = None,
    settle: bool | Callable[[MVObject], bool] = False,
    lookup: Lookup = no_table,
    touched: Touched | None = None,
    by_value: ByValue = by_value_always,
    shared: SharedMaps | None = None,
) -> tuple[MVObject | None, list[list[MVOutput]]]:
    """Apply messages to one metaverse object in order: the state and, per message, the outputs that
    applying them one by one with ``metaverse_step`` gives, with one copy of the object for all of them.

    ``touched``: filled with what the steps changed in the object's large containers (``engine.chunks``:
    a member answer's key, the values a member sync changed); a step that does not say makes it whole.

    A group hears from each of its members (a reference answer each); one copy per answer would make a
    large group's initial load quadratic. The given object is never changed: it is copied once, and the
    copy is changed in place by each message — except with ``shared`` (``engine.shared``): its large
    reference maps are then shared with the copy and changed in place, each change journaled; if a step
    raises, the journal is undone (the given object is as it was), otherwise the caller must go on with
    the result and drop the given object, whose shared maps changed too (``shared.changed`` says so).

    ``by_value``: whether a member change of the object may go on ``mv.changes`` by value
    (``engine.membership.member_sync``).

    ``lookup``: the local reference table (route -> value), read when the object registers to a route
    (``RefRegister``: its registrations are among the outputs, for the stage to keep).

    ``settle``: reference answers still waiting for their ``RefSync`` at the end are synced now (with
    the last message's outputs), and no ``RefSync`` is sent: what that message would do when it
    arrived, one hop sooner (a ``RefSync`` already on its way then finds nothing to do). A predicate
    decides per object: when it says no, the answers are *held* — no ``RefSync`` is sent and the object
    keeps ``ref_sync`` set, as if one were on its way; the caller must then deliver that ``RefSync``
    itself (streams.stages.metaverse holds a large group's answers until its checkpoint)."""
    if shared is None:
        return _steps(rules, mv, msgs, now_ms, settle, lookup, touched, by_value, None)
    with shared:  # undone if the steps raise
        return _steps(rules, mv, msgs, now_ms, settle, lookup, touched, by_value, shared)


def _steps(
    rules: Rules,
    mv: MVObject | None,
    msgs: Sequence[MVInbound],
    now_ms: int | None,
    settle: bool | Callable[[MVObject], bool],
    lookup: Lookup,
    touched: Touched | None,
    by_value: ByValue,
    shared: SharedMaps | None,
) -> tuple[MVObject | None, list[list[MVOutput]]]:
    work = fork(mv, shared) if mv is not None else None
    results: list[list[MVOutput]] = []
    for msg in msgs:
        published = published_dns(rules, work)
        held = work
        work, outputs = _expire(rules, work, msg.ts_ms if now_ms is None else now_ms)
        more: list[MVOutput]
        current = False  # the step left the outbound registrations current
        if isinstance(msg, ExportResult):
            work, more = _export_result(work, msg)
        elif isinstance(msg, MVDisconnect):
            work, more = _disconnect(rules, work, msg)
        elif isinstance(msg, RefResolved):
            work, more = _ref_resolved(rules, work, msg, touched)
        elif isinstance(msg, RefRegister):
            work, more = _ref_register(rules, work, msg, lookup, touched)
        elif isinstance(msg, RefSync):
            work, more, current = _ref_sync(rules, work, msg, lookup, touched, by_value)
        else:
            work, more = _contribute(rules, work, msg, lookup)
        # A dropped object (None) leaves every registration it had: the object it was still knows them.
        gone = work is None
        # Reference answers and export results change no attribute value: the references are as they
        # were, unless the object's deletion fell due first.
        values = bool(outputs) or not isinstance(msg, RefResolved | RefRegister | ExportResult)
        if touched is not None and (outputs or (values and not current) or isinstance(msg, ExportResult)):
            touched.whole = True  # a step that does not say what it changed (registrations included)
        refs, found = mv_updates(
            rules,
            msg.mv_id,
            published,
            held if gone else work,
            msg.ts_ms,
            dropped=gone,
            registrations=values and not current,
            lookup=lookup,
        )
        if found and work is not None:
            more += _defer(work, found, msg.ts_ms)
        results.append([*outputs, *more, *refs])
    if settle and work is not None and work.ref_sync is not None and msgs:
        for each in results:
            each[:] = [o for o in each if not isinstance(o, RefSync)]
        if callable(settle) and not settle(work):
            return work, results
        last = msgs[-1]
        # A sync may register references the table already resolves: synced again until none does. (A
        # deleted object is not synced: its RefSync finds nothing to do and leaves the mark as it was.)
        while work is not None and work.ref_sync is not None and not work.deleted:
            published = published_dns(rules, work)
            sync = RefSync(mv_id=work.mv_id, ts_ms=last.ts_ms)
            work, synced, current = _ref_sync(rules, work, sync, lookup, touched, by_value)
            results[-1] += synced
            if touched is not None and not current:
                touched.whole = True  # the registrations are compared and changed whole
            if work is not None:
                refs, found = mv_updates(
                    rules, work.mv_id, published, work, last.ts_ms, registrations=not current, lookup=lookup
                )
                results[-1] += refs
                if found:
                    work.ref_sync = found
    return work, results


def expire(rules: Rules, mv: MVObject | None, now_ms: int) -> tuple[MVObject | None, list[MVOutput]]:
    """Delete the object if its deletion (deletion rule with a grace period) is due at ``now_ms``."""
    if mv is None or not is_due(mv, now_ms):
        return mv, []
    published = published_dns(rules, mv)
    work = fork(mv)
    after, outputs = _expire(rules, work, now_ms)
    refs, _found = mv_updates(rules, mv.mv_id, published, work, now_ms, dropped=after is None)
    return after, [*outputs, *refs]


def _expire(rules: Rules, mv: MVObject | None, now_ms: int) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None or not is_due(mv, now_ms):
        return mv, []
    outputs = _delete(rules, mv, None, now_ms)
    return _maybe_drop(mv), outputs


def _ref_resolved(
    rules: Rules, mv: MVObject | None, msg: RefResolved, touched: Touched | None = None
) -> tuple[MVObject | None, list[MVOutput]]:
    """The reference index answered: a DN of a connector resolved (inbound), or a referenced object's
    DN in a target is known (outbound: the second pass exports the reference).

    The answer is recorded now and synced by a ``RefSync`` the object sends itself: a group's members
    answer one by one, and every answer that arrives before it is synced (and exported) together. So an
    answer costs the same whatever the size of the group: the set of mv_ids is computed at the sync."""
    if mv is None or mv.deleted:
        return mv, []
    if msg.direction == "out":
        target = mv.targets.get(msg.connector)
        if target is None or msg.key not in target.ref_dns or target.ref_dns[msg.key] == (msg.value or ""):
            return mv, []  # no longer referenced (it unregistered meanwhile), or nothing new
        set_entry(target.ref_dns, msg.key, msg.value or "", journal_of(target.ref_dns))
        if touched is not None:
            touched.add(ref_dns_path(msg.connector), (msg.key,))
        # Planned again at the sync whatever its cause: the RefSync may come from an inbound answer of
        # another connector that changed no value this target reads.
        target.replan = True
        return mv, _defer(mv, msg.connector, msg.ts_ms)
    link = mv.links.get(msg.connector)
    attr = msg.attribute
    if link is None or attr is None or link.anchor != msg.anchor:
        return mv, []  # the referring object left (its unrefer follows or came first)
    refs = link.refs.get(attr)
    if (refs or {}).get(msg.key) == msg.value:
        return mv, []
    track_answer(link, attr, msg.key, (refs or {}).get(msg.key))
    if touched is not None:
        touched.add(refs_path(msg.connector, attr), (msg.key,))
    if refs is None:
        refs = link.refs[attr] = {}
    if msg.value is None:
        pop_entry(refs, msg.key, journal_of(refs))
    else:
        set_entry(refs, msg.key, msg.value, journal_of(refs))
    if not refs:
        del link.refs[attr]
    if attr not in link.stale_refs:
        link.stale_refs.append(attr)
    return mv, _defer(mv, msg.connector, msg.ts_ms)


def _ref_register(
    rules: Rules, mv: MVObject | None, msg: RefRegister, lookup: Lookup, touched: Touched | None = None
) -> tuple[MVObject | None, list[MVOutput]]:
    """The object registers to (or leaves) keys of the reference table: the registrations go to the
    stage (kept whether or not the object is still there: its connector-space object leaving ends them),
    and the table's values, where it has them, are applied at once."""
    out: list[MVOutput] = [msg]
    for answer in registered(msg, lookup):
        mv, more = _ref_resolved(rules, mv, answer, touched)
        out += more
    return mv, out


def _defer(mv: MVObject, cause: str, ts_ms: int) -> list[MVOutput]:
    if mv.ref_sync is not None:
        return []  # a RefSync is on its way already
    mv.ref_sync = cause
    return [RefSync(mv_id=mv.mv_id, ts_ms=ts_ms)]


def _ref_sync(
    rules: Rules,
    mv: MVObject | None,
    msg: RefSync,
    lookup: Lookup = no_table,
    touched: Touched | None = None,
    by_value: ByValue = by_value_always,
) -> tuple[MVObject | None, list[MVOutput], bool]:
    """The answers recorded since the last sync reach the object's values, then its targets. The flag
    says whether the sync left the object's outbound registrations current (the step's ``mv_updates``
    need not compare them): a change of a few members synced from those members alone does."""
    if mv is None or mv.deleted:
        return mv, [], False
    if mv.ref_sync is None:
        return mv, [], True  # synced already (a settled batch did it): nothing changed
    synced = member_sync(rules, mv, msg.ts_ms, lookup, touched, by_value)
    if synced is not None:
        return mv, list(synced), True
    if touched is not None:
        touched.whole = True
    cause = mv.ref_sync
    mv.ref_sync = None
    equal = rules.equal.get(mv.object_type, frozenset())
    # Only reference attributes whose answers arrived can change (an outbound answer changes none, only
    # what the target's rule exports): the others keep their values and winners, as in a contribution.
    stale: set[str] = set()
    for link in mv.links.values():
        stale.update(link.stale_refs)
        for attr in link.stale_refs:
            values = sorted_set(link.refs.get(attr, {}).values(), link.flows.get(attr))
            if attr in link.flows and same_values(link.flows[attr], values):
                continue  # two DNs resolving to one object, a DN resolved back: nothing new
            link.flows[attr] = values
            if attr in equal:
                link.changed_ts[attr] = msg.ts_ms
            mv.retained.pop(attr, None)
        link.stale_refs = []
        link.stale_keys = {}
    return mv, _sync(rules, mv, False, cause, msg.ts_ms, stale, lookup), False


def fork(mv: MVObject, shared: SharedMaps | None = None) -> MVObject:
    """A copy of a metaverse object that a step may change in place without touching the original:
    every container a step changes is copied (one level; a group's member lists, values that are
    replaced and never changed in place, are shared) — but with ``shared``, the large reference maps
    (a link's references of an attribute, a target's member DNs), which it shares (``engine.shared``)."""
    new = copy.copy(mv)
    new.links = {name: _fork_link(link, shared) for name, link in mv.links.items()}
    new.targets = {name: fork_target(t, shared) for name, t in mv.targets.items()}
    new.retained = dict(mv.retained)
    new.routes = list(mv.routes)
    new.join_keys = list(mv.join_keys)
    new.contributors = dict(mv.contributors)
    new.attributes = dict(mv.attributes)
    new.published_connectors = list(mv.published_connectors)
    return new


def _fork_link(link: ConnectorLink, shared: SharedMaps | None) -> ConnectorLink:
    new = copy.copy(link)
    new.flows = dict(link.flows)
    new.changed_ts = dict(link.changed_ts)
    if shared is None:
        new.refs = {attr: dict(refs) for attr, refs in link.refs.items()}
    else:
        new.refs = {attr: shared.share(refs) for attr, refs in link.refs.items()}
    new.stale_refs = list(link.stale_refs)
    new.stale_keys = {attr: dict(keys) for attr, keys in link.stale_keys.items()}
    return new


def fork_target(target: TargetState, shared: SharedMaps | None = None) -> TargetState:
    """A copy of one target's state; ledger entries are replaced, never changed in place. ``shared``:
    its member DNs shared if large (``fork``)."""
    new = copy.copy(target)
    new.ledger = dict(target.ledger)
    new.ref_dns = dict(target.ref_dns) if shared is None else shared.share(target.ref_dns)
    return new


def _plan(
    rules: Rules, mv: MVObject, rule: OutboundRuleConfig, ts_ms: int, mark: str | None = None
) -> list[OutboundOutput]:
    return plan_exports(mv, rule, ts_ms, rules.export_shape(rule.connector, mv.object_type), mark)


def _export_result(mv: MVObject | None, msg: ExportResult) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None or msg.connector not in mv.targets:
        return mv, []
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
    rules: Rules, mv: MVObject | None, msg: MVContribution, lookup: Lookup = no_table
) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None or mv.deleted:
        if mv is not None or not msg.projected or msg.explicit:
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
            if msg.explicit:
                outputs.append(
                    ErrorRecord(
                        step_id="metaverse.join",
                        error_type="explicit-join-target-missing",
                        algorithm_step="join",
                        connector=msg.connector,
                        anchor=msg.anchor,
                        mv_id=msg.mv_id,
                        message=(
                            f"explicit join of {msg.connector} object {msg.anchor}: metaverse object "
                            f"{msg.mv_id} does not exist{' (deleted)' if mv is not None else ''}; the object "
                            "is a normal disconnector again"
                        ),
                        ts_ms=msg.ts_ms,
                    )
                )
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
    source_ts = msg.source_ts_ms or msg.ts_ms
    changed_ts: dict[str, int] = {}
    flows = dict(msg.flows)
    refs: dict[str, dict[str, str]] = {}
    if old is not None:
        # Resolved references stay with the link: the reference index only sends what changes.
        refs = {a: dict(r) for a, r in old.refs.items() if a in msg.references}
        for attr in msg.references:
            if attr in old.flows:
                changed_ts[attr] = old.changed_ts.get(attr, old.ts_ms)
    outputs = []
    if msg.ref_keys is not None:
        # A join carried the object's reference keys: registered here, and what the table resolves
        # already is in this first sync (no second sync and export when the answers arrive).
        for attr, keys in msg.ref_keys.items():
            if attr not in msg.references:
                continue
            for reg in registers(
                mv.mv_id, "refer", msg.connector, keys, msg.ts_ms, attribute=attr, anchor=msg.anchor
            ):
                outputs.append(reg)
                for answer in registered(reg, lookup):  # the table's values, as a registration gets them
                    if answer.value is not None:
                        refs.setdefault(attr, {})[answer.key] = answer.value
    for attr in msg.references:
        previous = old.flows.get(attr) if old is not None and attr not in old.stale_refs else None
        flows[attr] = sorted_set(refs.get(attr, {}).values(), previous)
    for attr, values in msg.flows.items():
        if old is not None and attr in old.flows and same_values(old.flows[attr], values):
            changed_ts[attr] = old.changed_ts.get(attr, old.ts_ms)
        else:
            changed_ts[attr] = source_ts
            # A flow changed it: a value retained from a departed connector gives way.
            mv.retained.pop(attr, None)
    for attr in msg.references:
        changed_ts.setdefault(attr, source_ts)
    # Only equal precedence compares change times: the others are not kept.
    equal = rules.equal.get(mv.object_type, frozenset())
    changed_ts = {a: t for a, t in changed_ts.items() if a in equal}
    mv.links[msg.connector] = ConnectorLink(
        anchor=msg.anchor,
        dn=msg.dn,
        cs_version=msg.cs_version,
        flows=flows,
        image=msg.image,
        route=msg.route,
        ts_ms=msg.ts_ms,
        changed_ts=changed_ts,
        refs=refs,
    )
    if msg.route is not None and msg.route not in mv.routes:
        mv.routes.append(msg.route)
    if msg.projected and created:
        mv.projected_route = msg.route
        mv.join_keys = list(msg.routes)  # the projection's claimed routes, registered by its commit
    else:
        mv.routes.extend(r for r in msg.routes if r not in mv.routes)
    rescued = old is None and rescued_by(rules.deletion[mv.object_type], msg.connector, rules.targets)
    if mv.delete_due_ms is not None and rescued:
        mv.delete_due_ms = None  # a connector joined during the grace period
    if msg.connector in rules.targets and msg.image is not None:
        target = mv.targets.setdefault(msg.connector, TargetState())
        if target.status in ("none", "pending-add", "joining"):
            target.status = "exists"
        target.anchor = msg.anchor
        target.dn = msg.dn
        confirmed, errors = confirm_import(
            target, msg.connector, mv.mv_id, msg.image, msg.dn, msg.ts_ms, read_ts_ms=msg.source_ts_ms or None
        )
        outputs.extend(confirmed)
        outputs.extend(errors)
    # Only the attributes this connector flowed before or flows now can change: the rest keep their
    # values and winners (a new object has no others).
    touched = None if created else {*flows, *(old.flows if old is not None else ())}
    outputs.extend(_sync(rules, mv, created, msg.connector, msg.ts_ms, touched, lookup))
    return mv, outputs


def _disconnect(
    rules: Rules, mv: MVObject | None, msg: MVDisconnect
) -> tuple[MVObject | None, list[MVOutput]]:
    if mv is None:
        return None, []
    link = mv.links.get(msg.connector)
    if link is None or link.anchor != msg.anchor or link.cs_version > msg.cs_version:
        return mv, []
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
    rule = rules.deletion[mv.object_type]
    doomed = should_delete(rule, mv, msg.connector, set(rules.targets))
    due = due_at(rule, msg.ts_ms) if doomed else None
    if doomed and due is None:
        outputs.extend(_delete(rules, mv, msg.connector, msg.ts_ms))
        return _maybe_drop(mv), outputs
    # No recall: the values it gave stay until a flow changes them. During a deletion grace period all
    # of them stay: the object is deleted soon, or the connector comes back; either way no churn meanwhile.
    keep = set(mv.attributes) if due is not None else rules.no_recall.get(mv.object_type, frozenset())
    for attr in sorted(keep):
        if mv.contributors.get(attr) == msg.connector and mv.attributes.get(attr):
            mv.retained[attr] = RetainedValue(connector=msg.connector, values=list(mv.attributes[attr]))
    if due is not None and mv.delete_due_ms is None:
        mv.delete_due_ms = due  # deleted by the first event at or after it, unless a connector joins
    outputs.extend(_sync(rules, mv, False, msg.connector, msg.ts_ms))
    return mv, outputs


def _delete(rules: Rules, mv: MVObject, cause: str | None, ts_ms: int) -> list[MVOutput]:
    """Delete the metaverse object: deprovision, free its join routes, unlink what stays connected."""
    mv.deleted = True
    mv.delete_due_ms = None
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
        outputs.extend(_plan(rules, mv, rule, ts_ms))
    for route in [*mv.routes, *(k for k in mv.join_keys if k not in mv.routes)]:
        outputs.append(JoinIndexUpdate(route=route, mv_id=mv.mv_id, mv_deleted=True, ts_ms=ts_ms))
    mv.join_keys = []
    for connector, link in sorted(mv.links.items()):
        target = mv.targets.get(connector)
        if target is not None and DELETED_KEY in target.ledger:
            continue  # stays linked until the delete is confirmed by an import
        outputs.append(
            CSLink(connector=connector, anchor=link.anchor, mv_id=None, outcome="unlinked", ts_ms=ts_ms)
        )
        del mv.links[connector]
    mv.attributes = {}
    mv.retained = {}
    return outputs


def _maybe_drop(mv: MVObject) -> MVObject | None:
    """A deleted metaverse object is kept as a tombstone until its deprovisioning deletes are confirmed."""
    if mv.links or any(DELETED_KEY in t.ledger for t in mv.targets.values()):
        return mv
    return None


def _sync(
    rules: Rules,
    mv: MVObject,
    created: bool,
    cause: str,
    ts_ms: int,
    touched: Collection[str] | None = None,
    lookup: Lookup | None = None,
) -> list[MVOutput]:
    """Recompute attributes by precedence, publish the change, plan exports for every target.

    ``touched``: the only attributes that can have changed (one connector's contribution); None: any.
    ``lookup``: the reference table, to register the references a plan exports before planning (None:
    they are registered after the step, and exported by a second pass when the table knows them)."""
    res = resolve_all(
        mv.links,
        rules.contributors.get(mv.object_type, {}),
        mv.attributes,
        rules.equal.get(mv.object_type, frozenset()),
        mv.retained,
        only=touched,
        winners=mv.contributors,
    )
    attrs = res.attributes
    if touched is None:
        changed = changed_attributes(mv.attributes, attrs)
    else:
        changed = frozenset(a for a in touched if not same_values(mv.attributes.get(a), attrs.get(a)))
    mv.attributes = attrs
    mv.contributors = res.winners
    outputs: list[MVOutput] = [
        ErrorRecord(
            step_id="metaverse.precedence",
            error_type="ambiguous-import-flow-from-multiple-connectors",
            algorithm_step="import-flow",
            connector=cause,
            mv_id=mv.mv_id,
            message=(
                f"{attr}: {' and '.join(tied)} changed it at the same time with different values "
                f"(equal precedence); {tied[0]} wins, the first by connector name"
            ),
            ts_ms=ts_ms,
        )
        for attr, tied in sorted(res.ties.items())
        if cause in tied
    ]
    if _registration_changes(rules, mv.object_type, created, changed):
        outputs.extend(_register(rules, mv, bool(created or changed), ts_ms))
    connectors = sorted(mv.links)
    if created or changed or connectors != mv.published_connectors:
        mv.version += 1
        mv.published_connectors = connectors
        outputs.append(
            MVChange(
                op="create" if created else "update",
                mv_id=mv.mv_id,
                object_type=mv.object_type,
                attributes=attrs,
                changed=sorted(changed),
                connectors=connectors,
                cause=cause,
                ts_ms=ts_ms,
            )
        )
    if lookup is not None and not mv.deleted:
        # References whose target DN the table knows are registered before planning: exported now, not
        # by a second pass (the registrations made after the step find nothing left to do).
        for connector in rules.xref_targets:
            exported = rules.export_references.get((connector, mv.object_type), frozenset())
            if exported and (created or not changed.isdisjoint(exported)):
                outputs.extend(register_target(rules, mv.mv_id, mv, connector, ts_ms, lookup)[0])
    reads = rules.outbound_reads.get(mv.object_type, ())
    marks = rules.rule_marks.get(mv.object_type, ())
    for rule, read, mark in zip(rules.outbound.get(mv.object_type, []), reads, marks, strict=True):
        if not created and unaffected(mv, rule, read, cause, changed):
            continue
        outputs.extend(_plan(rules, mv, rule, ts_ms, mark))
    return outputs


def _registration_changes(rules: Rules, mv_type: str, created: bool, changed: frozenset[str]) -> bool:
    """Whether the object's join-index registration may change: it is new, a join attribute changed, or
    a resolver needs the index to see its changed attributes."""
    if created or changed & rules.join_attributes.get(mv_type, frozenset()):
        return True
    return bool(changed) and mv_type in rules.snapshot_types


def _register(rules: Rules, mv: MVObject, changed: bool, ts_ms: int) -> list[MVOutput]:
    """Keep the join index's view of this object's join values current (register / unregister)."""
    signatures = rules.join_signatures.get(mv.object_type)
    if not signatures:
        return []
    snapshot = mv.object_type in rules.snapshot_types
    keys = mv_join_keys(mv.object_type, signatures, mv.attributes)
    # The projection route already finds it (unless a resolver needs its attributes there too).
    wanted = [k for k in keys if snapshot or k != mv.projected_route]
    old = set(mv.join_keys)
    attributes = dict(mv.attributes) if snapshot else None
    outputs: list[MVOutput] = [
        JoinIndexUpdate(route=k, op="register", mv_id=mv.mv_id, attributes=attributes, ts_ms=ts_ms)
        for k in wanted
        if k not in old or (snapshot and changed)
    ]
    outputs.extend(
        JoinIndexUpdate(route=k, op="unregister", mv_id=mv.mv_id, ts_ms=ts_ms)
        for k in sorted(old - set(wanted))
    )
    mv.join_keys = wanted
    return outputs
