"""Attribute flow: import flows (connector space -> metaverse) and export flows (metaverse -> target)."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from engine.expression import EvaluationError, evaluate, variables
from engine.values import dn_component, render
from schemas.config import ExportFlowConfig, ImportFlowConfig
from schemas.records import Attrs


@dataclass(frozen=True, slots=True)
class FlowIssue:
    """A flow that could not produce values for one object (a per-object error)."""

    attribute: str
    error_type: str
    message: str


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _reduce(flow: ImportFlowConfig, values: list[str]) -> list[str]:
    rule = flow.multi_to_single or ""
    if rule == "first":
        return values[:1]
    if rule == "last":
        return values[-1:]
    return [rule.removeprefix("join:").join(values)]


def evaluate_import_flows(
    flows: list[ImportFlowConfig],
    attrs: Attrs,
    dn: str | None = None,
    single_valued: Container[str] = (),
) -> tuple[Attrs, list[FlowIssue]]:
    """Values each import flow contributes (an empty list is a null, when allow_null) and the problems.

    ``single_valued``: metaverse attributes declared single-valued; several values for one of them are a
    ``flow-multi-values-to-single-value`` issue unless the flow sets ``multi_to_single``.
    """
    out: Attrs = {}
    issues: list[FlowIssue] = []
    bindings = None
    for f in flows:
        if f.constant is not None:
            values = _as_list(f.constant)
        elif f.template is not None:
            rendered = render(f.template, attrs)
            values = [rendered] if rendered else []
        elif f.expression is not None:
            if bindings is None:
                bindings = variables("cs", attrs) | {"dn": dn}
            try:
                values = evaluate(f.expression, bindings)
            except EvaluationError as exc:
                issues.append(FlowIssue(f.mv, "expression-error", f"flow to {f.mv}: {exc}"))
                continue
        elif f.dn_component is not None:
            component = dn_component(dn, f.dn_component)
            values = [component] if component else []
        elif f.exists is not None:
            values = ["true" if any(v != "" for v in attrs.get(f.exists, ())) else "false"]
        else:
            values = [v for v in attrs.get(f.source or "", []) if v != ""]
        if len(values) > 1 and (f.multi_to_single is not None or f.mv in single_valued):
            if f.multi_to_single is None:
                issues.append(
                    FlowIssue(
                        f.mv,
                        "flow-multi-values-to-single-value",
                        f"flow to single-valued {f.mv} got {len(values)} values; set multi_to_single "
                        "(first, last or join:<separator>) on the flow",
                    )
                )
                continue
            values = _reduce(f, values)
        if values or f.allow_null:
            out[f.mv] = values
    return out, issues


def import_flows(flows: list[ImportFlowConfig], attrs: Attrs, dn: str | None = None) -> Attrs:
    """Values each import flow contributes; a flow with a problem is left out (``evaluate_import_flows``)."""
    return evaluate_import_flows(flows, attrs, dn)[0]


def evaluate_export_flows(flows: list[ExportFlowConfig], mv_attrs: Attrs) -> tuple[Attrs, list[FlowIssue]]:
    """Target values from the metaverse and the problems; attributes left out of the result are unmanaged."""
    out: Attrs = {}
    issues: list[FlowIssue] = []
    bindings = None
    for f in flows:
        if f.constant is not None:
            values = _as_list(f.constant)
        elif f.template is not None:
            rendered = render(f.template, mv_attrs)
            values = [rendered] if rendered else []
        elif f.expression is not None:
            if bindings is None:
                bindings = variables("mv", mv_attrs)
            try:
                values = evaluate(f.expression, bindings)
            except EvaluationError as exc:
                issues.append(FlowIssue(f.target, "expression-error", f"flow to {f.target}: {exc}"))
                continue
        else:
            values = [v for v in mv_attrs.get(f.source or "", []) if v != ""]
        if values or f.allow_null:
            out[f.target] = values
    return out, issues


def export_flows(flows: list[ExportFlowConfig], mv_attrs: Attrs) -> Attrs:
    """Target values from the metaverse; attributes absent from the result are not managed."""
    return evaluate_export_flows(flows, mv_attrs)[0]
