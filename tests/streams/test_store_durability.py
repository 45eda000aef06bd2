"""What a partition's local database holds after its process dies: the stores write without RocksDB's
write-ahead log (the changelog topic is the log), so a crash loses the writes since the last memtable flush —
data and changelog offset together, never one without the other — and restoring reads them again from the
changelog (tests/streams/test_restore.py). A store closed normally keeps everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.store import PartitionStore

ROOT = Path(__file__).resolve().parents[2]


def crash_after(path: Path, steps: str) -> None:
    """Open the partition at ``path`` in another process, run ``steps`` on it (``p``), and kill the process
    without closing anything (``os._exit``)."""
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\n"
        "from streams.store import PartitionStore\n"
        f"p = PartitionStore(Path({str(path)!r}))\n"
        f"{steps}\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_crash_loses_the_unflushed_writes_with_their_changelog_offset(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    crash_after(
        path,
        'p.write({b"a": b"1"}, changelog_offset=5)\n'
        "p.db.flush()\n"  # a memtable flush: on disk from here on
        'p.write({b"a": b"2", b"b": b"2"}, changelog_offset=7)',
    )
    part = PartitionStore(path)
    # As of the flush: the first write and its offset, nothing of the second (restore reads from offset 5).
    assert (part.get(b"a"), part.get(b"b"), part.changelog_offset()) == (b"1", None, 5)
    part.write({b"a": b"3"}, changelog_offset=9)
    part.close()
    part = PartitionStore(path)
    assert (part.get(b"a"), part.changelog_offset()) == (b"3", 9)  # closing flushed it
    part.close()
