"""Flat idsync attributes <-> SCIM resources: flattening, POST bodies, PATCH operations, local PUT edits.

Pure functions over a ``ResourceMapping`` (one object type resolved against the server's schemas); no I/O.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.scim.paths import (
    RFC_MULTI_VALUED,
    RFC_TYPES,
    ScimPath,
    UnmappableValue,
    from_text,
    get_ci,
    key_ci,
    to_text,
)
from schemas.errors import DataError
from schemas.records import AttrChange, Attrs

PatchOp = dict[str, Any]


class Kind(enum.Enum):
    """How a path is written."""

    #: One value: ``userName``, ``name.givenName``, ``urn:...:manager.value``.
    SINGLE = "single"
    #: The sub-attribute of the element a filter selects: ``emails[type eq "work"].value``.
    FILTERED = "filtered"
    #: Every element of a multi-valued attribute: ``members.value``; changed value by value.
    MULTI = "multi"


@dataclass(frozen=True, slots=True)
class MappedAttribute:
    name: str
    path: ScimPath
    kind: Kind
    #: SCIM type of the leaf (string, boolean, integer, decimal, dateTime, reference, binary).
    scim_type: str = "string"
    required: bool = False
    #: The leaf is a reference to another resource (``members.value``, ``manager.value``).
    reference: bool = False
    #: The server enforces unique values (schema ``uniqueness`` server / global): a duplicate create is a 409.
    unique: bool = False


@dataclass(frozen=True, slots=True)
class ResourceMapping:
    """One idsync object type resolved against the server: endpoint, schemas, attribute paths."""

    object_type: str
    resource_type: str
    endpoint: str
    core_schema: str
    attributes: dict[str, MappedAttribute] = field(default_factory=dict)
    #: idsync attribute that finds an existing resource after a 409 on create.
    match: str | None = None

    def locator(self, anchor: str | None) -> str:
        return f"{self.resource_type}/{anchor or '?'}"

    def attribute(self, name: str) -> MappedAttribute:
        mapped = self.attributes.get(name)
        if mapped is None:
            raise DataError(
                f"Attribute {name!r} has no SCIM mapping for object type {self.object_type!r} "
                f"({self.resource_type})",
                error_type="schema-violation",
            )
        return mapped


# ---------------------------------------------------------------------------------------- resolution
def _attr_def(schemas: Mapping[str, Any], urn: str, name: str) -> Mapping[str, Any] | None:
    schema = schemas.get(urn.lower())
    if not isinstance(schema, Mapping):
        return None
    for attr in schema.get("attributes") or []:
        if isinstance(attr, Mapping) and str(attr.get("name", "")).lower() == name.lower():
            return attr
    return None


def _sub_def(attr: Mapping[str, Any] | None, name: str | None) -> Mapping[str, Any] | None:
    if attr is None or name is None:
        return None
    for sub in attr.get("subAttributes") or []:
        if isinstance(sub, Mapping) and str(sub.get("name", "")).lower() == name.lower():
            return sub
    return None


def resolve_attribute(
    name: str, raw_path: str, core_schema: str, schemas: Mapping[str, Any]
) -> MappedAttribute:
    """A mapping entry typed by the server's schemas (keys: lower-cased URNs), RFC 7643 defaults otherwise."""
    path = ScimPath.parse(raw_path)
    top = _attr_def(schemas, path.urn or core_schema, path.attr)
    sub = _sub_def(top, path.sub)
    leaf = sub if path.sub is not None else top
    multi = bool(top.get("multiValued")) if top is not None else path.attr.lower() in RFC_MULTI_VALUED
    if path.filter is not None:
        kind = Kind.FILTERED
    elif multi:
        kind = Kind.MULTI
    else:
        kind = Kind.SINGLE
    fallback = RFC_TYPES.get((path.attr.lower(), None if path.sub is None else path.sub.lower()), "string")
    scim_type = str(leaf.get("type", fallback)) if leaf is not None else fallback
    reference = scim_type == "reference" or (
        path.sub is not None and path.sub.lower() == "value" and _sub_def(top, "$ref") is not None
    )
    required = bool(leaf.get("required")) if leaf is not None and kind is Kind.SINGLE else False
    if leaf is not None:
        unique = str(leaf.get("uniqueness", "none")).lower() in ("server", "global")
    else:
        unique = (path.urn, path.attr.lower(), path.sub) == (None, "username", None)  # RFC 7643 §4.1.1
    return MappedAttribute(name, path, kind, scim_type, required, reference, unique)


# ---------------------------------------------------------------------------------------- import
def flatten(mapping: ResourceMapping, resource: Mapping[str, Any]) -> Attrs:
    """The idsync attributes of a resource; raises UnmappableValue naming the attribute at fault."""
    out: Attrs = {}
    for name, mapped in mapping.attributes.items():
        try:
            values = [to_text(v) for v in mapped.path.read(resource)]
        except UnmappableValue as exc:
            raise UnmappableValue(f"attribute {name!r} ({mapped.path.raw}): {exc}") from None
        if values:
            out[name] = values
    return out


def current_values(mapped: MappedAttribute, resource: Mapping[str, Any]) -> list[str]:
    try:
        return [to_text(v) for v in mapped.path.read(resource)]
    except UnmappableValue as exc:
        raise DataError(f"Cannot read {mapped.name!r}: {exc}", error_type="schema-violation") from None


def to_json(mapped: MappedAttribute, values: list[str]) -> list[Any]:
    """idsync values as JSON values of the attribute's SCIM type; DataError when one does not parse."""
    out: list[Any] = []
    for value in values:
        try:
            out.append(from_text(value, mapped.scim_type))
        except ValueError as exc:
            raise DataError(
                f"Attribute {mapped.name!r} ({mapped.path.raw}, {mapped.scim_type}): {exc}",
                error_type="schema-violation",
            ) from None
    return out


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _single(mapped: MappedAttribute, values: list[str]) -> list[str]:
    values = _dedupe(values)
    if mapped.kind is not Kind.MULTI and len(values) > 1:
        raise DataError(
            f"Attribute {mapped.name!r} ({mapped.path.raw}) is single-valued; got {len(values)} values",
            error_type="schema-violation",
        )
    return values


def desired(mapped: MappedAttribute, change: AttrChange, current: list[str]) -> list[str]:
    """The values the attribute should hold after ``change`` applied to ``current``."""
    values = _single(mapped, change.values) if change.op != "delete" else _dedupe(change.values)
    if change.op == "replace":
        return values
    if change.op == "add":
        if mapped.kind is Kind.MULTI:
            return _dedupe(current + values)
        return values or current
    if not values:
        return []
    return [v for v in current if v not in values]


# ---------------------------------------------------------------------------------------- local edits
def _holder(doc: dict[str, Any], path: ScimPath, create: bool) -> dict[str, Any] | None:
    if path.urn is None:
        return doc
    key = key_ci(doc, path.urn)
    ext = doc.get(key)
    if not isinstance(ext, dict):
        if not create:
            return None
        ext = doc[key] = {}
        schemas = doc.setdefault("schemas", [])
        if isinstance(schemas, list) and path.urn.lower() not in {str(s).lower() for s in schemas}:
            schemas.append(path.urn)
    return ext


def set_values(doc: dict[str, Any], mapped: MappedAttribute, values: list[Any]) -> None:
    """Make ``doc`` hold exactly ``values`` (JSON) at the attribute's path, keeping unrelated data."""
    path = mapped.path
    holder = _holder(doc, path, create=bool(values))
    if holder is None:
        return
    key = key_ci(holder, path.attr)
    if mapped.kind is Kind.SINGLE:
        if path.sub is None:
            if values:
                holder[key] = values[0]
            else:
                holder.pop(key, None)
            return
        obj = holder.get(key)
        if not isinstance(obj, dict):
            if not values:
                return
            obj = holder[key] = {}
        sub_key = key_ci(obj, path.sub)
        if values:
            obj[sub_key] = values[0]
        else:
            obj.pop(sub_key, None)
            if not obj:
                holder.pop(key, None)
        return
    existing = holder.get(key)
    elements: list[Any] = list(existing) if isinstance(existing, list) else []
    if mapped.kind is Kind.FILTERED:
        assert path.filter is not None and path.sub is not None
        found = [e for e in elements if path.matches(e)]
        if values:
            if found:
                found[0][key_ci(found[0], path.sub)] = values[0]
                elements = [e for e in elements if e is found[0] or not path.matches(e)]
            else:
                elements.append({path.filter[0]: path.filter[1], path.sub: values[0]})
        else:
            elements = [e for e in elements if not path.matches(e)]
    elif path.sub is None:
        elements = list(values)
    else:
        wanted = {to_text(v) for v in values}
        kept: list[Any] = []
        have: set[str] = set()
        for element in elements:
            leaf = get_ci(element, path.sub) if isinstance(element, Mapping) else None
            text = to_text(leaf) if leaf is not None and not isinstance(leaf, Mapping | list) else None
            if text is not None and text in wanted and text not in have:
                kept.append(element)
                have.add(text)
        kept.extend({path.sub: v} for v in values if to_text(v) not in have)
        elements = kept
    if elements:
        holder[key] = elements
    else:
        holder.pop(key, None)


def build_resource(mapping: ResourceMapping, attributes: Mapping[str, AttrChange]) -> dict[str, Any]:
    """The POST body creating a resource with these attribute values (empty ones left out)."""
    doc: dict[str, Any] = {"schemas": [mapping.core_schema]}
    for name, change in attributes.items():
        mapped = mapping.attribute(name)
        if change.op == "delete" or not change.values:
            continue  # an add never removes
        set_values(doc, mapped, to_json(mapped, _single(mapped, change.values)))
    return doc


def apply_local(
    mapping: ResourceMapping, resource: Mapping[str, Any], changes: Mapping[str, AttrChange]
) -> dict[str, Any]:
    """A copy of ``resource`` with ``changes`` applied (for servers without PATCH: GET + PUT)."""
    doc = copy.deepcopy(dict(resource))
    for name, change in changes.items():
        mapped = mapping.attribute(name)
        want = desired(mapped, change, current_values(mapped, doc))
        set_values(doc, mapped, to_json(mapped, want))
    return doc


# ---------------------------------------------------------------------------------------- PATCH
def needs_state(mapped: MappedAttribute, change: AttrChange) -> bool:
    """Whether the PATCH for ``change`` depends on what the resource holds now.

    Value-level changes of multi-valued attributes (``add``/``delete`` of members) do not: RFC 7644 makes
    an ``add`` of a present value a no-op, so a one-member change never needs the whole group.
    """
    if mapped.kind is Kind.FILTERED:
        return True
    if mapped.kind is Kind.SINGLE:
        return change.op == "delete" and bool(change.values)
    return change.op == "replace" and mapped.path.sub is not None


def _element_exists(mapped: MappedAttribute, resource: Mapping[str, Any]) -> bool:
    top = mapped.path.raw_top(resource)
    elements = top if isinstance(top, list) else [] if top is None else [top]
    return any(mapped.path.matches(e) for e in elements)


def plan_patch(
    mapping: ResourceMapping,
    changes: Mapping[str, AttrChange],
    state: Mapping[str, Any] | None,
    covered: frozenset[str] | None = None,
) -> list[PatchOp]:
    """RFC 7644 §3.5.2 operations taking the resource to the requested state.

    ``state`` is the resource as read; ``covered`` the top-level attributes that read asked for (None: all).
    Where the state covers an attribute, its operations are the exact difference (none when nothing is to
    do); elsewhere only ``needs_state``-free changes may be planned, whose operations are idempotent as
    they stand.
    """
    ops: list[PatchOp] = []
    for name, change in changes.items():
        mapped = mapping.attribute(name)
        known = state is not None and (covered is None or mapped.path.top.lower() in covered)
        if not known and needs_state(mapped, change):
            raise AssertionError(f"{name}: planning needs the resource's current state")
        current = current_values(mapped, state) if known and state is not None else None
        ops.extend(_plan_one(mapped, change, current, state if known else None))
    return ops


def _plan_one(
    mapped: MappedAttribute,
    change: AttrChange,
    current: list[str] | None,
    state: Mapping[str, Any] | None,
) -> list[PatchOp]:
    path = mapped.path
    if change.op == "add" and not change.values:
        return []
    if mapped.kind is Kind.SINGLE:
        if current is not None:
            want = desired(mapped, change, current)
        elif change.op == "delete":
            want = []  # delete without values (needs_state covers deletes of a given value)
        else:
            want = _single(mapped, change.values)
        if want:
            if current is not None and current == want:
                return []
            return [{"op": "replace", "path": path.raw, "value": to_json(mapped, want)[0]}]
        if current is not None and not current:
            return []
        return [{"op": "remove", "path": path.raw}]

    if mapped.kind is Kind.FILTERED:
        assert current is not None and state is not None and path.filter is not None and path.sub
        want = desired(mapped, change, current)
        if want == current:
            return []
        if want:
            if _element_exists(mapped, state):
                return [{"op": "replace", "path": path.raw, "value": to_json(mapped, want)[0]}]
            element = {path.filter[0]: path.filter[1], path.sub: to_json(mapped, want)[0]}
            return [{"op": "add", "path": path.top, "value": [element]}]
        return [{"op": "remove", "path": path.selector()}]

    # Kind.MULTI: value by value, so a one-member change is one operation.
    values = _dedupe(change.values)
    if change.op == "replace":
        if path.sub is None and current is None:
            if not values:
                return [{"op": "remove", "path": path.top}]
            return [{"op": "replace", "path": path.top, "value": to_json(mapped, values)}]
        assert current is not None
        if not values:
            return [{"op": "remove", "path": path.top}] if current else []
        to_add = [v for v in values if v not in current]
        to_remove = [v for v in _dedupe(current) if v not in values]
    elif change.op == "add":
        to_add = [v for v in values if current is None or v not in current]
        to_remove = []
    else:
        if not values:
            return [] if current is not None and not current else [{"op": "remove", "path": path.top}]
        to_add = []
        to_remove = [v for v in values if current is None or v in current]
    ops: list[PatchOp] = []
    if to_add:
        json_values = to_json(mapped, to_add)
        items = json_values if path.sub is None else [{path.sub: v} for v in json_values]
        ops.append({"op": "add", "path": path.top, "value": items})
    for value in to_json(mapped, to_remove):
        ops.append({"op": "remove", "path": path.value_selector(value)})
    return ops
