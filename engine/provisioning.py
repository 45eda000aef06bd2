"""Provisioning and deprovisioning: what each target connector should hold for a metaverse object."""

from __future__ import annotations

from dataclasses import dataclass

from engine.flow import FlowIssue, evaluate_export_flows
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


def desired(rule: OutboundRuleConfig, mv: MVObject) -> Desired:
    """Evaluate scope, DN template and export flows of one outbound rule."""
    in_scope = not mv.deleted and (not rule.scope or any_group_holds(rule.scope, mv.attributes))
    dn = render(rule.dn, mv.attributes, escape=True)
    attrs, issues = evaluate_export_flows(rule.flows, mv.attributes)
    return Desired(
        in_scope=in_scope, dn=dn, attributes=attrs, missing_dn_attribute=dn is None, issues=tuple(issues)
    )


def moved_dn(dn: str, container: str) -> str:
    """The DN an object gets when moved under ``container`` (same RDN)."""
    return f"{split_dn(dn)[0]},{container}"
