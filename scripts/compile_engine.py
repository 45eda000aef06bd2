"""Compile ``engine/`` with mypyc: the same modules as C extensions next to their sources.

    python scripts/compile_engine.py           # build (needs mypy, from the dev extra, and a C compiler)
    python scripts/compile_engine.py --clean   # remove the extensions: the engine is interpreted again

The engine's steps are about a third of a worker's CPU during a load; compiled they take about half as
long (docs/benchmarks.md, thirty-fourth session). Python imports an extension before a source of the same
name, so a module changed after the build would run stale: the build records each source's digest
(``engine/.compiled.json``) and ``streams.native.check_engine_fresh`` (called by every ``idsync`` command
and the tests) refuses to run when a source no longer matches. ``engine/__init__.py`` stays interpreted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.native import ENGINE_DIR, MANIFEST, extension_files, sources  # noqa: E402

#: The name of the extension that holds mypyc's shared runtime for the engine's modules (inside the package).
GROUP = "engine.native"


def clean() -> None:
    for path in extension_files():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    # The modules compiled are the ones recorded: ``streams.native.check_engine_fresh`` compares with it.
    digests = sources()
    warnings.simplefilter("ignore")  # setuptools reads pyproject.toml's [tool.setuptools] (beta)
    paths = [str((ENGINE_DIR / f"{name}.py").relative_to(ROOT)) for name in digests]
    with tempfile.TemporaryDirectory(prefix="idsync-mypyc-") as tmp:
        setup(
            name="idsync-engine",
            packages=[],
            ext_modules=mypycify(paths, group_name=GROUP, opt_level="3", target_dir=tmp),
            script_args=["-q", "build_ext", "--inplace", "--build-temp", tmp, "--build-lib", tmp],
        )
    MANIFEST.write_text(json.dumps(digests, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    os.chdir(ROOT)  # mypycify takes paths relative to the project
    if args.clean:
        clean()
        print("engine: interpreted (compiled modules removed)")
        return 0
    build()
    print(f"engine: compiled with mypyc ({len(extension_files())} extensions in engine/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
