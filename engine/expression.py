"""CEL expressions of attribute flows: evaluation of the programs ``schemas.expressions`` compiles.

Variables of an import flow: ``cs`` (attribute -> first value), ``cs_all`` (attribute -> all values) and
``dn``; of an export flow: ``mv`` and ``mv_all``. Reading an attribute the object does not have gives
null, as a template does (branch with ``has(cs.x)``). The result becomes the flow's values: a string is one
value ("" is null), a list gives one value per element, a bool "true"/"false", a number its decimal text,
a timestamp its ISO-8601 text, null no value.
"""

from __future__ import annotations

from typing import Any

import cel

from schemas.expressions import EXTENSION_FUNCTIONS, compile_expression
from schemas.records import Attrs


class EvaluationError(Exception):
    """An expression failed on one object (type error, division by zero, a result that is no value)."""


def variables(prefix: str, attrs: Attrs) -> dict[str, Any]:
    """``<prefix>`` (first values) and ``<prefix>_all`` (all values), empty values left out."""
    first: dict[str, str] = {}
    every: dict[str, list[str]] = {}
    for name, values in attrs.items():
        kept = [v for v in values if v != ""]
        if kept:
            first[name] = kept[0]
            every[name] = kept
    return {prefix: first, f"{prefix}_all": every}


def evaluate(source: str, bindings: dict[str, Any]) -> list[str]:
    """Run a compiled expression; ``EvaluationError`` for a failure that is the object's, not the rule's."""
    program = compile_expression(source)  # cached: compiled once, when the configuration loaded
    context = cel.Context(variables=bindings, functions=EXTENSION_FUNCTIONS)
    try:
        result = program.execute(context)
    except KeyError:
        return []  # an attribute the object does not have: null, as a template gives
    except Exception as exc:
        raise EvaluationError(f"{type(exc).__name__}: {_first_line(exc)}") from None
    return _values(result)


def _values(result: Any) -> list[str]:
    if result is None:
        return []
    if isinstance(result, list | tuple):
        out: list[str] = []
        for item in result:
            if isinstance(item, list | tuple | dict):
                raise EvaluationError("the result is a list of lists or maps, not attribute values")
            out.extend(_values(item))
        return out
    text = _scalar(result)
    return [text] if text != "" else []


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if hasattr(value, "isoformat") and hasattr(value, "tzinfo"):
        return str(value.isoformat())
    raise EvaluationError(f"the result is a {type(value).__name__}, not an attribute value")


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
