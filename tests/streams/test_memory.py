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


def test_the_memory_report_sees_large_blocks_small_objects_and_memtables(tmp_path: Path) -> None:
    """``memory_report`` (``idsync worker --memory-log-seconds``): each figure moves with what it claims
    to measure — malloc's mapped blocks with a large allocation, Python's arenas with small objects, the
    RocksDB memtables with writes."""
    from streams.memory import memory_report
    from streams.store import open_db

    db = open_db(tmp_path / "db")
    before = memory_report([db], unsaved=7)
    large = bytearray(64 << 20)
    small = [(i, str(i)) for i in range(300_000)]
    for i in range(20_000):
        db[f"k{i:06d}".encode()] = b"v" * 200
    after = memory_report([db], unsaved=7)
    assert after["malloc_mapped"] - before["malloc_mapped"] >= 64 << 20
    assert after["malloc_held"] - before["malloc_held"] >= 64 << 20
    assert after["pymalloc"] - before["pymalloc"] >= 10 << 20
    assert after["rocksdb_memtables"] - before["rocksdb_memtables"] >= 2 << 20
    assert after["rocksdb_memtables_budget"] >= after["rocksdb_memtables"] > 0
    assert after["rss"] >= after["anon"] > 0 and after["peak"] >= after["rss"]
    assert after["unsaved_values"] == 7
    del large, small
    db.close()


def test_the_worker_logs_its_memory_when_asked(tmp_path: Path) -> None:
    """The report and the live object kinds go to stderr whatever the log level."""
    script = """
import asyncio, logging, sys
from streams.memory import log_memory
logging.basicConfig(level=logging.WARNING)
reports = []
def extra():
    reports.append(1)
    return {"deferred_objects": 7}
async def main():
    task = asyncio.ensure_future(log_memory(0.05, lambda: [], lambda: 3, extra))
    # Two reports, however long a loaded machine takes for them (each walks the heap).
    for _ in range(400):
        if len(reports) >= 2:
            break
        await asyncio.sleep(0.05)
    task.cancel()
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    reports = [line for line in done.stderr.splitlines() if "memory: " in line]
    assert len(reports) >= 2
    assert "unsaved_values=3" in reports[0] and "pymalloc=" in reports[0] and "malloc_held=" in reports[0]
    assert "deferred_objects=7" in reports[0]
    assert any("objects: " in line and "dict=" in line for line in done.stderr.splitlines())


def test_a_failing_memory_report_is_logged_and_the_worker_goes_on() -> None:
    """A store closing at shutdown (or any error of the report) must not stop the worker."""
    import asyncio

    from streams.memory import log_memory

    calls = 0

    def broken() -> list[object]:
        nonlocal calls
        calls += 1
        raise RuntimeError("DB instance already closed")

    async def main() -> None:
        task = asyncio.ensure_future(log_memory(0.01, broken, lambda: 0))
        await asyncio.sleep(0.08)
        assert not task.done()  # still running after several failed reports
        task.cancel()

    asyncio.run(main())
    assert calls >= 2
