"""RocksDB's flush and compaction cost as a store grows: a stage's checkpoint writes, without the pipeline.

``python -m streams.bench.compaction [--puts 3000000] [--databases 16] [--variant NAME ...]`` writes into
``--databases`` databases opened with idsync's store options (``streams.store.open_db``) the way a
stage's checkpoints do during an initial load: WriteBatches of ``--batch`` keys, half of them new keys
and half overwrites of keys written before (objects written again as their references resolve), values
of ``--value-bytes`` that compress about as state does, and a multi-get of 500 written keys per batch
(the next batch's state read). It prints, per third of the run, the CPU time per put of the writing
thread and of RocksDB's own threads (flushes and compactions, read from ``/proc``): a cost per put that
grows from one third to the next is a cost per record that grows with N. ``--variant`` compares
compaction settings on top of the store's (``VARIANTS``); each runs in a fresh directory, one after
the other. Not a test: nothing here asserts a speed. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rocksdict import DBCompactionStyle, DBCompressionType, Options, Rdict, WriteBatch

from streams import store
from streams.bench.run import _rocksdb_cpu_s
from streams.broker import stat_cpu_seconds

MIB = 1 << 20


def _level_base(mib: int) -> Callable[[Options], None]:
    def apply(opts: Options) -> None:
        opts.set_max_bytes_for_level_base(mib * MIB)
        opts.set_target_file_size_base(max(2, mib // 8) * MIB)

    return apply


def _universal(opts: Options) -> None:
    opts.set_compaction_style(DBCompactionStyle.universal())


def _no_dynamic(opts: Options) -> None:
    opts.set_level_compaction_dynamic_level_bytes(False)


def _blobs(opts: Options) -> None:
    opts.set_enable_blob_files(True)
    opts.set_min_blob_size(4096)
    opts.set_blob_file_size(64 * MIB)
    opts.set_enable_blob_gc(True)
    opts.set_blob_gc_age_cutoff(0.25)
    opts.set_blob_compression_type(DBCompressionType.lz4())


#: Settings tried on top of the store's own options (``streams.store._options``); "store" is them as is.
VARIANTS: dict[str, Callable[[Options], None]] = {
    "store": lambda opts: None,
    "base16": _level_base(16),
    "base32": _level_base(32),
    "base64": _level_base(64),
    "universal": _universal,
    "static-levels": _no_dynamic,
    "blobs": _blobs,
}


def _value(rnd: random.Random, size: int) -> bytes:
    """About as compressible as msgpack state: half repeated text, half random."""
    filler = b"objectClass\xa6person\xa2cn\xa9Some Name\xa5title\xa8Engineer"
    random_part = rnd.randbytes(size // 2)
    return (filler * (size // len(filler) + 1))[: size - len(random_part)] + random_part


def run(
    variant: str,
    puts: int,
    databases: int,
    batch: int,
    value_bytes: int,
    large_every: int,
    large_bytes: int,
    root: Path,
) -> list[dict[str, float]]:
    """Write ``puts`` keys in batches over ``databases`` databases; the cost per put per third."""
    tune = VARIANTS[variant]

    def open_db(path: Path) -> Rdict:
        opts = store._options()
        tune(opts)
        db = Rdict(str(path), options=opts, column_families={"default": opts})
        db.set_write_options(store._NO_WAL)
        return db

    dbs = [open_db(root / f"db{i}") for i in range(databases)]
    rnd = random.Random(1)
    values = [_value(rnd, value_bytes) for _ in range(64)]
    large = [_value(rnd, large_bytes) for _ in range(8)]
    written = [0] * databases
    thirds: list[dict[str, float]] = []
    per_third = puts // 3
    done = 0
    me = threading.get_native_id()
    stat = Path(f"/proc/self/task/{me}/stat")
    for _ in range(3):
        t0, r0, w0 = stat_cpu_seconds(stat), _rocksdb_cpu_s(os.getpid()), time.monotonic()
        target = done + per_third
        while done < target:
            d = rnd.randrange(databases)
            db, n = dbs[d], written[d]
            wb = WriteBatch(raw_mode=True)
            for j in range(batch):
                if large_every and j % large_every == large_every - 1:
                    # A group: one of n/500 keys, written whole again as its members resolve.
                    g = rnd.randrange(n // 500 + 1)
                    wb.put(b"%d\x01%016x" % (d, g * 0x9E3779B97F4A7C15 % (1 << 64)), large[g % 8])
                    continue
                if n and j % 2:
                    k = rnd.randrange(n)
                else:
                    k, n = n, n + 1
                wb.put(b"%d\x00%016x" % (d, k * 0x9E3779B97F4A7C15 % (1 << 64)), values[j % 64])
            written[d] = n
            db.write(wb)
            db.get(
                [b"%d\x00%016x" % (d, rnd.randrange(n) * 0x9E3779B97F4A7C15 % (1 << 64)) for _ in range(500)]
            )
            done += batch
        thirds.append(
            {
                "puts": per_third,
                "writer_us": (stat_cpu_seconds(stat) - t0) / per_third * 1e6,
                "rocksdb_us": (_rocksdb_cpu_s(os.getpid()) - r0) / per_third * 1e6,
                "wall_s": time.monotonic() - w0,
            }
        )
    for db in dbs:
        db.close()
    size = sum(f.stat().st_size for f in root.rglob("*.sst"))
    thirds[-1]["disk_mb"] = size / MIB
    return thirds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m streams.bench.compaction", description=__doc__.splitlines()[0]
    )
    p.add_argument("--puts", type=int, default=3_000_000)
    p.add_argument("--databases", type=int, default=16)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--value-bytes", type=int, default=1200)
    p.add_argument("--large-every", type=int, default=100, help="one put in so many is a group's (0: none)")
    p.add_argument("--large-bytes", type=int, default=64_000, help="a group's value")
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default: store")
    args = p.parse_args(argv)
    print("variant          third  writer µs/put  rocksdb µs/put  wall s  disk MB")
    for variant in args.variant or ["store"]:
        root = Path(tempfile.mkdtemp(prefix="idsync-compaction-"))
        try:
            for i, t in enumerate(
                run(
                    variant,
                    args.puts,
                    args.databases,
                    args.batch,
                    args.value_bytes,
                    args.large_every,
                    args.large_bytes,
                    root,
                )
            ):
                disk = f"{t['disk_mb']:8.0f}" if "disk_mb" in t else ""
                print(
                    f"{variant:16} {i + 1:5}  {t['writer_us']:13.1f}  {t['rocksdb_us']:14.1f}  "
                    f"{t['wall_s']:6.1f}{disk}",
                    flush=True,
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
