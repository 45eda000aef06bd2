"""RocksDB state at scale: the cost of a short prefix scan and of a point lookup in idsync's stores.

``python -m streams.bench.store --keys 2500000 --cache-mb 64 [--whole-file-index]`` builds four
databases (a worker's four partitions of one store) of reference-index-shaped keys, in random order,
with the store options idsync uses (``streams.store``), then measures, in CPU time per operation,
a prefix scan that finds one key (a referrer lookup of the join stage) and random point lookups in
multi-gets of 500 (a stage batch's state read). ``--whole-file-index`` builds the files as idsync did
before the ninth session (one index and one filter block per SST file) to compare. Figures:
docs/benchmarks.md. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from rocksdict import WriteBatch

from streams import store

VALUE_BYTES = 160
DATABASES = 4


def key(i: int) -> bytes:
    """A referrer key of the reference index: route, referrer mv_id, attribute, anchor."""
    return (
        f"ref|hr|uid=u{i:08d},ou=people,dc=example,dc=org\x00{i * 7919 % 10**9:036d}\x00manager\x00E{i:07d}"
    ).encode()


def run(keys: int, cache_mb: int, whole_file_index: bool, root: Path) -> dict[str, float]:
    store.set_memory_budget(cache_mb << 20, store.MEMTABLES_TOTAL_BYTES)
    dbs = [store.open_db(root / f"p{i}", partitioned=not whole_file_index) for i in range(DATABASES)]
    rnd = random.Random(1)
    value = os.urandom(VALUE_BYTES)
    order = list(range(keys))
    rnd.shuffle(order)
    started = time.monotonic()
    for db in dbs:
        for s in range(0, keys, 5000):
            wb = WriteBatch(raw_mode=True)
            for i in order[s : s + 5000]:
                wb.put(key(i), value)
            db.write(wb)
        db.flush()
    built_s = time.monotonic() - started
    time.sleep(min(10.0, keys / 100_000))  # let the compactions the load started finish
    rnd = random.Random(2)
    scans = 20_000
    t = time.process_time()
    for _ in range(scans):
        db = dbs[rnd.randrange(DATABASES)]
        prefix = key(rnd.randrange(keys)).split(b"\x00")[0] + b"\x00"
        it = db.iter()
        it.seek(prefix)
        found = 0
        while it.valid() and it.key().startswith(prefix):
            found += 1
            it.next()
        if found != 1:
            raise RuntimeError(f"scan of {prefix!r} found {found} keys")
    scan_us = (time.process_time() - t) / scans * 1e6
    rounds = 200
    t = time.process_time()
    for _ in range(rounds):
        db = dbs[rnd.randrange(DATABASES)]
        got = db.get([key(rnd.randrange(keys)) for _ in range(500)])
        if any(v is None for v in got):
            raise RuntimeError("a key written is missing")
    get_us = (time.process_time() - t) / (rounds * 500) * 1e6
    for db in dbs:
        db.close()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return {"build_s": built_s, "state_mb": size / 1e6, "scan_us": scan_us, "get_us": get_us}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.bench.store", description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=2_500_000, help="keys per database (four databases)")
    p.add_argument(
        "--cache-mb", type=int, default=64, help="the shared block cache (pipeline.state_cache_mb)"
    )
    p.add_argument("--whole-file-index", action="store_true", help="SST files as before the ninth session")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="idsync-store-bench-"))
    try:
        r = run(args.keys, args.cache_mb, args.whole_file_index, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    layout = "whole-file index and filter" if args.whole_file_index else "partitioned index and filter"
    print(
        f"{layout}, {DATABASES} x {args.keys:,} keys, {r['state_mb']:.0f} MB, cache {args.cache_mb} MiB "
        f"(built in {r['build_s']:.0f} s): prefix scan {r['scan_us']:.1f} us, "
        f"point lookup {r['get_us']:.2f} us (CPU per operation)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
