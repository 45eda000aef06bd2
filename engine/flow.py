"""Attribute flow: import flows (connector space -> metaverse) and export flows (metaverse -> target)."""

from __future__ import annotations

from engine.values import render
from schemas.config import ExportFlowConfig, ImportFlowConfig
from schemas.records import Attrs


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def import_flows(flows: list[ImportFlowConfig], attrs: Attrs) -> Attrs:
    """Values each import flow contributes; an empty list is a null contribution (when allow_null)."""
    out: Attrs = {}
    for f in flows:
        if f.constant is not None:
            values = _as_list(f.constant)
        elif f.template is not None:
            rendered = render(f.template, attrs)
            values = [rendered] if rendered else []
        else:
            values = [v for v in attrs.get(f.source or "", []) if v != ""]
        if values or f.allow_null:
            out[f.mv] = values
    return out


def export_flows(flows: list[ExportFlowConfig], mv_attrs: Attrs) -> Attrs:
    """Target values from the metaverse; attributes absent from the result are not managed."""
    out: Attrs = {}
    for f in flows:
        if f.constant is not None:
            values = _as_list(f.constant)
        elif f.template is not None:
            rendered = render(f.template, mv_attrs)
            values = [rendered] if rendered else []
        else:
            values = [v for v in mv_attrs.get(f.source or "", []) if v != ""]
        if values or f.allow_null:
            out[f.target] = values
    return out
