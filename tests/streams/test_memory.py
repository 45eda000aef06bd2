"""streams.memory: glibc malloc settings that give freed large blocks back to the system."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

ROOT = Path(__file__).resolve().parents[2]

#: A pipeline's pattern in small: a large block freed (glibc then raises its mmap threshold), then large
#: blocks interleaved with small live ones, the large ones freed. Prints what was applied and how much
#: freed memory the heap keeps.
PROBE = """
import ctypes, json, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = {}
if sys.argv[1] == "tuned":
    from streams.memory import tune_malloc
    applied = tune_malloc()
first = bytearray(1 << 20)
del first
large, small = [], []
for _ in range(200):
    large.append(bytearray(1 << 20))
    small.append(bytearray(600))
del large
print(json.dumps({"applied": applied, "heap_free_mib": libc.mallinfo2().fordblks >> 20}))
"""


def probe(mode: str, **env: str) -> tuple[dict[str, int], int]:
    """(settings applied, MiB of freed memory the heap keeps) in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    return result["applied"], result["heap_free_mib"]


def test_glibc_defaults_keep_freed_large_blocks_in_the_heap() -> None:
    # What tune_malloc is for: without it the 200 MiB freed stay in the process.
    assert probe("default")[1] >= 150


def test_tuned_malloc_gives_freed_large_blocks_back() -> None:
    applied, heap_free = probe("tuned")
    assert applied == {"mmap_threshold": 256 << 10, "arena_max": 2}
    assert heap_free <= 10


def test_the_operators_own_malloc_settings_are_kept() -> None:
    applied, heap_free = probe("tuned", MALLOC_MMAP_THRESHOLD_="4194304", MALLOC_ARENA_MAX="4")
    assert applied == {}
    # The operator's 4 MiB threshold holds: 1 MiB blocks come from the heap and stay there when freed.
    assert heap_free >= 150
    applied, _ = probe("tuned", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert applied == {"mmap_threshold": 256 << 10}
