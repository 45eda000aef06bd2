"""Provisioning and deprovisioning: what each target connector should hold for a metaverse object."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.flow import FlowIssue, evaluate_export_flows
from engine.rules import flow_reads
from engine.values import any_group_holds, render, split_dn
from schemas.config import OutboundRuleConfig
from schemas.records import Attrs
from schemas.state import MVObject


@dataclass(frozen=True, slots=True)
class Desired:
    """The target object a rule asks for; ``dn`` None when a DN attribute is missing."""

    in_scope: bool
    dn: str | None
    attributes: Attrs
    missing_dn_attribute: bool = False
    #: Export flows that failed for this object (their attributes are left alone).
    issues: tuple[FlowIssue, ...] = ()
    #: Value-level target attributes with references still waiting for their target object: their
    #: resolved values may be added, but nothing is removed until every reference is resolved.
    adds_only: frozenset[str] = frozenset()
    #: Reference attributes with references still waiting -> how many (values without a DN there).
    waiting: dict[str, int] = field(default_factory=dict)


def translate_references(
    mv: MVObject, connector: str, references: Iterable[str]
) -> tuple[Attrs, dict[str, int]]:
    """The metaverse values with reference attributes (mv_ids) translated to the referenced objects' DNs
    in ``connector``, and the reference attributes with a reference to an object not there yet -> how
    many values have no DN there."""
    target = mv.targets.get(connector)
    dns = target.ref_dns if target is not None else {}
    view = dict(mv.attributes)
    waiting: dict[str, int] = {}
    for attr in references:
        values = mv.attributes.get(attr, [])
        if not values:
            continue
        # C-level passes (a group has many members), in the order of the values (the metaverse keeps
        # them sorted), without duplicates; "" is a registered reference not answered yet.
        found = dict.fromkeys(map(dns.get, values))
        found.pop(None, None)
        found.pop("", None)
        got: list[str] = list(found)  # type: ignore[arg-type]  # no None left
        view[attr] = got
        if len(got) < len(values) and len(got) < len(set(values)):
            waiting[attr] = len(values) - len(got)
    return view, waiting


def desired(
    rule: OutboundRuleConfig,
    mv: MVObject,
    references: frozenset[str] = frozenset(),
    value_level: frozenset[str] = frozenset(),
) -> Desired:
    """Evaluate scope, DN template and export flows of one outbound rule.

    ``references``: reference attributes the flows read; they see the referenced objects' DNs in the
    target. A reference to an object not created there yet waits (MIM's reference to an object not yet
    created): a flow reading it is left out this pass — except a ``value_level`` target attribute, which
    gets its resolved values added but loses none — and the reference index's answer triggers the next.
    """
    in_scope = not mv.deleted and (not rule.scope or any_group_holds(rule.scope, mv.attributes))
    dn = render(rule.dn, mv.attributes, escape=True)
    view, waiting = (
        translate_references(mv, rule.connector, references) if references else (mv.attributes, {})
    )
    attrs, issues = evaluate_export_flows(rule.flows, view)
    adds_only: set[str] = set()
    for flow in rule.flows:
        if waiting and flow_reads(flow, waiting):
            if flow.target in value_level:
                adds_only.add(flow.target)
            else:
                attrs.pop(flow.target, None)
    return Desired(
        in_scope=in_scope,
        dn=dn,
        attributes=attrs,
        missing_dn_attribute=dn is None,
        issues=tuple(issues),
        adds_only=frozenset(adds_only),
        waiting=waiting,
    )


def moved_dn(dn: str, container: str) -> str:
    """The DN an object gets when moved under ``container`` (same RDN)."""
    return f"{split_dn(dn)[0]},{container}"
