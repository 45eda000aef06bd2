"""The RocksDB memory a worker's databases share: sized by the configuration, bounding what they hold."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rocksdict import Rdict

from schemas.config import PipelineConfig
from streams import store as store_module
from streams.bench import store as store_bench
from streams.bench.records import bench_config
from streams.config import load_config
from streams.runtime import Runtime, Settings
from streams.store import (
    BLOCK_CACHE_BYTES,
    MEMTABLES_TOTAL_BYTES,
    PartitionStore,
    memory_budget,
    set_memory_budget,
)


@pytest.fixture(autouse=True)
def _default_budget() -> Iterator[None]:
    yield
    set_memory_budget(BLOCK_CACHE_BYTES, MEMTABLES_TOTAL_BYTES)


def _cached_after_reading(tmp_path: Path, cache_mb: int) -> int:
    """Block cache bytes in use after 24 MiB of state was flushed to SST files and read back."""
    set_memory_budget(cache_mb << 20, 64 << 20)
    part = PartitionStore(tmp_path / f"cache{cache_mb}" / "p0")
    keys = [f"k{i:08d}".encode() for i in range(6000)]
    for i in range(0, len(keys), 500):
        part.write({k: os.urandom(4096) for k in keys[i : i + 500]})
    part._db.flush()
    for i in range(0, len(keys), 500):
        assert all(v is not None for v in part.get_many(keys[i : i + 500]))
    shared = store_module._SHARED
    assert shared is not None
    used: int = shared[0].get_usage()
    part.close()
    return used


def test_the_block_cache_holds_what_the_budget_allows(tmp_path: Path) -> None:
    small = _cached_after_reading(tmp_path, 8)
    large = _cached_after_reading(tmp_path, 64)  # the same shared cache, resized
    assert small <= 8 << 20
    assert large > 16 << 20  # the 24 MiB read no longer fits the small budget
    assert memory_budget() == (64 << 20, 64 << 20)


def test_a_worker_sizes_the_budget_from_its_configuration(tmp_path: Path) -> None:
    hr = tmp_path / "hr.csv"
    hr.write_text("employee_id\n")
    extra = {"state_cache_mb": 256, "state_memtables_mb": 32}
    config = load_config(bench_config("mem", tmp_path, 2, hr, pipeline=extra))
    Runtime(Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path / "data"), config)
    assert memory_budget() == (256 << 20, 32 << 20)
    with pytest.raises(ValueError, match="state_cache_mb"):
        PipelineConfig.model_validate({"state_cache_mb": 1})


def test_a_reopened_store_reads_through_the_shared_cache(tmp_path: Path) -> None:
    """An existing database is opened with idsync's options, not those its OPTIONS file recorded
    (rocksdict would give it a private block cache of its own)."""
    keys = [f"k{i:06d}".encode() for i in range(4000)]
    part = PartitionStore(tmp_path / "p0")
    part.write({k: os.urandom(1024) for k in keys})
    part._db.flush()
    part.close()
    set_memory_budget(32 << 20, 64 << 20)
    shared = store_module._SHARED
    assert shared is not None
    shared[0].set_capacity(0)  # empty it
    shared[0].set_capacity(32 << 20)
    before = shared[0].get_usage()
    reopened = PartitionStore(tmp_path / "p0")
    assert all(v is not None for v in reopened.get_many(keys))
    assert shared[0].get_usage() - before > 2 << 20  # the 4 MiB read went through the shared cache
    reopened.close()


def _recorded_options(db_dir: Path) -> str:
    latest = max(db_dir.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    return latest.read_text()


def test_stores_partition_their_index_and_filters_also_when_reopened(tmp_path: Path) -> None:
    old = tmp_path / "old"
    db = Rdict(str(old), options=store_module._options(partitioned=False))  # a store as it was written
    db[b"k"] = b"v"
    db.flush()
    db.close()
    assert "index_type=kBinarySearch" in _recorded_options(old)
    for path in (tmp_path / "new", old):
        part = PartitionStore(path)
        part.write({b"k2": b"v2"})
        assert part.get_many([b"k", b"k2"]) == [b"v" if path == old else None, b"v2"]  # old files still read
        part.close()
        recorded = _recorded_options(path)
        assert "index_type=kTwoLevelIndexSearch" in recorded
        assert "partition_filters=true" in recorded


def test_the_store_benchmark_runs_both_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    assert store_bench.main(["--keys", "3000"]) == 0
    assert store_bench.main(["--keys", "3000", "--whole-file-index"]) == 0
    out = capsys.readouterr().out
    assert "partitioned index and filter, 4 x 3,000 keys" in out
    assert "whole-file index and filter" in out
    assert out.count("prefix scan") == 2
