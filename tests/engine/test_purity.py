"""The engine is pure: no I/O libraries, no runtime packages, no clocks, no randomness."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"

#: Packages of idsync and libraries the engine must never import (I/O, runtime, connectors).
FORBIDDEN = frozenset(
    {"faust", "aiokafka", "rocksdict", "ldap3", "sqlalchemy", "mode", "connectors", "streams"}
)
#: Clocks and randomness: the engine is deterministic (replaying the imports rebuilds the same state).
NONDETERMINISTIC = frozenset({"time", "random", "datetime", "secrets"})
#: Non-stdlib packages the engine may use. ``cel`` (common-expression-language) evaluates flow
#: expressions: CEL has no clock, randomness or I/O, and only the pure extension functions are registered.
#: ``msgspec`` defines the state and message structs (``msgspec.structs.replace`` copies one): no I/O.
ALLOWED_THIRD_PARTY = frozenset({"engine", "schemas", "pydantic", "cel", "msgspec"})
#: Calls that are clocks or randomness even though their module is allowed.
NONDETERMINISTIC_CALLS = frozenset({"uuid1", "uuid4", "urandom", "getrandbits"})


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute module an AST imports, anywhere (top level, functions, try blocks), with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
            else:
                found.append((node.lineno, "engine"))  # relative import: inside the engine package
            # "from uuid import uuid4", "from os import urandom"
            found.extend(
                (node.lineno, f"<import {alias.name}>")
                for alias in node.names
                if alias.name in NONDETERMINISTIC_CALLS
            )
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in ("__import__", "import_module"):
                found.append((node.lineno, "<dynamic import>"))
            elif name in NONDETERMINISTIC_CALLS:
                found.append((node.lineno, f"<call {name}>"))
        elif isinstance(node, ast.Name) and node.id in NONDETERMINISTIC_CALLS:
            found.append((node.lineno, f"<name {node.id}>"))
    return found


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Why ``source`` would not be a pure engine module (empty when it is)."""
    problems: list[str] = []
    for line, module in imported_modules(ast.parse(source, filename)):
        where = f"{filename}:{line}"
        if module.startswith("<"):
            problems.append(f"{where}: {module}")
            continue
        top = module.split(".", 1)[0]
        if top in FORBIDDEN:
            problems.append(f"{where}: imports {module} (I/O or runtime)")
        elif top in NONDETERMINISTIC:
            problems.append(f"{where}: imports {module} (clock or randomness)")
        elif top == "__future__" or top in ALLOWED_THIRD_PARTY:
            continue
        elif top not in sys.stdlib_module_names:
            problems.append(
                f"{where}: imports {module} (not stdlib, engine, schemas, pydantic, cel or msgspec)"
            )
    return problems


def engine_modules() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def test_engine_modules_found() -> None:
    names = {p.name for p in engine_modules()}
    assert {"staging.py", "join.py", "metaverse.py", "values.py", "export.py"} <= names


@pytest.mark.parametrize("path", engine_modules(), ids=lambda p: p.name)
def test_engine_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8"), str(path.relative_to(ENGINE.parent))) == []


# --------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize(
    "snippet",
    [
        "import faust",
        "import aiokafka.producer",
        "from rocksdict import Rdict",
        "import ldap3 as l",
        "from sqlalchemy.orm import Session",
        "import mode",
        "from connectors.ldap import connector",
        "from streams.runtime import now_ms",
        "import time",
        "from time import monotonic",
        "import random",
        "from random import choice",
        "import datetime as dt",
        "from datetime import datetime",
        "import secrets",
        "import requests",
        "import os, time",
        "def f():\n    import time\n    return time.time()",
        "class C:\n    def m(self):\n        from datetime import datetime\n        return datetime.now()",
        "try:\n    import ldap3\nexcept ImportError:\n    ldap3 = None",
        "if False:\n    from streams import app",
        "m = __import__('faust')",
        "import importlib\nm = importlib.import_module('time')",
        "import uuid\nx = uuid.uuid4()",
        "from uuid import uuid4",
        "import os\nb = os.urandom(4)",
    ],
)
def test_checker_rejects(snippet: str) -> None:
    assert violations(snippet) != []


@pytest.mark.parametrize(
    "snippet",
    [
        "from __future__ import annotations",
        "import unicodedata\nfrom collections.abc import Iterable",
        "from dataclasses import dataclass, field",
        "import uuid\nx = uuid.uuid5(uuid.NAMESPACE_URL, 'a')",
        "from engine.values import dn_key",
        "from . import values",
        "from schemas.records import ChangeRecord",
        "from pydantic import BaseModel",
        "from msgspec.structs import replace",
        "timestamp = 3  # a name that merely looks like time",
    ],
)
def test_checker_accepts(snippet: str) -> None:
    assert violations(snippet) == []


def test_checker_reports_file_and_line() -> None:
    [problem] = violations("x = 1\n\nimport time\n", "engine/bad.py")
    assert problem.startswith("engine/bad.py:3:") and "time" in problem
