"""Inbound routing after staging: connector filter, then a join request (disconnector), a contribution
(connector) or a disconnect (deleted / filtered)."""

from __future__ import annotations

from typing import Literal

from msgspec.structs import replace

from engine.flow import evaluate_import_flows
from engine.join import join_routes
from engine.references import carried_keys, registers
from engine.rules import Rules
from engine.staging import Staged, apply_link
from engine.values import any_group_holds
from schemas.config import InboundRuleConfig, template_fields
from schemas.messages import (
    CSLink,
    JoinIndexUpdate,
    JoinRequest,
    MVContribution,
    MVDisconnect,
    OperatorLink,
    RefRegister,
)
from schemas.state import ConnectorState, CSObject
from schemas.wire import ErrorRecord

InboundOutput = JoinRequest | JoinIndexUpdate | MVContribution | MVDisconnect | ErrorRecord


def pinned_routes(cs: CSObject) -> list[str]:
    """The join routes a connector-space object was routed by (kept while it waits or is joined)."""
    if cs.join_routes:
        return list(cs.join_routes)
    return [cs.join_route] if cs.join_route is not None else []


def _leave(
    cs: CSObject, reason: Literal["deleted", "filtered", "explicit"], ts_ms: int
) -> list[InboundOutput]:
    """A connector-space object leaves: its metaverse object, or the join index if it was waiting."""
    routes = pinned_routes(cs)
    if cs.mv_id is not None:
        out: list[InboundOutput] = [
            MVDisconnect(
                mv_id=cs.mv_id,
                connector=cs.connector,
                anchor=cs.anchor,
                reason=reason,
                cs_version=cs.version,
                event_id=cs.event_id,
                ts_ms=ts_ms,
            )
        ]
        if len(routes) > 1:
            # Several mapping groups: its home route remembers the join; it must forget it.
            out.append(
                JoinIndexUpdate(route=routes[0], connector=cs.connector, anchor=cs.anchor, ts_ms=ts_ms)
            )
        return out
    return [JoinIndexUpdate(route=r, connector=cs.connector, anchor=cs.anchor, ts_ms=ts_ms) for r in routes]


def may_project(rule: InboundRuleConfig, cs: CSObject) -> bool:
    """Projection rule: allowed for the rule, and the object meets ``project_when`` (if any)."""
    return rule.project and (not rule.project_when or any_group_holds(rule.project_when, cs.attributes))


def route(rules: Rules, staged: Staged, ts_ms: int) -> tuple[CSObject | None, list[InboundOutput]]:
    """Decide where a staged change goes. Returns the connector-space object to store."""
    if staged.skipped:
        return staged.after, []
    if staged.pending == "none":
        cs = staged.after
        # An unchanged target object still goes to its metaverse object: that import is what confirms
        # (or refutes) the exports made since the last one. Unchanged source objects stop here.
        if cs is None or cs.mv_id is None or cs.connector not in rules.targets:
            return cs, []
        return _evaluate(rules, cs, ts_ms, [])
    outputs: list[InboundOutput] = []
    cs = staged.after
    if staged.pending in ("delete", "delete-add") and staged.before is not None:
        outputs.extend(_leave(staged.before, "deleted", ts_ms))
        if cs is not None:
            cs = replace(cs, mv_id=None, join_route=None, join_routes=[], state=ConnectorState.DISCONNECTOR)
    if cs is None:
        return None, outputs
    if _references_only(rules, staged):
        # The reference registrations staging sends carry the change (engine.references): a contribution
        # would tell the metaverse object nothing new and cost it a sync of all its members.
        return cs, outputs
    return _evaluate(rules, cs, ts_ms, outputs)


def routes_by_value(rules: Rules, staged: Staged) -> bool:
    """Whether ``route`` decides a staged change without reading the object's attributes: skipped, an
    unchanged source object, or a change of references only (``_references_only``). Then an object whose
    large attributes are held apart (``engine.staging.stage_by_value``) need not be read whole."""
    if staged.skipped:
        return True
    cs = staged.after
    if staged.pending == "none":
        return cs is None or cs.mv_id is None or cs.connector not in rules.targets
    return _references_only(rules, staged)


def _references_only(rules: Rules, staged: Staged) -> bool:
    """Whether an update of a joined object changed nothing but multi-valued reference attributes that
    nothing else reads (no other flow, no connector filter): a member added to or removed from a group.
    Its contribution would carry what the last one did; the references are registered on their own."""
    before, cs = staged.before, staged.after
    if staged.pending != "update" or before is None or cs is None or not staged.changed:
        return False
    if not staged.changed <= rules.ref_sources(cs.connector, cs.object_type):
        return False  # the hot path of every other update ends here
    if cs.mv_id is None or cs.mv_id != before.mv_id or cs.state != before.state or cs.dn != before.dn:
        return False
    if cs.state not in (ConnectorState.CONNECTOR, ConnectorState.EXPLICIT_CONNECTOR):
        return False
    if cs.connector in rules.targets:
        return False  # its contribution carries the image that confirms exports
    rule = rules.inbound_rule(cs.connector, cs.object_type)
    if rule is None:
        return False
    single = rules.single_valued.get(rule.mv_type, frozenset())
    refs = {attr for attr, _source in rules.ref_flows(cs.connector, cs.object_type)}
    for flow in rule.flows:
        if flow.mv in refs and flow.source is not None:
            if flow.mv in single:
                return False  # several DNs are an error there: the contribution reports it
            continue
        if flow.source is not None and flow.source not in staged.changed:
            continue
        if flow.constant is not None or flow.dn_component is not None:
            continue
        if flow.template is not None and staged.changed.isdisjoint(template_fields(flow.template)):
            continue
        if flow.exists is not None and flow.exists not in staged.changed:
            continue
        return False  # it reads a changed attribute, or an expression may
    return not any(c.attribute in staged.changed for group in rule.filter for c in group)


def _evaluate(
    rules: Rules, cs: CSObject, ts_ms: int, outputs: list[InboundOutput]
) -> tuple[CSObject, list[InboundOutput]]:
    rule = rules.inbound_rule(cs.connector, cs.object_type)
    if rule is None:
        return cs, outputs
    if rule.filter and any_group_holds(rule.filter, cs.attributes):
        if cs.state != ConnectorState.EXPLICIT_CONNECTOR:
            outputs.extend(_leave(cs, "filtered", ts_ms))
            cs = replace(
                cs, mv_id=None, join_route=None, join_routes=[], state=ConnectorState.FILTERED_DISCONNECTOR
            )
            return cs, outputs
    elif cs.state == ConnectorState.FILTERED_DISCONNECTOR:
        cs = replace(cs, state=ConnectorState.DISCONNECTOR)
    if cs.state == ConnectorState.EXPLICIT_DISCONNECTOR:
        return cs, outputs
    flows, issues = evaluate_import_flows(
        rule.flows, cs.attributes, cs.dn, rules.single_valued.get(rule.mv_type, frozenset())
    )
    if issues:
        # Like a failed sync of the object in MIM: nothing of it reaches the metaverse until it is fixed.
        outputs.extend(
            ErrorRecord(
                step_id="staging.inbound",
                error_type=issue.error_type,
                algorithm_step="import-flow",
                connector=cs.connector,
                anchor=cs.anchor,
                locator=cs.locator,
                mv_id=cs.mv_id,
                message=f"{cs.connector} object {cs.anchor}: {issue.message}",
                ts_ms=ts_ms,
            )
            for issue in issues
        )
        return cs, outputs
    # Reference attributes hold DNs here; the metaverse gets their mv_ids from the reference index.
    references = sorted({attr for attr, _source in rules.ref_flows(cs.connector, cs.object_type)})
    for attr in references:
        flows.pop(attr, None)
    image = dict(cs.attributes) if cs.connector in rules.targets else None
    if cs.mv_id is not None:
        outputs.append(
            MVContribution(
                mv_id=cs.mv_id,
                mv_type=rule.mv_type,
                connector=cs.connector,
                anchor=cs.anchor,
                dn=cs.dn,
                cs_version=cs.version,
                event_id=cs.event_id,
                flows=flows,
                image=image,
                route=cs.join_route,
                source_ts_ms=cs.source_ts_ms,
                ts_ms=ts_ms,
                references=references,
            )
        )
        return cs, outputs
    project = may_project(rule, cs)
    routes = pinned_routes(cs) or join_routes(rule, cs, project)
    if not routes:
        return cs, outputs
    multi = routes if len(routes) > 1 else []
    cs = replace(cs, join_route=routes[0], join_routes=multi)
    hook = rules.resolver(cs.connector, cs.object_type)
    outputs.append(
        JoinRequest(
            route=routes[0],
            mv_type=rule.mv_type,
            connector=cs.connector,
            anchor=cs.anchor,
            dn=cs.dn,
            cs_version=cs.version,
            event_id=cs.event_id,
            project=project,
            flows=flows,
            image=image,
            ts_ms=ts_ms,
            object_type=cs.object_type,
            routes=multi,
            cs_attributes=dict(cs.attributes) if hook is not None else None,
            source_ts_ms=cs.source_ts_ms,
            references=references,
            ref_keys=carried_keys(rules, cs) if references else None,
        )
    )
    return cs, outputs


#: Version of the disconnect sent for an object deleted while its join was in flight (newer than any).
GONE_VERSION = 2**62


def answers_later_life(link: CSLink, tomb: CSObject) -> bool:
    """Whether a join answer is for a version of the object newer than its delete (``tomb``, its
    tombstone, keeps the delete's version): the object was created again after the delete and its record
    is not staged (again) yet. A link without ``cs_version`` (an earlier release's) is taken as older."""
    return link.cs_version is not None and link.cs_version > tomb.version


def on_link_gone(link: CSLink, tomb: CSObject | None) -> list[InboundOutput | RefRegister]:
    """The join answered for an object staging does not hold.

    Deleted meanwhile (``tomb``, its tombstone, is there): it leaves the metaverse object it joined or
    projected (otherwise that object would keep a link nobody removes), and the references the join
    carried (``ref_keys``, registered with the join's contribution) leave with it. Never staged (no
    tombstone): nothing. That happens after a crash — a stage's input is delivered again from its last
    saved state, and the links topic can deliver the answer before the import record that caused it; that
    record is staged again, joins again and gets its answer again. Leaving would delete the metaverse
    object of a live person (deletion rule) and deprovision its accounts. The same holds for an answer to
    a later life of a deleted object (``answers_later_life``): deleted before the last saved state, created
    again and joined after it, its new record is still to be staged again."""
    if tomb is None or link.outcome not in ("joined", "projected") or link.mv_id is None:
        return []
    if answers_later_life(link, tomb):
        return []
    out: list[InboundOutput | RefRegister] = [
        MVDisconnect(
            mv_id=link.mv_id,
            connector=link.connector,
            anchor=link.anchor,
            reason="deleted",
            cs_version=GONE_VERSION,
            event_id=f"{link.connector}:{link.anchor}:gone:{link.mv_id}",
            ts_ms=link.ts_ms,
        )
    ]
    for attr, keys in sorted((link.ref_keys or {}).items()):
        out += registers(
            link.mv_id, "unrefer", link.connector, keys, link.ts_ms, attribute=attr, anchor=link.anchor
        )
    return out


def on_link(rules: Rules, cs: CSObject, link: CSLink) -> tuple[CSObject, list[InboundOutput]]:
    """The join step's answer arrived. ``unlinked`` (metaverse object gone) joins again at once."""
    cs = apply_link(cs, link.mv_id, link.outcome)
    if link.outcome == "unlinked":
        return _evaluate(rules, cs, link.ts_ms, [])
    return cs, []


def on_operator(
    rules: Rules, cs: CSObject | None, op: OperatorLink
) -> tuple[CSObject | None, list[InboundOutput]]:
    """An operator's ``idsync join`` / ``disjoin`` / ``release`` of one connector-space object.

    join: leaves whatever it was joined to (or waiting on) and becomes an explicit connector of
    ``op.mv_id``, contributing there at once; the connector filter no longer disconnects it. disjoin: leaves
    and becomes an explicit disconnector, which the rules never join or project. release: a normal
    (dis)connector again, evaluated by the rules at once. A missing object or a join the rules cannot
    carry out is a per-object error; the object is unchanged.
    """

    def refused(error_type: str, why: str) -> tuple[CSObject | None, list[InboundOutput]]:
        return cs, [
            ErrorRecord(
                step_id="staging.operator",
                error_type=error_type,
                algorithm_step="join",
                connector=op.connector,
                anchor=op.anchor,
                locator=cs.locator if cs is not None else None,
                mv_id=op.mv_id,
                message=f"idsync {op.action} {op.connector} {op.anchor} (request {op.request_id}): {why}",
                ts_ms=op.ts_ms,
            )
        ]

    if cs is None:
        return refused("cs-object-not-found", "no such object in the connector space")
    if op.action == "release":
        if cs.state == ConnectorState.EXPLICIT_DISCONNECTOR:
            cs = replace(cs, state=ConnectorState.DISCONNECTOR)
        elif cs.state == ConnectorState.EXPLICIT_CONNECTOR:
            cs = replace(cs, state=ConnectorState.CONNECTOR)
        else:
            return cs, []  # already normal
        return _evaluate(rules, cs, op.ts_ms, [])
    if op.action == "disjoin":
        if cs.state == ConnectorState.EXPLICIT_DISCONNECTOR:
            return cs, []
        outputs = _leave(cs, "explicit", op.ts_ms)
        return _unlinked(cs, ConnectorState.EXPLICIT_DISCONNECTOR), outputs
    if cs.state == ConnectorState.EXPLICIT_CONNECTOR and cs.mv_id == op.mv_id:
        return cs, []
    rule = rules.inbound_rule(cs.connector, cs.object_type)
    if rule is None:
        return refused(
            "explicit-join-without-rule",
            f"no inbound rule for {cs.connector} {cs.object_type} objects (it names the metaverse type and "
            "the flows an explicit connector contributes)",
        )
    outputs = _leave(cs, "explicit", op.ts_ms) if cs.mv_id is not None or pinned_routes(cs) else []
    joined = replace(_unlinked(cs, ConnectorState.EXPLICIT_CONNECTOR), mv_id=op.mv_id)
    joined, more = _evaluate(rules, joined, op.ts_ms, outputs)
    return joined, [replace(o, explicit=True) if isinstance(o, MVContribution) else o for o in more]


def _unlinked(cs: CSObject, state: ConnectorState) -> CSObject:
    return replace(cs, mv_id=None, join_route=None, join_routes=[], state=state)
