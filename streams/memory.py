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

import ctypes
import ctypes.util
import logging
import os
import platform

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


def tune_malloc() -> dict[str, int]:
    """Apply the settings above to this process's glibc malloc, except those the environment sets;
    returns what was applied (nothing on another C library). Call it before the stores are opened, so
    that RocksDB's threads start with the arena cap."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    path = ctypes.util.find_library("c")
    if path is None:
        return {}
    libc = ctypes.CDLL(path)
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
