"""Whether the engine runs compiled (``scripts/compile_engine.py``, mypyc) or interpreted, and a guard
against a compiled module older than its source (Python would import the extension and run stale code)."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import engine

ENGINE_DIR = Path(engine.__file__).resolve().parent


class StaleEngine(RuntimeError):
    """An engine module changed after it was compiled."""


def _extensions() -> dict[str, Path]:
    """The engine's compiled modules by name."""
    found: dict[str, Path] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in ENGINE_DIR.glob(f"*{suffix}"):
            found[path.name[: -len(suffix)]] = path
    return found


def engine_build() -> str:
    """``compiled`` when the engine's modules are mypyc extensions, else ``interpreted``."""
    names = _extensions()
    return "compiled" if any((ENGINE_DIR / f"{name}.py").exists() for name in names) else "interpreted"


def check_engine_fresh() -> None:
    """Raise ``StaleEngine`` naming the modules whose source is newer than their compiled extension, or
    that have no extension while others do (added after the build)."""
    built = _extensions()
    modules = {p.stem: p for p in ENGINE_DIR.glob("*.py") if p.name != "__init__.py"}
    compiled = {name for name in built if name in modules}
    if not compiled:
        return
    stale = sorted(
        name
        for name, source in modules.items()
        if name not in compiled or source.stat().st_mtime > built[name].stat().st_mtime
    )
    if stale:
        raise StaleEngine(
            f"engine modules changed after they were compiled: {', '.join(stale)} — run "
            "`python scripts/compile_engine.py` again, or with --clean to run the engine interpreted"
        )


__all__ = ["StaleEngine", "check_engine_fresh", "engine_build"]
