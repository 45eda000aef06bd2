"""Whether the engine runs compiled (``scripts/compile_engine.py``, mypyc) or interpreted, and a guard
against a compiled module that no longer matches its source (Python imports an extension before a source
of the same name, so an edited, checked-out or added module would run stale or half compiled)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

import engine

ENGINE_DIR = Path(engine.__file__).resolve().parent
#: Written by the build: each compiled module's source digest (``sources``).
MANIFEST = ENGINE_DIR / ".compiled.json"


class StaleEngine(RuntimeError):
    """An engine module changed after it was compiled."""


def _extensions() -> dict[str, Path]:
    """The engine's compiled modules (and mypyc's shared runtime beside them) by module name."""
    found: dict[str, Path] = {}
    for path in sorted(ENGINE_DIR.iterdir()):
        suffix = next((s for s in importlib.machinery.EXTENSION_SUFFIXES if path.name.endswith(s)), None)
        if suffix is not None:  # the longest suffix first: ``x.cpython-311-….so`` is module ``x``
            found[path.name[: -len(suffix)]] = path
    return found


def extension_files() -> list[Path]:
    """The files a build put in ``engine/`` (``scripts/compile_engine.py --clean`` removes them)."""
    return sorted(_extensions().values())


def sources() -> dict[str, str]:
    """The SHA-256 of every engine module's source but ``__init__`` (which stays interpreted), by name."""
    return {
        p.stem: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ENGINE_DIR.glob("*.py"))
        if p.name != "__init__.py"
    }


def engine_build() -> str:
    """``compiled`` when the engine's modules are mypyc extensions, else ``interpreted``."""
    names = _extensions()
    return "compiled" if any((ENGINE_DIR / f"{name}.py").exists() for name in names) else "interpreted"


def check_engine_fresh() -> None:
    """Raise ``StaleEngine`` naming the engine modules whose source is not the one compiled (changed,
    added or removed since the build), when any module is compiled."""
    if engine_build() != "compiled":
        return
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    now = sources()
    stale = sorted(name for name in now.keys() | built.keys() if now.get(name) != built.get(name))
    if stale:
        raise StaleEngine(
            f"engine modules changed after they were compiled: {', '.join(stale)} — run "
            "`python scripts/compile_engine.py` again, or with --clean to run the engine interpreted"
        )


__all__ = ["MANIFEST", "StaleEngine", "check_engine_fresh", "engine_build", "extension_files", "sources"]
