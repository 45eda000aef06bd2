"""The engine compiled with mypyc (scripts/compile_engine.py) behaves as the interpreted one: a copy of the
project is compiled and runs the engine and schema tests; a module changed after the build is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", "__pycache__", "*.so", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", ".idsync",
    "idsync-data", "bench-results", "docs", ".compiled.json",
)  # fmt: skip


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


COMPILER = (sysconfig.get_config_var("CC") or "cc").split()[0]


@pytest.mark.skipif(shutil.which(COMPILER) is None, reason=f"no C compiler ({COMPILER})")
def test_the_compiled_engine_passes_the_engine_tests_and_a_stale_build_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "idsync"
    shutil.copytree(ROOT, copy, ignore=SKIP)
    built = _run(copy, "scripts/compile_engine.py")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-4000:]
    which = _run(
        copy, "-c", "import engine.metaverse as m, streams.native as n; print(m.__file__, n.engine_build())"
    )
    assert which.returncode == 0, which.stderr[-2000:]
    where, build = which.stdout.split()
    assert where.startswith(str(copy / "engine")) and where.endswith(sysconfig.get_config_var("EXT_SUFFIX"))
    assert build == "compiled"

    tests = _run(copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/engine", "tests/schemas",
                 "--deselect", "tests/engine/test_native.py")  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-6000:]
    summary = tests.stdout.strip().splitlines()[-1]
    assert " passed" in summary and " failed" not in summary, summary
    # The tests that replace engine functions are skipped there, and only those.
    assert "6 skipped" in summary, summary

    source = copy / "engine" / "flow.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    stale = _run(copy, "-m", "streams.cli", "check-config", "-c", "streams/samples/demo.yaml")
    assert stale.returncode == 2
    assert "engine modules changed after they were compiled: flow" in stale.stderr

    cleaned = _run(copy, "scripts/compile_engine.py", "--clean")
    assert cleaned.returncode == 0 and not list((copy / "engine").glob("*.so"))
    assert not (copy / "engine" / ".compiled.json").exists()
    interpreted = _run(copy, "-m", "streams.cli", "check-config", "-c", "streams/samples/demo.yaml")
    assert "changed after they were compiled" not in interpreted.stderr
