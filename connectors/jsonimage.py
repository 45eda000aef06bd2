"""JSON objects as connector-space images, the one set of rules the JSON Lines and Kafka connectors share
(docs/connectors/files.md):

- a string is one value; a number or boolean is one value as JSON writes it (``42``, ``1.5``, ``true``);
- an array of scalars is a multi-valued attribute (duplicates dropped, ``null`` items skipped);
- a nested object is flattened into dotted names: ``{"address": {"city": "Oslo"}}`` -> ``address.city``;
- an array holding objects or arrays keeps each such item as compact JSON text (sorted keys);
- ``null``, ``[]`` and ``{}`` are no value: the attribute is absent.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.records import Attrs


class Bad(Exception):
    """Input that cannot become an object: the import error type and a message (the caller makes it an
    ``ImportFailure`` with its locator and goes on)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def reject_constant(name: str) -> Any:
    """``parse_constant`` for ``json.loads``: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    # bool before int: json spells them true/false; floats as JSON writes them (1e3 -> 1000.0).
    return json.dumps(value)


def flatten(obj: dict[str, Any], malformed: str, whole: str) -> Attrs:
    """The attributes of one JSON object. Raises ``Bad``: ``malformed`` (error type) for an empty field
    name (``whole`` names the top-level object in the message), ``import-attribute-clash`` when a dotted
    name is given twice."""
    out: Attrs = {}
    _flatten(obj, "", out, malformed, whole)
    return out


def _flatten(obj: dict[str, Any], prefix: str, out: Attrs, malformed: str, whole: str) -> None:
    for key, value in obj.items():
        if not key:
            raise Bad(malformed, f"empty field name in {prefix.rstrip('.') or whole}")
        name = prefix + key
        if isinstance(value, dict):
            _flatten(value, name + ".", out, malformed, whole)
            continue
        if value is None:
            values: list[str] = []
        elif isinstance(value, list):
            items = (
                json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
                if isinstance(v, dict | list)
                else scalar(v)
                for v in value
                if v is not None
            )
            values = list(dict.fromkeys(items))
        else:
            values = [scalar(value)]
        if not values:
            continue
        if name in out:
            raise Bad("import-attribute-clash", f"field {name!r} is given twice (once as a nested field)")
        out[name] = values


def single(image: Attrs, field: str, what: str, error_type: str) -> str:
    """The one non-empty value of ``field`` (an anchor, an object type), else ``Bad(error_type)``."""
    values = image.get(field, [])
    if len(values) > 1:
        raise Bad(error_type, f"{what} field {field!r} holds {len(values)} values, not one")
    value = values[0].strip() if values else ""
    if not value:
        raise Bad(error_type, f"no {what}: field {field!r} is missing, null or empty")
    return value
