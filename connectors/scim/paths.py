"""SCIM attribute paths (RFC 7644 §3.10) as the connector maps them to flat idsync attributes.

A mapping path is one of::

    userName                                  a simple attribute
    name.givenName                            a sub-attribute of a complex attribute
    emails[type eq "work"].value              a sub-attribute of the element a filter selects
    members.value                             the sub-attribute of every element (multi-valued)
    urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value
                                              any of the above inside a schema extension

The filter is one ``eq`` comparison with a string, ``true``/``false`` or a number. Names are matched
case-insensitively, as RFC 7643 §2.1 says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"

_NAME = r"[A-Za-z$][\w$-]*"
_PATH = re.compile(
    rf"^(?P<attr>{_NAME})"
    rf"(?:\[\s*(?P<fsub>{_NAME})\s+eq\s+(?P<flit>\"(?:[^\"\\]|\\.)*\"|true|false|-?\d+(?:\.\d+)?)\s*\])?"
    rf"(?:\.(?P<sub>{_NAME}))?$",
    re.IGNORECASE,
)

#: Multi-valued attributes of RFC 7643 (used when the server's /Schemas cannot be read).
RFC_MULTI_VALUED = frozenset(
    {
        "emails",
        "phonenumbers",
        "ims",
        "photos",
        "addresses",
        "groups",
        "entitlements",
        "roles",
        "x509certificates",
        "members",
        "schemas",
    }
)
#: Non-string attribute types of RFC 7643 (same fallback): (attribute, sub-attribute) -> SCIM type.
RFC_TYPES: dict[tuple[str, str | None], str] = {
    ("active", None): "boolean",
    ("primary", None): "boolean",
}


class UnmappableValue(ValueError):
    """A resource holds something at a mapped path that is not a plain value (an object, a nested list)."""


@dataclass(frozen=True, slots=True)
class ScimPath:
    """One parsed mapping path."""

    raw: str
    #: Schema extension URN, or None for the resource type's core schema.
    urn: str | None
    attr: str
    #: ``(sub-attribute, literal)`` of the ``[sub eq literal]`` filter, if any.
    filter: tuple[str, str | bool | int | float] | None
    sub: str | None

    @classmethod
    def parse(cls, raw: str) -> ScimPath:
        """Parse a mapping path; ValueError with a readable reason when it is not one."""
        text = raw.strip()
        urn: str | None = None
        if text.lower().startswith("urn:"):
            head = text.split("[", 1)[0]
            cut = head.rfind(":")
            urn, text = text[:cut], text[cut + 1 :]
            if not urn.count(":") >= 2:
                raise ValueError(f"{raw!r}: a schema URN needs at least 'urn:<nid>:<name>'")
        m = _PATH.match(text)
        if m is None:
            raise ValueError(
                f'{raw!r} is not a supported SCIM path (attr, attr.sub, attr[sub eq "v"].sub, '
                f"optionally prefixed by a schema URN)"
            )
        flt: tuple[str, str | bool | int | float] | None = None
        if m.group("fsub"):
            lit = m.group("flit")
            literal: str | bool | int | float = json.loads(lit if lit.startswith('"') else lit.lower())
            flt = (m.group("fsub"), literal)
            if m.group("sub") is None:
                raise ValueError(f"{raw!r}: a filtered path needs a sub-attribute, e.g. emails[...].value")
        return cls(raw=raw.strip(), urn=urn, attr=m.group("attr"), filter=flt, sub=m.group("sub"))

    # ------------------------------------------------------------------ naming
    @property
    def top(self) -> str:
        """The top-level attribute as a request's ``attributes`` parameter names it."""
        return f"{self.urn}:{self.attr}" if self.urn else self.attr

    def element_filter(self) -> str:
        """``sub eq literal`` of the filter, in SCIM filter syntax."""
        assert self.filter is not None
        return f"{self.filter[0]} eq {json.dumps(self.filter[1])}"

    def selector(self) -> str:
        """The PATCH path of the filter-selected element (without the trailing sub-attribute)."""
        return f"{self.top}[{self.element_filter()}]"

    def value_selector(self, value: Any, sub: str | None = None) -> str:
        """The PATCH path of the element whose ``sub`` (default: the path's sub or ``value``) is ``value``."""
        return f"{self.top}[{sub or self.sub or 'value'} eq {json.dumps(value)}]"

    # ------------------------------------------------------------------ reading
    def container(self, resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The object holding ``attr``: the resource, or its extension object."""
        if self.urn is None:
            return resource
        ext = get_ci(resource, self.urn)
        return ext if isinstance(ext, Mapping) else None

    def raw_top(self, resource: Mapping[str, Any]) -> Any:
        holder = self.container(resource)
        return None if holder is None else get_ci(holder, self.attr)

    def matches(self, element: Any) -> bool:
        if self.filter is None:
            return True
        if not isinstance(element, Mapping):
            return False
        have = get_ci(element, self.filter[0])
        want = self.filter[1]
        if isinstance(want, str) and isinstance(have, str):
            return (
                have.casefold() == want.casefold()
            )  # caseExact is false for the usual filter sub-attributes
        return bool(have == want)

    def read(self, resource: Mapping[str, Any]) -> list[Any]:
        """The JSON leaf values at this path (empty when absent); UnmappableValue for non-leaf values."""
        top = self.raw_top(resource)
        if top is None:
            return []
        elements = top if isinstance(top, list) else [top]
        out: list[Any] = []
        for element in elements:
            if not self.matches(element):
                continue
            value = element
            if self.sub is not None:
                if not isinstance(element, Mapping):
                    raise UnmappableValue(f"{self.raw}: {self.attr!r} holds a plain value, not an object")
                value = get_ci(element, self.sub)
            if value is None:
                continue
            if isinstance(value, Mapping | list):
                raise UnmappableValue(f"{self.raw}: holds an object or a list, not a plain value")
            out.append(value)
        return out


def get_ci(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]``, with the key matched case-insensitively (SCIM attribute names are)."""
    if name in obj:
        return obj[name]
    lname = name.lower()
    for key, value in obj.items():
        if key.lower() == lname:
            return value
    return None


def key_ci(obj: Mapping[str, Any], name: str) -> str:
    """The key ``obj`` uses for ``name`` (case-insensitively), or ``name`` itself when absent."""
    lname = name.lower()
    return next((k for k in obj if k.lower() == lname), name)


def to_text(value: Any) -> str:
    """A JSON leaf as an idsync value: booleans ``true``/``false``, numbers in JSON notation."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    raise UnmappableValue(f"unexpected JSON value of type {type(value).__name__}")


def from_text(value: str, scim_type: str) -> Any:
    """An idsync value as the JSON of a SCIM attribute type; ValueError when it does not parse."""
    if scim_type == "boolean":
        folded = value.strip().lower()
        if folded not in ("true", "false"):
            raise ValueError(f"{value!r} is not a boolean (true/false)")
        return folded == "true"
    if scim_type == "integer":
        return int(value)
    if scim_type == "decimal":
        return float(value)
    return value


# ---------------------------------------------------------------------------------------- default mappings
DEFAULT_USER_ATTRIBUTES: dict[str, str] = {
    "userName": "userName",
    "externalId": "externalId",
    "displayName": "displayName",
    "givenName": "name.givenName",
    "familyName": "name.familyName",
    "title": "title",
    "email": 'emails[type eq "work"].value',
    "active": "active",
    "employeeNumber": f"{ENTERPRISE_USER}:employeeNumber",
    "department": f"{ENTERPRISE_USER}:department",
    "manager": f"{ENTERPRISE_USER}:manager.value",
}
DEFAULT_GROUP_ATTRIBUTES: dict[str, str] = {
    "displayName": "displayName",
    "externalId": "externalId",
    "members": "members.value",
}
DEFAULT_ATTRIBUTES: dict[str, dict[str, str]] = {
    "User": DEFAULT_USER_ATTRIBUTES,
    "Group": DEFAULT_GROUP_ATTRIBUTES,
}
#: The SCIM attribute that identifies an existing resource after a 409 on create.
DEFAULT_MATCH_PATH: dict[str, str] = {"User": "userName", "Group": "displayName"}
DEFAULT_ENDPOINTS: dict[str, str] = {"User": "/Users", "Group": "/Groups"}
DEFAULT_CORE_SCHEMAS: dict[str, str] = {"User": CORE_USER, "Group": CORE_GROUP}
