"""Process memory: glibc malloc settings for a long-running pipeline process.

A stage allocates large blocks all the time (fetched record batches of up to 4 MiB, a large group's
encoded image, lists and dicts of 50,000 members) next to millions of small ones. glibc's defaults suit
that badly: after the first large block allocated by ``mmap`` is freed, it raises its mmap threshold to
that block's size (up to 32 MiB), so later large blocks come from the heap, and once freed they stay
there as holes between small live ones — resident memory the process never uses again and never gives
back. Each thread that allocates (RocksDB's background compactions and flushes) also gets an arena of
its own, up to eight per core, each holding its own holes. In the 100k benchmark the worker's heap held
273 MiB free against 143 MiB in use by its last phase (docs/benchmarks.md, eighth session).

``tune_malloc`` fixes the mmap threshold (large blocks are mapped, and unmapped when freed) and caps the
arenas at two. Where the operator set one of these through glibc's environment variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES``), that setting is kept. On another
C library it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("idsync")

#: mallopt parameters (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Blocks from this size up are mapped, and unmapped when freed (glibc's default start, 128 KiB, is
#: raised dynamically; a fixed value turns that off). 256 KiB keeps a 50,000-member group's lists,
#: dicts and images, and every fetched batch, out of the heap.
MMAP_THRESHOLD_BYTES = 256 << 10
#: Arenas for the whole process (glibc's default: eight per core).
ARENA_MAX = 2

_SETTINGS = (
    ("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES, "MALLOC_MMAP_THRESHOLD_"),
    ("arena_max", M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX"),
)


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc on Linux (None otherwise)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    path = ctypes.util.find_library("c")
    return None if path is None else ctypes.CDLL(path)


def tune_malloc() -> dict[str, int]:
    """Apply the settings above to this process's glibc malloc, except those the environment sets;
    returns what was applied (nothing on another C library). Call it before the stores are opened, so
    that RocksDB's threads start with the arena cap."""
    libc = _glibc()
    if libc is None:
        return {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied: dict[str, int] = {}
    for name, param, value, env in _SETTINGS:
        if env in os.environ or f"glibc.malloc.{name}" in tunables:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            applied[name] = value
        else:
            log.warning("mallopt(%s, %d) was refused: glibc malloc keeps its default", name, value)
    return applied


def malloc_totals() -> dict[str, int]:
    """glibc malloc over all arenas (``malloc_info``): ``held`` (bytes taken from the system, mapped
    blocks included), ``free`` (held but unused: holes and top chunks), ``mapped`` (large blocks mapped
    on their own). Empty on another C library."""
    libc = _glibc()
    if libc is None:
        return {}
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return {}
    try:
        libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)
    text = ctypes.string_at(buf, size.value).decode() if buf.value is not None else ""
    libc.free(ctypes.cast(buf, ctypes.c_void_p))
    # The document's last elements are the process totals (after every <heap>).
    tail = text[text.rfind("</heap>") :]
    found: dict[str, int] = {}
    for name, pattern in (
        ("free_fast", r'<total type="fast" count="\d+" size="(\d+)"'),
        ("free_rest", r'<total type="rest" count="\d+" size="(\d+)"'),
        ("mapped", r'<total type="mmap" count="\d+" size="(\d+)"'),
        ("heap", r'<system type="current" size="(\d+)"'),
    ):
        m = re.search(pattern, tail)
        if m:
            found[name] = int(m.group(1))
    return {
        "held": found.get("heap", 0) + found.get("mapped", 0),
        "free": found.get("free_fast", 0) + found.get("free_rest", 0),
        "mapped": found.get("mapped", 0),
    }


def pymalloc_bytes() -> int:
    """Bytes in the arenas of Python's small-object allocator (not counted by malloc: they are mapped)."""
    # The statistics go to the C stderr: into a file for the moment (a pipe could fill and block).
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    m = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    arenas = int(m.group(1).replace(",", "")) if m else 0
    m = re.search(r"Total\s*=\s*([\d,]+)", text)
    return int(m.group(1).replace(",", "")) if m else arenas * (1 << 20)


def rss_bytes(pid: int | None = None) -> dict[str, int]:
    """Resident memory of this process, or of process ``pid``, from /proc (``rss``, ``anon``, ``file``,
    ``peak``); empty when it is gone or unreadable."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{'self' if pid is None else pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[fields[key]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def memory_report(dbs: list[Any], unsaved: int = 0) -> dict[str, int]:
    """Where this process's memory is, in bytes: resident (``rss``, ``anon``, ``file``, ``peak``),
    malloc (``malloc_*``, every arena), Python's small-object arenas (``pymalloc``), RocksDB
    (``rocksdb_*``, over ``dbs``); and ``unsaved_values``, the attribute values the stages hold decoded
    as unsaved state (a count)."""
    from streams.store import rocksdb_memory

    report = rss_bytes()
    report |= {f"malloc_{k}": v for k, v in malloc_totals().items()}
    report["pymalloc"] = pymalloc_bytes()
    report |= {f"rocksdb_{k}": v for k, v in rocksdb_memory(dbs).items()}
    report["unsaved_values"] = unsaved
    return report


def live_types(top: int = 12) -> list[tuple[str, int]]:
    """The most numerous kinds of objects the garbage collector tracks (containers and structs; a
    pause of a second or so per few million objects: for diagnosis only)."""
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    return counts.most_common(top)


async def log_memory(
    interval_s: float,
    dbs: Callable[[], list[Any]],
    unsaved: Callable[[], int],
    counts: Callable[[], dict[str, int]] | None = None,
) -> None:
    """Log ``memory_report`` and ``live_types`` every ``interval_s`` until cancelled (``idsync worker
    --memory-log-seconds``); ``counts``: more figures for the memory line (plain numbers)."""
    mem_log = logging.getLogger("idsync.memory")
    mem_log.setLevel(logging.INFO)
    if not mem_log.handlers:
        # Asked for explicitly: shown whatever level the worker logs at.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
        mem_log.addHandler(handler)
        mem_log.propagate = False
    while True:
        try:
            report = memory_report(dbs(), unsaved())
        except Exception as exc:  # a diagnostic never stops the worker (a store closing at shutdown)
            mem_log.warning("memory: no report (%s: %s)", type(exc).__name__, exc)
        else:
            figures = [f"{k}={v}" if k == "unsaved_values" else f"{k}={v >> 20}M" for k, v in report.items()]
            figures += [f"{k}={v}" for k, v in (counts() if counts is not None else {}).items()]
            mem_log.info("memory: %s", " ".join(figures))
            mem_log.info("objects: %s", " ".join(f"{name}={n}" for name, n in live_types()))
        await asyncio.sleep(interval_s)
