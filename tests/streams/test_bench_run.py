"""``idsync bench`` end to end, at a tiny size: the command runs its phases against a real embedded broker and
real workers and writes what docs/benchmarks.md reads (figures, not timings: nothing here asserts a speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_writes_its_figures_and_the_workers_log_their_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "streams.cli",
        "bench",
        "--sizes",
        "300",
        "--workers",
        "1",
        "--no-naive",
        "--no-ldap",
        "--no-imports",
        "--no-kinds",
        "--latency-seconds",
        "1",
        "--rate",
        "100",
        "--json",
        str(out),
        "--work-dir",
        str(work),
    ]
    done = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "IDSYNC_BENCH_MEMORY_LOG_S": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads(out.read_text())["results"]
    assert (result["kind"], result["size"], result["workers"]) == ("batched", 300, 1)
    assert result["records"] > 300 and result["rate"] > 0 and result["delta_records"] > 0
    assert result["latency_matched"] == result["latency_samples"] > 0
    steps = result["peak_rss_by_step"]
    assert list(steps) == ["load", "delta", "latency", "group change"]
    # peaks only grow, and the phase's peak is the last one
    peaks = [s[0] for s in steps.values()]
    assert peaks == sorted(peaks) and peaks[-1] == result["peak_rss_mb"][0] > 0
    log = (work / "b300w1" / "worker0.log").read_text()
    assert "memory: " in log and "unsaved_values=" in log


def test_the_naive_baseline_decides_what_the_batched_pipeline_decides(tmp_path: Path) -> None:
    """The ratio compares two pipelines doing the same work: after the load, the naive baseline's pending
    exports leave the directory as the batched pipeline's do (the bench says so)."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "streams.cli",
        "bench",
        "--sizes",
        "1000",
        "--workers",
        "1",
        "--no-ldap",
        "--no-imports",
        "--no-kinds",
        "--latency-seconds",
        "1",
        "--rate",
        "100",
        "--json",
        str(out),
    ]
    done = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    batched, naive = json.loads(out.read_text())["results"]
    assert (batched["kind"], naive["kind"]) == ("batched", "naive")
    # the organisation's active people and its groups: provisioned into the directory or updated there
    assert batched["load_objects"] > 950 and naive["load_objects"] == batched["load_objects"]
    assert naive["load_digest"] == batched["load_digest"] != ""
    assert "the naive baseline's exports leave the same directory" in done.stdout
