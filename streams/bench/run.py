"""``idsync bench``: throughput, latency, memory and state size of the pipeline on a synthetic organisation.

Every phase runs on its own fresh embedded broker with the worker(s) as separate processes (``idsync
worker``), so the figures are the workers' own (RSS from /proc, state from their data directories) and the
load generator's work is not counted. Timings come from record timestamps on the broker: a phase's
throughput is its input records over (newest output record - first input record). Nothing here is a test:
the figures are printed and written as JSON for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import IdsyncError
from schemas.records import ErrorRecord, MVChange, PendingExport
from streams.app import ensure_topics
from streams.bench import kafka
from streams.bench.follow import follow_phase
from streams.bench.imports import (
    ImportResult,
    directory_anchors,
    directory_differences,
    import_phase,
    imports_table,
    load_directory,
)
from streams.bench.org import Org, Person, generate
from streams.bench.records import (
    RecordFactory,
    bench_config,
    delta_records,
    group_dn,
    group_image,
    initial_count,
    initial_load,
    title_change,
    write_hr_file,
)
from streams.bench.topic_bytes import topic_bytes
from streams.broker import EmbeddedBroker, cpu_seconds, peak_rss_mb, stat_cpu_seconds
from streams.config import load_config
from streams.native import engine_build
from streams.output import Outputs
from streams.pending import fold
from streams.runtime import Runtime, Settings
from streams.sync import format_table


@dataclass
class PhaseResult:
    kind: str  # "batched" | "naive" | "batched+ldap"
    size: int
    workers: int
    records: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    delta_records: int = 0
    delta_seconds: float = 0.0
    delta_rate: float = 0.0
    #: ``--sustained``: title changes of people the load synced, all published at once on the loaded
    #: state (each person in turn: at 10k, each about twice), timed as the load is; and the CPU per change
    #: of the workers (their RocksDB threads') and the broker. What a steady stream of changes to joined
    #: objects costs — staging, flow, export planning, no join search — where the load's records/s is
    #: first-time work (join, projection, provisioning, references).
    sustained_records: int = 0
    sustained_seconds: float = 0.0
    sustained_rate: float = 0.0
    sustained_cpu_us: float = 0.0
    sustained_rocksdb_cpu_us: float = 0.0
    sustained_broker_cpu_us: float = 0.0
    #: The people the sustained changes changed, and how many of them a pending export carries the last
    #: change of (read after the timing): equal when the pipeline did the work it was timed for.
    sustained_people: int = 0
    sustained_exported: int = 0
    #: The latency run's offered rate as reached (changes sent / seconds; ``--rate`` is what it aims at),
    #: the changes sent, and how many of them a pending export carried (the percentiles are over those).
    latency_rate: int = 0
    latency_samples: int = 0
    latency_matched: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: The same percentiles per window of ``LATENCY_WINDOW_S`` of send time, in order: whether latency
    #: stays level through the run or grows (the embedded broker's fetches get dearer as topics fill).
    latency_windows: list[dict[str, float]] = field(default_factory=list)
    #: CPU µs per change sent in the latency run, of the workers (all together), the broker and the bench's
    #: own process (the generator and the watcher): who fills the two cores while latency grows.
    latency_cpu_us: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: list[float] = field(default_factory=list)
    #: Peak RSS per worker as each step of the phase ended (load, delta, latency, group change).
    peak_rss_by_step: dict[str, list[float]] = field(default_factory=dict)
    #: The embedded broker's peak RSS (MiB) by the end of the phase, and as each step ended: it keeps every
    #: record batch of every topic in memory (no retention, no compaction), so it grows with what the
    #: pipeline writes — its changelogs above all — and decides whether a run fits the machine.
    broker_rss_mb: float = 0.0
    broker_rss_by_step: dict[str, float] = field(default_factory=dict)
    #: CPU time the workers (all together) and the broker spent per initial-load record, in µs: steadier
    #: than the rate on a shared machine, and it says where the time goes.
    cpu_us_per_record: float = 0.0
    broker_cpu_us_per_record: float = 0.0
    #: The part of ``cpu_us_per_record`` spent by the workers' RocksDB background threads (memtable flushes
    #: and compactions): it grows with the state's size.
    rocksdb_cpu_us_per_record: float = 0.0
    #: One membership change of all-staff (``group_members`` members): median ms from its change record
    #: to its mv.changes record, and the workers' CPU ms per change; ``group_change_*`` by a value-level
    #: change record (the one member: what AD DirSync's incremental values or an LDAP modify say),
    #: ``group_image_*`` by a record of the group's whole image (what a full read of the group says).
    group_members: int = 0
    group_change_ms: float = 0.0
    group_change_cpu_ms: float = 0.0
    group_image_ms: float = 0.0
    group_image_cpu_ms: float = 0.0
    #: The size of all-staff's mv.changes record per change by value (median bytes): by value (version 2)
    #: from ``pipeline.mv_changes_by_value_from`` members, else the whole image.
    group_feed_bytes: int = 0
    #: The same change by value to the smallest department group (``small_group_members`` members): what
    #: one membership change costs where the group's size plays no part (O(1) means all-staff's the same).
    small_group_members: int = 0
    small_group_change_ms: float = 0.0
    small_group_change_cpu_ms: float = 0.0
    #: The workers' CPU while idle (ms per second: polling their topics, timers), measured for two seconds
    #: before the group changes. A change's CPU above includes it for as long as the change takes: a
    #: large group's change waits for its checkpoint (docs/architecture.md), a small one's does not.
    idle_cpu_ms_per_s: float = 0.0
    #: Per change by value, the workers' CPU less their idle CPU for as long as the change took: median over
    #: the changes (the first may read the group whole from its chunks), all-staff and the small group.
    group_change_net_cpu_ms: float = 0.0
    small_group_change_net_cpu_ms: float = 0.0
    state_mb: float = 0.0
    #: batched+ldap: entries in the directory's ou=people after the load, and how many its pending exports
    #: make there (``target_state``; the two agree when every export was applied as planned).
    exports: int = 0
    exports_expected: int = 0
    #: batched+ldap: entries and attributes where slapd differs from what the pending exports say
    #: (``streams.bench.imports.directory_differences``; 0: it holds exactly that).
    directory_differences: int = 0
    #: After the initial load: the directory entries its pending exports leave, and a digest of them
    #: (``target_state``) — equal for the batched and the naive pipelines when both decided the same.
    load_objects: int = 0
    load_digest: str = ""
    #: Records on each topic after the run (how many internal messages the inputs caused), and the
    #: internal topics' messages by kind (``streams.bench.kafka.message_kind``).
    topics: dict[str, int] = field(default_factory=dict)
    message_kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    #: With ``--load-bytes``: uncompressed bytes on the state changelogs and ``mv.changes`` right after the
    #: initial load (the warm-up's included): what the load's checkpoints and syncs wrote; and per topic the
    #: keys that wrote the most, as [key, bytes, records].
    load_bytes: dict[str, int] = field(default_factory=dict)
    load_bytes_top: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    #: Per topic, per kind of key (``streams.bench.topic_bytes.key_kind``): [records, tombstones, bytes].
    load_bytes_kinds: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: The naive baseline's writes per table (``streams.bench.naive.Work``: writes, bytes, and those of values
    #: over 64 KiB) and how many HR people it had consumed when each group arrived (the warm-up's left out).
    naive_work: dict[str, Any] = field(default_factory=dict)
    #: batched+ldap: error records on the errors topic after the load, by step, error type and container
    #: (``Phase.error_counts``; the first message of each in ``notes``).
    export_errors: dict[str, int] = field(default_factory=dict)
    #: Flushes of the bench's own producer (the load's, the latency run's records) that the broker did not
    #: acknowledge in time and a retry delivered (``streams.bench.kafka.flush``).
    generator_retries: int = 0
    notes: list[str] = field(default_factory=list)


def _family(pid: int) -> list[int]:
    """A process and its children (a worker run under py-spy is py-spy's child)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children."""
    return sum(cpu_seconds(p) for p in _family(pid))


def _threads(pid: int, name: str) -> list[Path]:
    """The ``/proc`` task directories of the threads of a process and its children whose name starts
    with ``name``."""
    found = []
    for p in _family(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    if (task / "comm").read_text().startswith(name):
                        found.append(task)
    return found


def _rocksdb_cpu_s(pid: int) -> float:
    """CPU seconds of the RocksDB background threads (memtable flushes and compactions, named
    ``rocksdb:*``) of a process and its children: part of ``_cpu_s``, spent beside the event loop."""
    return sum(stat_cpu_seconds(task / "stat") for task in _threads(pid, "rocksdb"))


def _native_frames() -> bool:
    """Whether py-spy samples C frames too (``IDSYNC_BENCH_PROFILE_NATIVE``: a compiled engine's functions
    show as themselves, not as their Python callers' own time)."""
    return bool(os.environ.get("IDSYNC_BENCH_PROFILE_NATIVE"))


def exported_title(raw: bytes) -> str | None:
    """The title a pending export sets (its first value; None: it sets none): the bench's title changes
    name themselves by it."""
    title = PendingExport.model_validate_json(raw).attributes.get("title")
    return title.values[0] if title and title.values else None


def _du_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total / (1 << 20)


#: Width of the latency run's windows (``PhaseResult.latency_windows``).
LATENCY_WINDOW_S = 2.0


def _windows(samples: list[tuple[float, float]], width_s: float = LATENCY_WINDOW_S) -> list[dict[str, float]]:
    """Percentiles of (send time s, latency ms) samples per window of send time."""
    if not samples:
        return []
    start = min(t for t, _lat in samples)
    bins: dict[int, list[float]] = {}
    for t, lat in samples:
        bins.setdefault(int((t - start) // width_s), []).append(lat)
    return [{"from_s": k * width_s, **_percentiles(v)} for k, v in sorted(bins.items())]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def pct(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 1)

    return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": round(s[-1], 1)}


class Phase:
    """One measured configuration: a broker, the worker processes, the generator's producer."""

    def __init__(
        self,
        args: argparse.Namespace,
        work: Path,
        org: Org,
        name: str,
        workers: int,
        export: bool = False,
        naive: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = args
        self.work = work / name
        # A phase starts from nothing: state left by an earlier run in the same ``--work-dir`` would meet
        # a new broker as a local copy ahead of its changelog, and the warm-up's records as duplicates.
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.org = org
        self.name = name
        self.workers = workers
        self.export = export
        self.naive = naive
        self.env = {**os.environ, **(env or {})}
        os.environ.update(env or {})
        self.config_path = bench_config(
            name,
            self.work,
            args.partitions,
            work / "hr.csv",
            args.checkpoint_ms,
            args.compression,
            dict(args.pipeline or []),
        )
        self.config = load_config(self.config_path)
        self.broker = EmbeddedBroker(self.work)
        self.procs: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> Phase:
        self.broker.start()
        self.rt = Runtime(Settings(self.broker.bootstrap, self.work / "gen"), self.config)
        await ensure_topics(self.rt)
        if self.naive:
            await kafka.create_topic(self.broker.bootstrap, self.export_topic(), self.rt.partitions)
        for w in range(self.workers):
            self.procs.append(self._spawn(w))
        self.prod = await kafka.producer(self.broker.bootstrap)
        self.out = self.outputs()
        n = self.rt.names
        self.factory = RecordFactory(
            {c: n.import_topic(c) for c in self.config.connectors}, self.rt.partitions
        )
        return self

    def _spawn(self, w: int) -> subprocess.Popen[bytes]:
        data = self.work / f"worker{w}"
        if self.naive:
            cmd = [
                sys.executable,
                "-m",
                "streams.bench.naive",
                "-c",
                str(self.config_path),
                "--bootstrap-servers",
                self.broker.bootstrap,
                "--data-dir",
                str(data),
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "streams.cli",
                "worker",
                "-c",
                str(self.config_path),
                "--bootstrap-servers",
                self.broker.bootstrap,
                "--data-dir",
                str(data),
            ]
            # The embedded broker holds a fetch for its whole wait, even when data arrives (streams.app).
            cmd += ["--fetch-max-wait-ms", "10"]
            memory_log = os.environ.get("IDSYNC_BENCH_MEMORY_LOG_S")
            if memory_log:
                # The worker logs where its memory is (streams.memory.memory_report) into its log.
                cmd += ["--memory-log-seconds", memory_log]
            if not self.export:
                cmd.append("--no-export")
        profile = os.environ.get("IDSYNC_BENCH_PROFILE")
        if profile:
            # py-spy samples the worker for the whole phase (collapsed stacks, one line per stack).
            Path(profile).mkdir(parents=True, exist_ok=True)
            out = Path(profile) / f"{self.name}-worker{w}.txt"
            native = ["--native"] if _native_frames() else []
            cmd = ["py-spy", "record", "-r", "250", "-f", "raw", *native, "-o", str(out), "--", *cmd]
        log = (self.work / f"worker{w}.log").open("ab")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    async def __aexit__(self, *exc: object) -> None:
        await self.prod.stop()
        # py-spy writes its profile on SIGINT (and stops the worker it runs).
        stop = signal.SIGINT if os.environ.get("IDSYNC_BENCH_PROFILE") else signal.SIGTERM
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(stop)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.broker.stop()

    # ------------------------------------------------------------------ helpers
    def outputs(self) -> Outputs:
        """A new batch of records for the generator's producer (the latency run sends one per tick)."""
        return Outputs(self.prod, self.rt.topic_partitions(), self.rt.counters.produced)

    def groups(self) -> dict[str, list[str]]:
        """Consumer group -> the topics it consumes (the pipeline runs one group per stage)."""
        n = self.rt.names
        imports = [n.import_topic(c) for c in self.config.connectors]
        if self.naive:
            return {f"naive-{self.name}": imports}
        groups = {
            n.group_id("staging"): [*imports, n.links_topic()],
            n.group_id("join"): [n.join_topic()],
            n.group_id("metaverse"): [n.mv_topic()],
        }
        if self.export:
            groups[n.group_id("export-dir")] = [n.export_topic("dir")]
        return groups

    def output_topics(self) -> list[str]:
        n = self.rt.names
        if self.naive:
            return [f"naive-{self.name}.export.dir"]
        return [n.join_topic(), n.links_topic(), n.mv_topic(), n.export_topic("dir"), n.mv_changes_topic()]

    def input_topics(self) -> list[str]:
        n = self.rt.names
        topics = [n.import_topic(c) for c in self.config.connectors]
        if not self.naive:
            topics += [n.join_topic(), n.links_topic(), n.mv_topic(), n.refs_topic()]
            if self.export:
                topics.append(n.export_topic("dir"))
        return topics

    def export_topic(self) -> str:
        return f"naive-{self.name}.export.dir" if self.naive else self.rt.names.export_topic("dir")

    def dead(self) -> bool:
        return any(p.poll() is not None for p in self.procs)

    def check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                tail = (self.work / f"worker{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {i} exited with {p.returncode}:\n{tail}")

    async def drained(self) -> None:
        self.check_alive()
        # What this process published to the input topics: a group has drained them only when its committed
        # offsets add up to at least this much, whatever a broker's end offsets say at that moment.
        imports = {self.rt.names.import_topic(c) for c in self.config.connectors}
        produced = {t: n for t, n in self.rt.counters.produced.items() if t in imports}
        # Generous: 1M people take about half an hour to load on a 2-core machine.
        timeout = max(1800.0, sum(produced.values()) / 200)
        await kafka.wait_drained(
            self.broker.bootstrap, self.groups(), timeout_s=timeout, produced=produced, check=self.check_alive
        )

    async def warm_up(self) -> None:
        """Until every worker has joined and records flow end to end on every partition."""
        seen: set[bytes] = set()
        watcher = await kafka.Watcher(
            self.broker.bootstrap, self.export_topic(), lambda r: seen.add(r.key)
        ).start()
        try:
            org = generate(self.args.partitions * 4, seed=999)
            msgs = [
                self.factory.change(
                    "hr",
                    "c",
                    f"W{p.employee_id}",
                    "employee",
                    {
                        **p.hr_row(),
                        # its own ids and mail: a warm-up person must not join the organisation's accounts
                        "employee_id": [f"W{p.employee_id}"],
                        "uid": [f"w{p.uid}"],
                        "email": [f"w{p.uid}@warm-up.example.org"],
                        "status": ["active"],
                    },
                    f"warm-{p.employee_id}",
                    kafka.now_ms(),
                )
                for p in org.people
            ]
            await kafka.produce_all(self.out, msgs)
            await kafka.wait_for(lambda: len(seen) >= len(msgs) or self.dead(), 120, "the warm-up records")
            self.check_alive()
            await self.drained()
            if self.workers > 1:
                await asyncio.sleep(3)  # let a late rebalance settle before measuring
                await self.drained()
        finally:
            await watcher.stop()

    async def timed(self, messages: Any, expected: int) -> tuple[int, float]:
        start = kafka.now_ms()
        n = await kafka.produce_all(self.out, messages)
        assert n == expected or expected < 0, (n, expected)
        await self.drained()
        # The stage groups have committed everything; a reference table change read just before may still
        # be turning into exports (streams.reftable), and reference answers deferred during a load are
        # applied once the worker sees it has caught up (about a second after its last batch): the end is
        # the last output once none has come for a while.
        end = await kafka.last_timestamp(self.broker.bootstrap, self.output_topics())
        while True:
            await asyncio.sleep(2.0)
            later = await kafka.last_timestamp(self.broker.bootstrap, self.output_topics())
            if later == end:
                break
            end = later
        if os.environ.get("IDSYNC_BENCH_TIMELINE"):
            tl = await kafka.timeline(
                self.broker.bootstrap, self.input_topics() + self.output_topics(), start
            )
            for topic, row in tl.items():
                print(
                    f"    {topic.split('.', 2)[-1]:<14} {' '.join(f'{n:5d}' for n in row)}", file=sys.stderr
                )
        return n, max(0.001, (end - start) / 1000)

    async def initial_load(self, res: PhaseResult, dir_anchors: Mapping[str, str] | None = None) -> None:
        """Publish the organisation's three full-import runs and time them through the pipeline
        (``dir_anchors``: ``records.initial_load``'s)."""
        expected = initial_count(self.org) + 6 * self.args.partitions  # + run markers
        async with self.spying("load", "IDSYNC_BENCH_PROFILE_LOAD"):
            res.records, res.seconds, costs = await self.costed(
                initial_load(self.org, self.factory, kafka.now_ms(), dir_anchors), expected
            )
        res.rate = round(res.records / res.seconds)
        res.cpu_us_per_record, res.rocksdb_cpu_us_per_record, res.broker_cpu_us_per_record = costs

    async def costed(self, messages: Any, expected: int) -> tuple[int, float, tuple[float, float, float]]:
        """``timed``, and the CPU it took per record (µs) of the workers, their RocksDB threads and the
        broker."""
        before = (self.cpu_s(), self.rocksdb_cpu_s(), self.broker.cpu_s())
        n, seconds = await self.timed(messages, expected)
        after = (self.cpu_s(), self.rocksdb_cpu_s(), self.broker.cpu_s())
        workers, rocksdb, broker = (
            round(1e6 * (a - b) / max(n, 1), 1) for a, b in zip(after, before, strict=True)
        )
        return n, seconds, (workers, rocksdb, broker)

    def active_people(self) -> list[Person]:
        """The organisation's active people: those a title change reaches a pending export for."""
        return [p for p in self.org.people if p.status == "active"]

    async def sustained(self, res: PhaseResult, count: int) -> None:
        """``count`` title changes of active people (in turn), published at once and timed through the
        pipeline as the load is (``costed``), with the CPU per change."""
        active = self.active_people()
        start = kafka.now_ms()
        # The factory gives each change a newer source version: a person's later change supersedes the
        # earlier, as the latency run's, sent later, supersede these.
        changes = (
            title_change(self.factory, active[i % len(active)], f"sustained-{i}", start) for i in range(count)
        )
        async with self.spying("sustained", "IDSYNC_BENCH_PROFILE_SUSTAINED"):
            res.sustained_records, res.sustained_seconds, costs = await self.costed(changes, count)
        res.sustained_rate = round(res.sustained_records / res.sustained_seconds)
        res.sustained_cpu_us, res.sustained_rocksdb_cpu_us, res.sustained_broker_cpu_us = costs
        # Each person's last change (the largest i of its turn) must have reached a pending export. They
        # are the export topic's newest records: no partition holds more of them than ``count``.
        last = {f"sustained-{i}" for i in range(max(0, count - len(active)), count)}
        res.sustained_people = len(last)
        seen: set[str] = set()
        async for _topic, records in kafka.read_all(self.broker.bootstrap, [self.export_topic()], 300, count):
            for r in records:
                if r.value is not None and b"sustained-" in r.value:
                    title = exported_title(r.value)
                    if title in last:
                        seen.add(title)
        res.sustained_exported = len(seen)

    async def latency(self, res: PhaseResult, rate: int, seconds: float) -> None:
        """Steady offered load of title changes; latency = pending export timestamp - send time. Records
        the changes sent, the rate reached (per second), how many pending exports carried one of them,
        the percentiles over those and per window of send time, and the CPU spent per change."""
        sent: dict[int, int] = {}
        #: (send time s, latency ms) of each change a pending export carried.
        timed: list[tuple[float, float]] = []
        active = self.active_people()

        def on_export(r: Any) -> None:
            if self.naive:
                return
            title = exported_title(r.value)
            if title is not None and title.startswith("lat-"):
                i = int(title[4:])
                if i in sent:
                    timed.append((sent[i] / 1000, r.timestamp - sent[i]))

        def make(i: int) -> Any:
            p = active[i % len(active)]
            return title_change(self.factory, p, f"lat-{i}", kafka.now_ms())

        watcher = await kafka.Watcher(self.broker.bootstrap, self.export_topic(), on_export).start()
        cpu = (self.cpu_s(), self.broker.cpu_s(), time.process_time())
        try:
            n, took = await kafka.produce_at_rate(self.outputs, make, rate, seconds, sent)
            await self.drained()
            await asyncio.sleep(0.5)
            spent = (self.cpu_s(), self.broker.cpu_s(), time.process_time())
        finally:
            await watcher.stop()
        lat = [ms for _t, ms in timed]
        res.latency_samples, res.latency_rate, res.latency_matched = n, round(n / took), len(lat)
        res.latency_ms, res.latency_windows = _percentiles(lat), _windows(timed)
        res.latency_cpu_us = {
            who: round(1e6 * (after - before) / max(n, 1), 1)
            for who, before, after in zip(("workers", "broker", "bench"), cpu, spent, strict=True)
        }

    async def group_change(
        self, res: PhaseResult, by_value: bool, changes: int = 6, name: str = "all-staff"
    ) -> None:
        """One member removed from or added back to a group (all-staff; ``name``: another, by value only),
        one change at a time: the time from publishing the group's change record to its mv.changes record,
        and the workers' CPU per change (how the cost of one membership change grows with the group).
        ``by_value``: the record says which member (version 2, ``added``/``removed``); otherwise it carries
        the group's whole image."""
        members = list(self.org.groups[name])
        # By value: the first member, removed or added back; by image: the whole member list.
        first = {"member": group_image(self.org, name, members[:1])["member"]}
        seen: dict[int, int] = {}
        sizes: list[float] = []

        def on_change(r: Any) -> None:
            change = MVChange.model_validate_json(r.value)
            if change.object_type == "group" and change.attributes.get("name") == [name]:
                # A version 2 record gives the members by value, and how many there are now.
                count = (change.counts or {}).get("member", len(change.attributes.get("member", [])))
                seen[count] = r.timestamp
                sizes.append(len(r.value))

        watcher = await kafka.Watcher(
            self.broker.bootstrap, self.rt.names.mv_changes_topic(), on_change
        ).start()
        took: list[float] = []
        what = (
            ("group-change" if by_value else "group-image") if name == "all-staff" else "small-group-change"
        )
        net: list[float] = []  # per change: the workers' CPU ms less their idle CPU for as long
        async with self.spying(what, "IDSYNC_BENCH_PROFILE_GROUP"):
            cpu = self.cpu_s()
            try:
                for k in range(changes):
                    began, began_cpu = time.monotonic(), self.cpu_s()
                    now = members[1:] if k % 2 == 0 else members
                    seen.clear()
                    sent = kafka.now_ms()
                    msg = self.factory.change(
                        "hr",
                        "u",
                        f"group-{name}",
                        "group",
                        None if by_value else group_image(self.org, name, now),
                        f"group-{'value-' if by_value else ''}{k}",
                        sent,
                        dn=group_dn(name),
                        added=(first if k % 2 else {}) if by_value else None,
                        removed=({} if k % 2 else first) if by_value else None,
                    )
                    await kafka.produce_all(self.out, [msg])
                    count = len(now)
                    await kafka.wait_for(functools.partial(dict.__contains__, seen, count), 120, "the change")
                    took.append(seen[count] - sent)
                    spent = 1e3 * (self.cpu_s() - began_cpu)
                    net.append(spent - res.idle_cpu_ms_per_s * (time.monotonic() - began))
            finally:
                await watcher.stop()
        net_median = _percentiles(net).get("p50", 0.0)
        median, per_change = (
            _percentiles(took).get("p50", 0.0),
            round(1e3 * (self.cpu_s() - cpu) / changes, 1),
        )
        if name != "all-staff":
            res.small_group_members = len(members)
            res.small_group_change_ms, res.small_group_change_cpu_ms = median, per_change
            res.small_group_change_net_cpu_ms = net_median
            return
        res.group_members = len(members)
        if by_value:
            res.group_change_ms, res.group_change_cpu_ms = median, per_change
            res.group_change_net_cpu_ms = net_median
            res.group_feed_bytes = round(_percentiles(sizes).get("p50", 0.0))
        else:
            res.group_image_ms, res.group_image_cpu_ms = median, per_change

    async def idle_cpu(self, res: PhaseResult, seconds: float = 2.0) -> None:
        """The workers' CPU while nothing comes (ms per second), before the group changes, which count it
        for as long as each takes."""
        cpu = self.cpu_s()
        await asyncio.sleep(seconds)
        res.idle_cpu_ms_per_s = round(1e3 * (self.cpu_s() - cpu) / seconds, 1)

    @contextlib.asynccontextmanager
    async def spying(self, what: str, variable: str) -> AsyncIterator[None]:
        """With ``variable=DIR`` in the environment (``IDSYNC_BENCH_PROFILE_GROUP``: the group changes,
        ``IDSYNC_BENCH_PROFILE_DELTA``: the delta round and the latency run, ``IDSYNC_BENCH_PROFILE_LOAD``:
        the initial load): py-spy attached to every
        worker for one measurement (its collapsed stacks in DIR), so that measurement's profile is not
        buried in the initial load's. The measurement starts once py-spy has had a second to attach."""
        spies = self._spy(what, variable)
        if spies:
            await asyncio.sleep(1.0)  # py-spy attaches
        try:
            yield
        finally:
            self._unspy(spies)

    def _spy(self, what: str, variable: str) -> list[subprocess.Popen[bytes]]:
        where = os.environ.get(variable)
        if not where:
            return []
        Path(where).mkdir(parents=True, exist_ok=True)
        spy = ["py-spy", "record", "-r", "500", "-f", "raw"]
        # --native: a compiled engine's functions (scripts/compile_engine.py) show as C frames, not as
        # their Python callers' own time; py-spy then pauses the worker for each sample (no --nonblocking).
        spy += ["--native"] if _native_frames() else ["--nonblocking"]
        return [
            subprocess.Popen(
                [*spy, "-o", f"{where}/{self.name}-{what}-worker{w}.txt", "--pid", str(p.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for w, p in enumerate(self.procs)
        ]

    @staticmethod
    def _unspy(spies: list[subprocess.Popen[bytes]]) -> None:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT, the worker runs on
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()

    async def sizes(self) -> dict[str, int]:
        prefix = f"idsync.{self.name}."
        topics = self.input_topics() + self.output_topics()
        if not self.naive:
            # State writes: what checkpointing saves shows here (records, not bytes).
            topics += [self.rt.names.changelog_topic(s) for s in ("cs", "join", "mv", "mv-refs")]
        sizes = await kafka.topic_sizes(self.broker.bootstrap, list(dict.fromkeys(topics)))
        return {t.removeprefix(prefix): n for t, n in sizes.items()}

    async def load_bytes(self, res: PhaseResult) -> None:
        """Uncompressed bytes on the state changelogs and ``mv.changes``, and the keys that wrote the most
        (none, and a note, when reading them takes longer than 10 minutes)."""
        n = self.rt.names
        topics = [n.changelog_topic(s) for s in ("cs", "join", "mv", "mv-refs")] + [n.mv_changes_topic()]
        prefix = f"idsync.{self.name}."
        try:
            found = await topic_bytes(self.broker.bootstrap, topics, top=5, timeout_s=600)
        except TimeoutError as exc:
            res.notes.append(f"load bytes not measured: {exc}")
            return
        res.load_bytes = {t.topic.removeprefix(prefix): t.bytes for t in found}
        res.load_bytes_top = {t.topic.removeprefix(prefix): t.top for t in found}
        res.load_bytes_kinds = {t.topic.removeprefix(prefix): t.kinds for t in found}

    async def kinds(self, res: PhaseResult) -> dict[str, dict[str, int]]:
        """The internal topics' messages by kind (none, and a note, when reading them takes too long: at
        least 5 minutes, or a second per 20,000 messages ``res.topics`` counts)."""
        n = self.rt.names
        topics = [n.join_topic(), n.mv_topic(), n.links_topic(), n.refs_topic()]
        prefix = f"idsync.{self.name}."
        total = sum(res.topics.get(t.removeprefix(prefix), 0) for t in topics)
        timeout = max(300.0, total / 20_000)
        try:
            kinds = await kafka.message_kinds(self.broker.bootstrap, topics, timeout)
        except TimeoutError as exc:
            res.notes.append(f"message kinds not counted: {exc}")
            return {}
        return {t.removeprefix(prefix): k for t, k in kinds.items()}

    async def export_digest(self, res: PhaseResult) -> dict[str, dict[str, list[str]]]:
        """What the pending exports so far would leave in the directory (``target_state``), digested: what
        a pipeline decided, not how it got there. Returns that directory."""
        exports = []
        async for _topic, records in kafka.read_all(self.broker.bootstrap, [self.export_topic()], 300):
            exports += [PendingExport.model_validate_json(r.value) for r in records]
        entries = target_state(self.org, exports)
        lines = [json.dumps([dn, attrs], sort_keys=True) + "\n" for dn, attrs in sorted(entries.items())]
        # Kept in the phase's directory (``--work-dir``): where two pipelines differ, a diff shows how.
        (self.work / "directory.jsonl").write_text("".join(lines))
        res.load_objects = len(entries)
        res.load_digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:16]
        return entries

    async def error_counts(self) -> tuple[dict[str, int], dict[str, str]]:
        """The error records on the errors topic so far, by step, error type and the container of the
        object's DN (``export/schema-violation ou=groups,dc=example,dc=org``), and the first message of
        each."""
        from connectors.ldap.dn import parent_dn

        counts: Counter[str] = Counter()
        first: dict[str, str] = {}
        topic = self.rt.names.errors_topic()
        async for _topic, records in kafka.read_all(self.broker.bootstrap, [topic], 300):
            for r in records:
                error = ErrorRecord.model_validate_json(r.value)
                kind = f"{error.algorithm_step}/{error.error_type}"
                if error.locator:
                    kind += f" {(parent_dn(error.locator) or '').lower()}"
                counts[kind] += 1
                first.setdefault(kind, error.message)
        return dict(counts), first

    def cpu_s(self) -> float:
        return sum(_cpu_s(p.pid) for p in self.procs)

    def rocksdb_cpu_s(self) -> float:
        return sum(_rocksdb_cpu_s(p.pid) for p in self.procs)

    async def naive_work(self) -> dict[str, Any]:
        """The naive worker's work report once the load is done (it rewrites it every ``REPORT_S``)."""
        from streams.bench.naive import REPORT, REPORT_S

        await asyncio.sleep(3 * REPORT_S)
        path = self.work / "worker0" / REPORT
        if not path.exists():
            return {}
        doc: dict[str, Any] = json.loads(path.read_text())
        warm_up = self.args.partitions * 4  # the warm-up's people (``warm_up``), consumed first
        doc["people_before_groups"] = [max(0, n - warm_up) for n in doc.get("people_before_groups", [])]
        return doc

    def rss(self) -> list[float]:
        return [round(peak_rss_mb(p.pid), 1) for p in self.procs]

    def broker_rss(self) -> float:
        return round(self.broker.peak_rss_mb(), 1)

    def state_mb(self) -> float:
        return round(sum(_du_mb(self.work / f"worker{w}") for w in range(self.workers)), 1)


async def batched_phase(args: argparse.Namespace, work: Path, org: Org, workers: int) -> PhaseResult:
    res = PhaseResult("batched", org.size, workers)
    async with Phase(args, work, org, f"b{org.size}w{workers}", workers) as ph:
        await ph.warm_up()
        await ph.initial_load(res)
        res.peak_rss_by_step["load"] = ph.rss()
        res.broker_rss_by_step["load"] = ph.broker_rss()
        if args.load_bytes:
            await ph.load_bytes(res)
        if getattr(args, "digest", False) or (args.naive and org.size <= args.naive_max):
            await ph.export_digest(res)  # compared with the naive baseline's, or another version's
        changes = org.delta(1)
        delta = list(delta_records(changes, ph.factory, 1, kafka.now_ms(), org=org))
        async with ph.spying("delta", "IDSYNC_BENCH_PROFILE_DELTA"):
            res.delta_records, res.delta_seconds = await ph.timed(iter(delta), len(delta))
        res.delta_rate = round(res.delta_records / res.delta_seconds)
        res.peak_rss_by_step["delta"] = ph.rss()
        res.broker_rss_by_step["delta"] = ph.broker_rss()
        async with ph.spying("latency", "IDSYNC_BENCH_PROFILE_DELTA"):
            await ph.latency(res, args.rate, args.latency_seconds)
        res.peak_rss_by_step["latency"] = ph.rss()
        res.broker_rss_by_step["latency"] = ph.broker_rss()
        await ph.idle_cpu(res)
        await ph.group_change(res, by_value=True)
        await ph.group_change(res, by_value=False)
        departments = [n for n in org.groups if n != "all-staff"]
        if departments:
            small = min(departments, key=lambda n: (len(org.groups[n]), n))
            await ph.group_change(res, by_value=True, name=small)
        res.peak_rss_by_step["group change"] = ph.rss()
        res.broker_rss_by_step["group change"] = ph.broker_rss()
        if args.sustained:
            # Last: its records fill the embedded broker's partitions, whose fetches get dearer with every
            # record batch they hold (docs/benchmarks.md, eleventh session) — the latency run before it
            # would measure that.
            await ph.sustained(res, args.sustained)
            res.peak_rss_by_step["sustained"] = ph.rss()
            res.broker_rss_by_step["sustained"] = ph.broker_rss()
        res.peak_rss_mb = ph.rss()
        res.broker_rss_mb = ph.broker_rss()
        res.state_mb = ph.state_mb()
        res.topics = await ph.sizes()
        if args.kinds:
            res.message_kinds = await ph.kinds(res)
    return res


async def naive_phase(args: argparse.Namespace, work: Path, org: Org) -> PhaseResult:
    res = PhaseResult("naive", org.size, 1)
    async with Phase(args, work, org, f"n{org.size}", 1, naive=True) as ph:
        await ph.warm_up()
        await ph.initial_load(res)
        res.naive_work = await ph.naive_work()
        res.peak_rss_mb = ph.rss()
        res.broker_rss_mb = ph.broker_rss()
        res.state_mb = ph.state_mb()
        await ph.export_digest(res)
    return res


async def ldap_phase(args: argparse.Namespace, work: Path, org: Org) -> PhaseResult:
    """Initial load with the export worker on: pending exports applied to a real slapd."""
    from connectors.ldap.slapd import Slapd

    res = PhaseResult("batched+ldap", org.size, 1)
    with Slapd(work / "slapd") as slapd:
        env = {
            "IDSYNC_BENCH_LDAP_URI": slapd.uri,
            "IDSYNC_BENCH_LDAP_BIND_DN": slapd.bind_dn,
            "IDSYNC_BENCH_LDAP_PASSWORD": slapd.password,
        }
        # The directory holds the accounts the load's directory run imports, with the anchors slapd gave
        # them: the pending exports that update them find them (before the thirty-third session slapd
        # started empty, so each of those updates failed as a missing object, and provisioning adds
        # racing the joins left a count that varied from run to run).
        await asyncio.to_thread(load_directory, slapd, org)
        anchors = await asyncio.to_thread(directory_anchors, slapd, org)
        async with Phase(args, work, org, f"l{org.size}", 1, export=True, env=env) as ph:
            await ph.warm_up()
            await ph.initial_load(res, anchors)
            # The load's end is its last output record: exports of its tail (answers released once the
            # worker caught up) may still be on their way to slapd. Counted once the export group has
            # applied everything, not before.
            await ph.drained()
            res.exports = slapd.entry_count(slapd.people_dn, scope="level")
            res.peak_rss_mb = ph.rss()
            res.broker_rss_mb = ph.broker_rss()
            res.state_mb = ph.state_mb()
            entries = await ph.export_digest(res)
            people = "," + slapd.people_dn.lower()
            res.exports_expected = sum(1 for dn in entries if dn.endswith(people))
            res.export_errors, first = await ph.error_counts()
            containers = [slapd.people_dn, f"ou=groups,{slapd.suffix}"]
            res.directory_differences, shown = await asyncio.to_thread(
                directory_differences, slapd, entries, containers
            )
            res.notes.append(
                f"{res.exports:,} entries in ou=people after the load (the warm-up's included), "
                f"{res.exports_expected:,} by its pending exports; error records: "
                + (", ".join(f"{kind} {n:,}" for kind, n in sorted(res.export_errors.items())) or "none")
            )
            res.notes += [f"first {kind} error: {message}" for kind, message in sorted(first.items())]
            res.notes.append(
                f"the directory differs from what the pending exports say in {res.directory_differences:,} "
                "places" + "".join(f"; {d}" for d in shown)
                if res.directory_differences
                else "the directory holds what the pending exports say (people and groups)"
            )
    return res


def target_state(org: Org, exports: list[PendingExport]) -> dict[str, dict[str, list[str]]]:
    """The directory after ``exports``, from the accounts it held before the load (DN, lower case ->
    attributes, values sorted). An add of an entry that exists replaces the attributes it names, as the
    LDAP connector's converted add does: whether a pipeline joined an existing account (an update) or
    provisioned it before that account's import arrived (an add, converted) leaves the same entry."""
    entries = {dn.lower(): dict(attrs) for _anchor, dn, attrs in (org.dir_entry(i) for i in org.dir_accounts)}
    for net in fold(exports):
        dn = net.dn.lower()
        if net.op == "delete":
            entries.pop(dn, None)
            continue
        if net.op == "delete-add":
            entries[dn] = {}  # deleted, then provisioned again: nothing of the old entry stays
        entry = entries.setdefault(dn, {})
        for name, change in net.attributes.items():
            if change.new is not None:
                entry[name] = list(change.new)
            else:
                kept = [v for v in entry.get(name, []) if v not in change.remove]
                entry[name] = kept + [v for v in change.add if v not in kept]
        if net.new_dn is not None:
            entries[net.new_dn.lower()] = entries.pop(dn)
    return {
        dn: {name: sorted(values) for name, values in attrs.items() if values}
        for dn, attrs in entries.items()
    }


def naive_work_line(work: dict[str, Any], people: int) -> str:
    """The naive baseline's work report in a line: its large writes, and when its groups arrived."""
    from streams.bench.naive import LARGE

    writes = work.get("writes", {})
    total = sum(t["bytes"] for t in writes.values())
    large = sum(t["large"] for t in writes.values())
    large_bytes = sum(t["large_bytes"] for t in writes.values())
    line = f"{large:,} writes of values over {LARGE >> 10} KiB: "
    line += f"{large_bytes / 1e6:,.0f} of the {total / 1e6:,.0f} MB it wrote"
    before = work.get("people_before_groups", [])
    if before:
        line += (
            f"; its {len(before)} groups arrived after {min(before):,} to {max(before):,} "
            f"of the {people:,} HR people"
        )
    return line


def same_work(batched: PhaseResult, naive: PhaseResult) -> str:
    """Whether the naive baseline's load left the directory as the batched pipeline's did: a ratio is only
    worth something between two pipelines that decided the same."""
    if batched.load_digest and batched.load_digest == naive.load_digest:
        return f"the naive baseline's exports leave the same directory ({naive.load_objects:,} entries)"
    return (
        f"the naive baseline's exports leave a DIFFERENT directory: {naive.load_objects:,} entries "
        f"({naive.load_digest}) against {batched.load_objects:,} ({batched.load_digest or 'not read'})"
    )


def _table(results: list[PhaseResult]) -> str:
    head = [
        "phase",
        "N",
        "workers",
        "records",
        "s",
        "records/s",
        "delta/s",
        "lat p50/p95/p99 ms",
        "peak RSS MB w / broker",
        "state MB",
        "CPU µs/rec w (rocksdb) + b",
        "group change ms (CPU): by value / image; feed bytes; small group by value",
    ]
    rows = []
    for r in results:
        lat = r.latency_ms
        rows.append(
            [
                r.kind,
                f"{r.size:,}",
                str(r.workers),
                f"{r.records:,}",
                f"{r.seconds:.2f}",
                f"{r.rate:,.0f}",
                f"{r.delta_rate:,.0f}" if r.delta_records else "-",
                f"{lat['p50']}/{lat['p95']}/{lat['p99']}"
                + (f" @{r.latency_rate:,}/s" if r.latency_rate else "")
                if lat
                else "-",
                "+".join(f"{m:.0f}" for m in r.peak_rss_mb)
                + (f" / {r.broker_rss_mb:,.0f}" if r.broker_rss_mb else ""),
                f"{r.state_mb:.0f}",
                f"{r.cpu_us_per_record:.0f} ({r.rocksdb_cpu_us_per_record:.0f})"
                f" + {r.broker_cpu_us_per_record:.0f}"
                if r.cpu_us_per_record
                else "-",
                f"{r.group_change_ms:.0f} ({r.group_change_cpu_ms:.0f}) / "
                f"{r.group_image_ms:.0f} ({r.group_image_cpu_ms:.0f}) @{r.group_members:,}; "
                f"{r.group_feed_bytes:,} B; "
                f"{r.small_group_change_ms:.0f} ({r.small_group_change_cpu_ms:.0f})"
                f" @{r.small_group_members:,}"
                if r.group_members
                else "-",
            ]
        )
    return format_table(head, rows)


async def _bench(args: argparse.Namespace, work: Path, imports: list[ImportResult]) -> list[PhaseResult]:
    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    worker_counts = [int(w) for w in str(args.workers).split(",") if w]
    results: list[PhaseResult] = []
    for size in sizes:
        print(
            f"generating the organisation: {size:,} people (seed {args.seed}); engine {engine_build()}",
            file=sys.stderr,
            flush=True,
        )
        org = generate(size, args.seed)
        write_hr_file(org, work / "hr.csv")
        if getattr(args, "imports", False):
            # First: a missing PostgreSQL or slapd fails the run before the long phases, not after.
            print("  connector imports (HR file, PostgreSQL, slapd) ...", file=sys.stderr, flush=True)
            done = await import_phase(args, work, org, work / "hr.csv")
            imports += done
            print(imports_table(done), file=sys.stderr, flush=True)
        for w in worker_counts:
            print(f"  batched pipeline, {w} worker(s) ...", file=sys.stderr, flush=True)
            results.append(await _counted(batched_phase(args, work, generate(size, args.seed), w)))
            print(_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.naive and size <= args.naive_max:
            print("  naive per-event faust baseline ...", file=sys.stderr, flush=True)
            results.append(await _counted(naive_phase(args, work, generate(size, args.seed))))
            print(_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    if args.ldap:
        size = min(sizes)
        print(f"  with exports applied to slapd, N={size:,} ...", file=sys.stderr, flush=True)
        results.append(await _counted(ldap_phase(args, work, generate(size, args.seed))))
        results.append(await follow_phase(args, work))  # streams/bench/follow.py
    return results


async def _counted(phase: Awaitable[PhaseResult]) -> PhaseResult:
    """A phase's result with the generator's retried flushes during it."""
    before = kafka.STATS.retries
    res = await phase
    res.generator_retries = kafka.STATS.retries - before
    return res


#: Environment variables that run py-spy on the workers (``IDSYNC_BENCH_PROFILE``: the whole phase;
#: ``IDSYNC_BENCH_PROFILE_GROUP``: each group change measurement; ``IDSYNC_BENCH_PROFILE_DELTA``: the
#: delta round and the latency run; ``IDSYNC_BENCH_PROFILE_LOAD``: the initial load;
#: ``IDSYNC_BENCH_PROFILE_SUSTAINED``: the sustained changes).
PROFILE_VARIABLES = (
    "IDSYNC_BENCH_PROFILE",
    "IDSYNC_BENCH_PROFILE_GROUP",
    "IDSYNC_BENCH_PROFILE_DELTA",
    "IDSYNC_BENCH_PROFILE_LOAD",
    "IDSYNC_BENCH_PROFILE_SUSTAINED",
)


def check_profiler(environ: Mapping[str, str]) -> None:
    """Refuse to start a run asked to profile without py-spy on the PATH: it would fail only when the
    profiler starts, after the initial load for a group change's profile."""
    asked = [name for name in PROFILE_VARIABLES if environ.get(name)]
    if asked and shutil.which("py-spy") is None:
        raise IdsyncError(f"{' and '.join(asked)} set, but py-spy is not on the PATH: pip install py-spy")


def run_bench(args: argparse.Namespace) -> int:
    check_profiler(os.environ)
    args.naive_max = getattr(args, "naive_max", 10_000)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="idsync-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    imports: list[ImportResult] = []
    try:
        results = asyncio.run(_bench(args, work, imports))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    table = _table(results)
    print(table)
    if imports:
        print()
        print(imports_table(imports))
    for r in results:
        if r.sustained_records:
            print(
                f"N={r.size:,} workers={r.workers}: sustained title changes of synced people: "
                f"{r.sustained_records:,} in {r.sustained_seconds:.2f} s, {r.sustained_rate:,.0f} records/s; "
                f"CPU µs per change w (rocksdb) + b: {r.sustained_cpu_us:,.0f} "
                f"({r.sustained_rocksdb_cpu_us:,.0f}) + {r.sustained_broker_cpu_us:,.0f}; "
                f"a pending export carries the last change of {r.sustained_exported:,} of the "
                f"{r.sustained_people:,} people changed"
            )
        if r.latency_windows:
            p99s = ", ".join(f"{w['p99']:.0f}" for w in r.latency_windows)
            window = f"{LATENCY_WINDOW_S:.0f} s"
            print(f"N={r.size:,} workers={r.workers}: latency p99 ms per {window} of the run: {p99s}")
        if r.latency_cpu_us:
            spent = ", ".join(f"{who} {us:,.0f}" for who, us in r.latency_cpu_us.items())
            print(f"N={r.size:,} workers={r.workers}: latency run CPU µs per change: {spent}")
        if r.group_members:
            print(
                f"N={r.size:,} workers={r.workers}: workers' CPU while idle {r.idle_cpu_ms_per_s:,.1f} ms/s "
                "(part of each group change's CPU for as long as it takes)"
            )
            print(
                f"N={r.size:,} workers={r.workers}: one member change by value, workers' CPU less idle "
                f"(median per change): all-staff {r.group_change_net_cpu_ms:,.1f} ms @{r.group_members:,}, "
                f"smallest department {r.small_group_change_net_cpu_ms:,.1f} ms @{r.small_group_members:,}"
            )
        if r.load_bytes:
            written = ", ".join(f"{t} {b / 1e6:,.1f}" for t, b in r.load_bytes.items())
            print(f"N={r.size:,} workers={r.workers}: MB written by the load (uncompressed): {written}")
            for t, kinds in r.load_bytes_kinds.items():
                per = ", ".join(
                    f"{kind} {n / max(r.records, 1):.2f} ({gone / max(r.records, 1):.2f})"
                    for kind, (n, gone, _) in kinds.items()
                )
                print(f"N={r.size:,} workers={r.workers}: {t} records per load record (tombstones): {per}")
        if r.load_digest:
            print(
                f"N={r.size:,} workers={r.workers} {r.kind}: the load's exports leave {r.load_objects:,} "
                f"directory entries, digest {r.load_digest}"
            )
        if r.naive_work:
            print(f"N={r.size:,} workers={r.workers} {r.kind}: {naive_work_line(r.naive_work, r.size)}")
        if r.generator_retries:
            print(
                f"N={r.size:,} workers={r.workers} {r.kind}: the bench's producer retried "
                f"{r.generator_retries} flush(es) the broker did not acknowledge in time (a retried change's "
                "latency includes its retry)"
            )
        for note in r.notes:
            print(f"N={r.size:,} workers={r.workers} {r.kind}: {note}")
    for r in results:
        base = next((n for n in results if n.kind == "naive" and n.size == r.size), None)
        if r.kind == "batched" and base is not None and base.rate:
            print(f"N={r.size:,} workers={r.workers}: {r.rate / base.rate:.1f}x the naive per-event baseline")
            print(f"N={r.size:,} workers={r.workers}: {same_work(r, base)}")
    print(f"engine: {engine_build()} (scripts/compile_engine.py compiles it with mypyc)")
    doc = {
        "command": " ".join(["idsync", *sys.argv[1:]]) if sys.argv else "idsync bench",
        #: Whether the workers ran the engine compiled with mypyc or interpreted (since the thirty-fourth
        #: session; before it, always interpreted).
        "engine": engine_build(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": round(time.monotonic() - started, 1),
        "results": [asdict(r) for r in results],
        "imports": [asdict(r) for r in imports],
    }
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0
