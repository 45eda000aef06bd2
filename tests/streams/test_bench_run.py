"""``idsync bench`` end to end, at a tiny size: the command runs its phases against a real embedded broker and
real workers and writes what docs/benchmarks.md reads (figures, not timings: nothing here asserts a speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.bench.run import _rocksdb_cpu_s, _threads
from streams.store import PartitionStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, size: int, *flags: str, env: dict[str, str] | None = None) -> tuple[str, list[Any]]:
    """``idsync bench`` at ``size`` people, one worker, no slapd or connector phases, 600 sustained changes, a
    one-second latency run at 100 changes/s: its standard output and its JSON results."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "streams.cli", "bench", "--sizes", str(size), "--workers", "1"]
    cmd += ["--no-ldap", "--no-imports", "--no-kinds", "--latency-seconds", "1", "--rate", "100"]
    cmd += ["--sustained", "600"]
    done = subprocess.run(
        [*cmd, *flags, "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())["results"]


def test_the_bench_writes_its_figures_and_the_workers_log_their_memory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    stdout, [result] = bench(
        tmp_path,
        300,
        "--no-naive",
        "--load-bytes",
        "--digest",
        "--work-dir",
        str(work),
        "--pipeline",
        "mv_changes_by_value_from=100",
        env={"IDSYNC_BENCH_MEMORY_LOG_S": "1"},
    )
    assert (result["kind"], result["size"], result["workers"]) == ("batched", 300, 1)
    assert result["records"] > 300 and result["rate"] > 0 and result["delta_records"] > 0
    assert result["latency_matched"] == result["latency_samples"] > 0
    # Both kinds of membership change reached mv.changes with the group one member short and whole again
    # (the bench waits for those member counts): by a value-level record and by the group's image.
    assert result["group_members"] > 0
    assert result["group_change_ms"] > 0 and result["group_change_cpu_ms"] > 0
    assert result["group_image_ms"] > 0 and result["group_image_cpu_ms"] > 0
    # all-staff's 300 members went on mv.changes by value (from 100): its record names the one member
    # (a few hundred bytes), not the 300 (the bench read each record's count of members to match it).
    assert 0 < result["group_feed_bytes"] < 1_000
    # The same change to the smallest department, for comparison (at 300 people, the only one).
    assert 0 < result["small_group_members"] <= result["group_members"]
    assert result["small_group_change_ms"] > 0 and result["small_group_change_cpu_ms"] > 0
    assert result["idle_cpu_ms_per_s"] > 0  # the workers poll while idle: part of every change's CPU
    assert "workers' CPU while idle" in stdout
    assert "one member change by value, workers' CPU less idle (median per change): all-staff" in stdout
    # the load's CPU per record, and the part of it in the workers' RocksDB flush and compaction threads
    assert 0 <= result["rocksdb_cpu_us_per_record"] < result["cpu_us_per_record"]
    # the sustained changes: every one published, timed and costed, and said under the table
    assert result["sustained_records"] == 600 and result["sustained_rate"] > 0
    assert result["sustained_cpu_us"] > result["sustained_rocksdb_cpu_us"] >= 0
    assert result["sustained_broker_cpu_us"] > 0
    # ... and the work was done: each changed person's last title reached a pending export (at 300 people,
    # 600 changes are two turns of the active ones)
    assert 0 < result["sustained_people"] == result["sustained_exported"] <= 300
    assert f"sustained title changes of synced people: 600 in {result['sustained_seconds']:.2f} s" in stdout
    steps = result["peak_rss_by_step"]
    assert list(steps) == ["load", "delta", "latency", "group change", "sustained"]
    # peaks only grow, and the phase's peak is the last one
    peaks = [s[0] for s in steps.values()]
    assert peaks == sorted(peaks) and peaks[-1] == result["peak_rss_mb"][0] > 0
    # the embedded broker's peak too (it holds every topic in memory): step by step, and the phase's
    broker = result["broker_rss_by_step"]
    assert list(broker) == list(steps)
    assert list(broker.values()) == sorted(broker.values())
    assert list(broker.values())[-1] <= result["broker_rss_mb"] and result["broker_rss_mb"] > 0
    log = (work / "b300w1" / "worker0.log").read_text()
    assert "memory: " in log and "unsaved_values=" in log and "deferred_objects=" in log
    assert "table_backlog=" in log
    # What the load wrote, in bytes: every state changelog and mv.changes, each person's and group's
    # objects at least once (hundreds of bytes each)
    written = result["load_bytes"]
    changelogs = [f"changelog.{store}" for store in ("cs", "join", "mv", "mv-refs")]
    assert sorted(written) == [*changelogs, "mv.changes"]
    assert written["changelog.mv"] > 300 * 200 and written["mv.changes"] > 300 * 100
    top = result["load_bytes_top"]["changelog.mv"]
    assert 0 < len(top) <= 5 and sum(size for _key, size, _n in top) <= written["changelog.mv"]
    assert "MB written by the load (uncompressed): changelog.cs" in stdout
    # ... by kind of key: the metaverse objects (<id>) in the mv changelog, the registrations (ref|) in
    # mv-refs, every byte of a changelog in one of its kinds
    kinds = result["load_bytes_kinds"]
    assert "<id>" in kinds["changelog.mv"] and "ref|" in kinds["changelog.mv-refs"]
    assert sum(size for _n, _gone, size in kinds["changelog.mv"].values()) == written["changelog.mv"]
    assert "changelog.mv-refs records per load record (tombstones): " in stdout
    # --digest without the naive baseline: what the load's exports leave in the directory, digested (the
    # organisation's 300 people less the inactive, and its groups)
    assert result["load_objects"] > 250 and len(result["load_digest"]) == 16
    entries = f"the load's exports leave {result['load_objects']:,} directory entries"
    assert f"{entries}, digest {result['load_digest']}" in stdout
    assert (work / "b300w1" / "directory.jsonl").read_text().count("\n") == result["load_objects"]


def test_the_naive_baseline_decides_what_the_batched_pipeline_decides(tmp_path: Path) -> None:
    """The ratio compares two pipelines doing the same work: after the load, the naive baseline's pending
    exports leave the directory as the batched pipeline's do (the bench says so)."""
    stdout, [batched, naive] = bench(tmp_path, 1000)
    assert (batched["kind"], naive["kind"]) == ("batched", "naive")
    # the organisation's active people and its groups: provisioned into the directory or updated there
    assert batched["load_objects"] > 950 and naive["load_objects"] == batched["load_objects"]
    assert naive["load_digest"] == batched["load_digest"] != ""
    assert "the naive baseline's exports leave the same directory" in stdout
    # Its work report: the writes to its tables, and when each of the organisation's groups arrived among
    # the HR people (the warm-up's left out) — what decides its speed.
    from streams.bench.org import generate

    work = naive["naive_work"]
    assert {"cs", "join", "mv", "refs", "regs"} <= set(work["writes"])
    assert work["writes"]["mv"]["writes"] > 1000 and work["writes"]["mv"]["bytes"] > 0
    before = work["people_before_groups"]
    assert len(before) == len(generate(1000, seed=7).groups) and all(0 <= n <= 1000 for n in before)
    assert (
        f"its {len(before)} groups arrived after {min(before):,} to {max(before):,} of the 1,000 HR" in stdout
    )
    assert batched["naive_work"] == {} and batched["generator_retries"] == naive["generator_retries"] == 0


def test_the_directory_a_load_leaves_counts_a_converted_add_as_the_update_it_is() -> None:
    """``target_state``: an existing account joined (an update) or provisioned before its import arrived (an
    add the connector converts) ends as one entry; a delete-add keeps nothing of the old entry."""
    from schemas.records import AttrChange, PendingExport
    from streams.bench.org import generate
    from streams.bench.run import target_state

    org = generate(50, seed=7)
    _anchor, dn, before = org.dir_entry(org.dir_accounts[0])

    def export(op: str, seq: int, **attrs: list[str]) -> PendingExport:
        changes = {k: AttrChange(op="replace", values=v) for k, v in attrs.items()}
        return PendingExport(
            export_id=f"e{seq}", seq=seq, connector="dir", mv_id="m1", op=op, object_type="person", dn=dn,
            attributes=changes, ts_ms=1,
        )  # fmt: skip

    joined = target_state(org, [export("update", 1, title=["Director"])])
    provisioned = target_state(org, [export("add", 1, title=["Director"])])
    assert joined == provisioned
    assert joined[dn.lower()]["title"] == ["Director"] and joined[dn.lower()]["uid"] == before["uid"]
    again = target_state(org, [export("delete", 1), export("update", 2, title=["CTO"])])
    assert again[dn.lower()] == {"title": ["CTO"]}


def test_the_rocksdb_threads_are_told_apart_from_the_event_loop(tmp_path: Path) -> None:
    """The bench splits a worker's CPU into RocksDB's background threads and the rest by thread name."""
    part = PartitionStore(tmp_path / "p0")
    try:
        names = {(task / "comm").read_text().strip() for task in _threads(os.getpid(), "rocksdb")}
        assert names and all(n.startswith("rocksdb:") for n in names)
        assert _threads(os.getpid(), "no-such-thread") == []
        assert _rocksdb_cpu_s(os.getpid()) >= 0
    finally:
        part.close()


def test_a_run_asked_to_profile_without_py_spy_fails_at_once_naming_it(tmp_path: Path) -> None:
    """Without py-spy on the PATH a profiled run stops before its load, saying what is missing (it used
    to fail when the profiler started, after a whole initial load for a group change's profile)."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "bench", "--sizes", "100", "--json", str(tmp_path / "b.json")],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PATH": str(tmp_path),  # nothing there: no py-spy
            "IDSYNC_BENCH_PROFILE_GROUP": str(tmp_path / "profiles"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "IDSYNC_BENCH_PROFILE_GROUP set, but py-spy is not on the PATH" in done.stderr
    assert not (tmp_path / "b.json").exists()


def test_the_ldap_phase_applies_the_load_to_a_directory_holding_the_accounts_it_imports(
    tmp_path: Path,
) -> None:
    """batched+ldap: slapd holds the organisation's directory accounts, imported with the anchors slapd gave
    them, so the updates of the load's pending exports find their entries, and the directory ends as the
    pending exports say, people and groups, without an error (before, slapd started empty: about a fifth of
    the exports failed as missing objects and the count of ou=people varied from run to run; and a
    groupOfNames added before any member existed in the directory failed, with the updates planned while
    its add was pending, until the bench's group rule said ``requires: [member]``)."""
    import asyncio

    from streams.bench.org import generate
    from streams.bench.records import write_hr_file
    from streams.bench.run import ldap_phase
    from streams.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "--sizes", "300", "--workers", "1", "--no-naive", "--no-imports"]
    )
    args.naive_max = 0
    org = generate(300, args.seed)
    write_hr_file(org, tmp_path / "hr.csv")
    res = asyncio.run(ldap_phase(args, tmp_path, org))
    assert res.records > 300 and res.rate > 0
    # Everyone: the organisation's accounts (joined and updated, not added again) and those provisioned.
    assert res.exports == res.exports_expected > len(org.dir_accounts) > 0
    assert res.directory_differences == 0
    assert "the directory holds what the pending exports say (people and groups)" in res.notes
    assert res.export_errors == {}


def test_comparing_a_directory_with_what_the_exports_say_finds_each_difference(tmp_path: Path) -> None:
    """``directory_differences`` on a real slapd: none where it holds the expected entries (DN-valued
    attributes compared in lower case; attributes the expectation does not name ignored), and each missing
    entry, unexpected entry and differing attribute otherwise."""
    from connectors.ldap.slapd import Slapd
    from streams.bench.imports import directory_differences

    with Slapd(tmp_path / "slapd") as slapd:
        people = slapd.people_dn
        conn = slapd.connect()
        try:
            for uid in ("ann", "bob"):
                attrs = {"objectClass": ["inetOrgPerson"], "cn": [uid], "sn": [uid], "title": ["Engineer"]}
                conn.add(f"cn={uid},{people}", attributes={**attrs, "manager": [f"CN=Ann,{people}"]})
        finally:
            conn.unbind()
        ann, bob = f"cn=ann,{people}".lower(), f"cn=bob,{people}".lower()
        same = {
            ann: {"title": ["Engineer"], "manager": [f"cn=ann,{people}"]},
            bob: {"title": ["Engineer"], "cn": ["bob"]},
        }
        assert directory_differences(slapd, same, [people]) == (0, [])
        count, shown = directory_differences(
            slapd,
            {ann: {"title": ["Director"]}, f"cn=cy,{people}".lower(): {"cn": ["cy"]}},
            [people, f"ou=groups,{slapd.suffix}"],  # no such container: nothing there
        )
    assert count == 3
    assert shown == [
        f"missing: cn=cy,{people}".lower(),
        f"not expected: {bob}",
        f"{ann}: title holds ['Engineer'], the exports say ['Director']",
    ]
