"""The expression language of attribute flows: CEL (Common Expression Language), through the Rust
implementation in the ``common-expression-language`` package.

This module defines the language as the configuration sees it (which functions exist) and compiles
expressions, so a bad expression is a configuration error at load time. ``engine.expression`` evaluates
compiled programs. Every function offered is pure: CEL itself has no clock, no randomness and no I/O, and
the extension functions (strings, lists, math, sets, base64) are deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import cel
from cel.stdlib import STDLIB_FUNCTIONS

#: Functions the CEL runtime itself implements (besides operators and macros such as has/all/exists/map).
NATIVE_FUNCTIONS = frozenset(
    {
        "size",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "type",
        "dyn",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "getFullYear",
        "getMonth",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)

#: Extension functions registered for every evaluation (cel-go's strings, lists, math, sets, encoders).
EXTENSION_FUNCTIONS: dict[str, Callable[..., Any]] = dict(STDLIB_FUNCTIONS)

# A program reports a namespaced function ("math.greatest") by its last segment.
_KNOWN = NATIVE_FUNCTIONS | set(EXTENSION_FUNCTIONS) | {n.rsplit(".", 1)[-1] for n in EXTENSION_FUNCTIONS}
# Operators and macro internals: "_+_", "!_", "-_", "_[_]", "_?_:_", "@in", "@not_strictly_false".
_OPERATOR = re.compile(r"^(@.*|[^A-Za-z0-9]*_[^A-Za-z0-9]*)$")

#: Variables of an import flow expression.
IMPORT_VARIABLES = ("cs", "cs_all", "dn")
#: Variables of an export flow expression.
EXPORT_VARIABLES = ("mv", "mv_all")


class ExpressionError(ValueError):
    """An expression that does not compile, or names a function that does not exist."""


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> cel.Program:
    """Compile a CEL expression; ``ExpressionError`` says why it cannot be used (one line)."""
    if not source.strip():
        raise ExpressionError("empty expression")
    try:
        program = cel.compile(source)
    except ValueError as exc:
        raise ExpressionError(_one_line(str(exc))) from None
    unknown = sorted(f for f in program.functions() if f not in _KNOWN and not _OPERATOR.match(f))
    if unknown:
        raise ExpressionError(f"undefined function {', '.join(repr(u) for u in unknown)}")
    return program


def _one_line(message: str) -> str:
    """cel reports a parse error over several lines (with a caret picture); keep the first one, shortened:
    ``syntax error at 1:4: mismatched input '<EOF>' expecting ...``."""
    first = message.splitlines()[0] if message else "syntax error"
    _, marker, detail = first.partition("ERROR: <input>:")
    if not marker:
        return first
    where, _, what = detail.partition(": ")
    what = what.removeprefix("Syntax error: ")
    return f"syntax error at {where.strip()}: {what.strip()}"
