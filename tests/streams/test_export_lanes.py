"""Export lanes (``export_connections``): a worker applies a target's exports over several connector
instances at once, partition p on lane p mod N, so one object's exports stay in order on one lane.

The connected system here is a recording target (a real ``Export`` implementation that keeps what it
was asked, in the order it applied it); the worker, its ledger and its results run on a real broker and
RocksDB. The pipeline's own export tests (test_hr_to_ldap, test_export_crash, ...) run on slapd with the
directory's default of 4 lanes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from connectors.base import ExportOutcome
from connectors.files.config import LdifConnectorConfig
from schemas.codec import unpacker
from schemas.config import LdapConnectorConfig
from schemas.messages import ExportResult
from schemas.records import AttrChange, PendingExport
from streams.app import ensure_topics
from streams.bench import kafka
from streams.bench.records import bench_config
from streams.broker import EmbeddedBroker
from streams.config import load_config
from streams.consumer import Event, StageConsumer
from streams.output import partition_for
from streams.runtime import Runtime, Settings
from streams.stages.export import ExportWorker

pytestmark = pytest.mark.integration

PARTITIONS = 4


class Recorder:
    """Applies exports by remembering them: (lane, mv_id, seq) in the order applied, and how many calls
    were inside ``apply`` at once across all lanes."""

    def __init__(self, lane: int, log: list[tuple[int, str, int]], gauge: dict[str, int]) -> None:
        self.lane = lane
        self.log = log
        self.gauge = gauge
        self.lock = threading.Lock()
        self.closed = False

    def apply(self, export: PendingExport) -> ExportOutcome:
        with self.lock:
            self.gauge["now"] += 1
            self.gauge["max"] = max(self.gauge["max"], self.gauge["now"])
        time.sleep(0.003)  # a round trip to the directory
        with self.lock:
            self.gauge["now"] -= 1
            self.log.append((self.lane, export.mv_id, export.seq))
        return ExportOutcome(anchor=f"a-{export.mv_id}", dn=export.dn)

    def close(self) -> None:
        self.closed = True


def _export(mv_id: str, seq: int) -> PendingExport:
    return PendingExport(
        export_id=f"{mv_id}:{seq}",
        seq=seq,
        connector="dir",
        mv_id=mv_id,
        op="add" if seq == 1 else "update",
        object_type="person",
        dn=f"uid={mv_id},ou=people,dc=example,dc=org",
        attributes={"title": AttrChange(op="replace", values=[f"t{seq}"])},
        ts_ms=1,
    )


def _events(topic: str, objects: int, seqs: int, grouped: bool = False) -> list[Event]:
    """``seqs`` exports per object, interleaved across objects as a topic would hold them; ``grouped``: one
    partition's after the other's, as a batch of the consumer holds them."""
    out = []
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for seq in range(1, seqs + 1):
        for o in range(objects):
            mv_id = f"mv{o:03d}"
            p = partition_for(mv_id.encode(), PARTITIONS)
            value = _export(mv_id, seq).model_dump_json().encode()
            rec = ConsumerRecord(topic, p, offsets[p], 0, 0, mv_id.encode(), value, None, 0, len(value), ())
            offsets[p] += 1
            out.append(Event(rec))
    return sorted(out, key=lambda ev: ev.message.partition) if grouped else out


def _run(
    tmp: Path, lanes: int, seqs: int = 3, grouped: bool = False
) -> tuple[list[tuple[int, str, int]], dict[str, int], list[Recorder], list[str]]:
    hr = tmp / "hr.csv"
    hr.write_text("employee_id\n")
    config = load_config(bench_config("lanes", tmp, PARTITIONS, hr))
    log: list[tuple[int, str, int]] = []
    gauge = {"now": 0, "max": 0}
    recorders = [Recorder(i, log, gauge) for i in range(lanes)]
    results: list[str] = []

    async def scenario() -> None:
        with EmbeddedBroker(tmp / "broker") as broker:
            rt = Runtime(Settings(bootstrap_servers=broker.bootstrap, data_dir=tmp / "w"), config)
            await ensure_topics(rt)
            worker = ExportWorker(rt, "dir", recorders[0], recorders[1:])  # type: ignore[arg-type]
            try:
                await worker.process(_events(rt.names.export_topic("dir"), 24, seqs, grouped))
                decode = unpacker(ExportResult)
                watcher = await kafka.Watcher(
                    broker.bootstrap,
                    rt.names.mv_topic(),
                    lambda r: results.append(f"{decode.decode(r.value).mv_id}:{decode.decode(r.value).seq}"),
                    from_start=True,
                ).start()
                await kafka.wait_for(lambda: len(results) >= 24 * seqs, 30, "the export results")
                await watcher.stop()
                # The ledger recorded the last sequence of every object.
                ledger = {
                    k.decode(): int(v)
                    for p in range(PARTITIONS)
                    for k, v in worker.ledger.partition(p).scan(b"mv")
                }
                assert ledger == {f"mv{o:03d}": seqs for o in range(24)}
            finally:
                worker.close()
                await rt.stop()

    asyncio.run(scenario())
    return log, gauge, recorders, results


def test_lanes_apply_at_once_and_keep_each_objects_exports_in_order(tmp_path: Path) -> None:
    log, gauge, recorders, results = _run(tmp_path, lanes=4)

    assert len(log) == 24 * 3
    by_object: dict[str, list[tuple[int, int]]] = {}
    for lane, mv_id, seq in log:
        by_object.setdefault(mv_id, []).append((lane, seq))
    for mv_id, applied in by_object.items():
        assert [seq for _lane, seq in applied] == [1, 2, 3], mv_id  # in order
        lane = partition_for(mv_id.encode(), PARTITIONS) % 4
        assert {ln for ln, _seq in applied} == {lane}, mv_id  # on its partition's lane
    assert {lane for lane, _mv, _seq in log} == {0, 1, 2, 3}
    assert gauge["max"] > 1  # the lanes overlapped
    # Every export got its result, each object's in order.
    assert sorted(results) == sorted(f"mv{o:03d}:{s}" for o in range(24) for s in (1, 2, 3))
    for o in range(24):
        mine = [r for r in results if r.startswith(f"mv{o:03d}:")]
        assert mine == [f"mv{o:03d}:{s}" for s in (1, 2, 3)]
    # The worker closes the instances it was given for its extra lanes, not the pipeline's own.
    assert [r.closed for r in recorders] == [False, True, True, True]


def test_a_batch_one_partition_after_the_other_gives_every_lane_its_share_at_once(tmp_path: Path) -> None:
    """480 exports (100, 80, 120 and 180 on partitions 0-3) in one batch as the consumer hands it over,
    partition by partition: were they applied 200 at a time in that order, no run would hold all four
    partitions (the first: 0, 1 and a little of 2; the last: 3 alone)."""
    log, gauge, _recorders, _results = _run(tmp_path, lanes=4, seqs=20, grouped=True)
    assert len(log) == 24 * 20
    assert gauge["max"] == 4
    for mv_id in {mv for _lane, mv, _seq in log}:
        assert [seq for _lane, mv, seq in log if mv == mv_id] == list(range(1, 21)), mv_id


def test_one_lane_applies_one_export_at_a_time(tmp_path: Path) -> None:
    log, gauge, _recorders, _results = _run(tmp_path, lanes=1)
    assert len(log) == 24 * 3
    assert gauge["max"] == 1


def test_a_backlog_on_every_partition_keeps_every_lane_working(tmp_path: Path) -> None:
    """Through the pipeline's own consumer: 1,000 exports wait on each partition before it starts (an
    initial load's backlog). aiokafka hands a batch out of one partition's fetched records before the next
    one's; were a batch 800 records (200 per lane) in all, in that order, it would hold one partition, and
    one lane would work while the other three waited (two at once where a batch straddles two)."""
    hr = tmp_path / "hr.csv"
    hr.write_text("employee_id\n")
    config = load_config(bench_config("lanes", tmp_path, PARTITIONS, hr))
    log: list[tuple[int, str, int]] = []
    gauge = {"now": 0, "max": 0}
    recorders = [Recorder(i, log, gauge) for i in range(4)]
    waiting = 1000
    sent: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = Runtime(Settings(bootstrap_servers=broker.bootstrap, data_dir=tmp_path / "w"), config)
            await ensure_topics(rt)
            topic = rt.names.export_topic("dir")
            out = await rt.outputs()
            o = 0
            while min(len(ids) for ids in sent.values()) < waiting:
                mv_id = f"mv{o:05d}"
                o += 1
                p = partition_for(mv_id.encode(), PARTITIONS)
                if len(sent[p]) < waiting:
                    sent[p].append(mv_id)
                    out.add(topic, mv_id.encode(), _export(mv_id, 1).model_dump_json().encode())
            await out.flush()
            worker = ExportWorker(rt, "dir", recorders[0], recorders[1:])  # type: ignore[arg-type]
            consumer = StageConsumer(
                rt,
                "export-dir",
                [topic],
                worker.process,
                [worker.ledger],
                worker.batch_max * worker.lanes,
                per_partition=worker.batch_max,
            )
            task = asyncio.create_task(consumer.run())
            try:
                await kafka.wait_for(lambda: len(log) >= PARTITIONS * waiting, 60, "the exports applied")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                worker.close()
                await rt.stop()

    asyncio.run(scenario())
    assert gauge["max"] == 4  # all four lanes at once
    # Each partition's exports applied in the order they wait on it, on its lane.
    for p, ids in sent.items():
        assert [mv for lane, mv, _seq in log if lane == p % 4] == ids


def test_export_connections_is_checked_where_instances_cannot_write_at_once(tmp_path: Path) -> None:
    assert (
        LdapConnectorConfig.model_validate(
            {"kind": "ldap", "uri": "ldap://127.0.0.1:1", "base_dn": "dc=x"}
        ).export_connections
        == 4
    )
    with pytest.raises(ValidationError, match="export_connections"):
        LdifConnectorConfig.model_validate(
            {"kind": "ldif", "export_path": str(tmp_path / "out.ldif"), "export_connections": 2}
        )
    with pytest.raises(ValidationError, match="export_connections"):
        LdapConnectorConfig.model_validate(
            {"kind": "ldap", "uri": "ldap://127.0.0.1:1", "base_dn": "dc=x", "export_connections": 0}
        )
