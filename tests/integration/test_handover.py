"""State moves with its partition (invariant 11) and the metaverse does not depend on who processed what.

The same input — three sources, a bracketed initial load, deltas, re-delivered duplicates and stale
records, shuffled across connectors — goes once through one worker process and once through a group
whose membership changes under load: a second worker joins mid-load (partitions move to it with their
state), the first is killed with SIGKILL mid-load, a third joins; then a large group's members change by
value one at a time while a fourth joins. Both runs must end with the same metaverse, and never two
metaverse objects for one join value (invariants 2, 5, 11); both feeds, folded, end in it.

Both runs build their state from empty out of the same import records, in the same order per partition:
what a replay of the import topics from offset 0 into empty state does. So this is also the replay test
(invariant 4): the same connector space (linked to the same mv_ids) and the same metaverse objects.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import as_dict
from schemas.records import MVChange, fold_values
from streams.app import ensure_topics
from streams.bench import kafka
from streams.bench.org import generate
from streams.bench.records import (
    Message,
    RecordFactory,
    bench_config,
    delta_records,
    group_dn,
    hr_dn,
    initial_load,
    write_hr_file,
)
from streams.broker import EmbeddedBroker
from streams.config import load_config
from streams.runtime import Runtime, Settings
from tests.integration.state import restored

pytestmark = pytest.mark.integration

PEOPLE = 300
#: All-staff's member changes by value in the input.
BY_VALUE = 8


def inputs(tmp: Path, name: str, partitions: int) -> tuple[Path, Runtime, list[Message], list[Message]]:
    org = generate(PEOPLE, seed=11, big_group=50)
    hr = write_hr_file(org, tmp / f"{name}-hr.csv")
    # Large containers held apart from 8 values: the group's members (50) and its department groups'
    # go through staging's buckets and the metaverse's chunks, handed over with their partitions.
    # Their member changes go on mv.changes by value from 8 members too (version 2 records, folded below).
    config_path = bench_config(
        name, tmp, partitions, hr, pipeline={"split_values_from": 8, "mv_changes_by_value_from": 8}
    )
    rt = Runtime(Settings(bootstrap_servers="", data_dir=tmp), load_config(config_path))
    n = rt.names
    factory = RecordFactory({c: n.import_topic(c) for c in rt.config.connectors}, partitions)
    load = list(initial_load(org, factory, 1_000))
    staff = list(org.groups["all-staff"])
    others = [p.index for p in org.people[org.big_group :] if p.status != "left"]  # not in all-staff
    deltas: list[Message] = []
    for round_no in (1, 2):
        deltas += delta_records(org.delta(round_no), factory, round_no, 2_000 + round_no)
    # All-staff's members changed by value (change records version 2: one member out, another in), as a
    # directory's incremental values say it: synced member by member and published on mv.changes by
    # value (version 2 records, folded below). Sent one at a time once the rest is drained (``paced``):
    # sent together they would be synced together, in one step and one record.
    by_value = []
    for k, (out, into) in enumerate(zip(staff[:BY_VALUE], others, strict=False)):
        by_value.append(
            factory.change(
                "hr",
                "u",
                "group-all-staff",
                "group",
                None,
                f"all-staff-by-value-{k}",
                3_000 + k,
                dn=group_dn("all-staff"),
                added={"member": [hr_dn(org.people[into].employee_id)]},
                removed={"member": [hr_dn(org.people[out].employee_id)]},
            )
        )
    rng = random.Random(5)
    # At-least-once upstream: some records arrive twice; some older images arrive after newer ones.
    duplicates = rng.sample(deltas, len(deltas) // 5)
    stale = [m for m in rng.sample(load, len(load) // 10) if m[1] != b"__run__"]
    tail = deltas + duplicates + stale
    # Shuffle across connectors and anchors; a connector's run markers keep their place in its run.
    rng.shuffle(tail)
    return config_path, rt, load + tail, by_value


def spawn(config: Path, bootstrap: str, data: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "streams.cli", "worker", "-c", str(config), "--bootstrap-servers", bootstrap]
    cmd += ["--data-dir", str(data), "--no-export"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def groups(rt: Runtime) -> dict[str, list[str]]:
    n = rt.names
    imports = [n.import_topic(c) for c in rt.config.connectors]
    return {
        n.group_id("staging"): [*imports, n.links_topic()],
        n.group_id("join"): [n.join_topic()],
        n.group_id("metaverse"): [n.mv_topic()],
    }


async def metaverse(bootstrap: str, rt: Runtime, scratch: Path) -> dict[str, dict[str, Any]]:
    """The live metaverse, keyed by the HR join value: rebuilt from the mv store's changelog into an empty
    directory (what any new worker would take over), checked against the public mv.changes feed."""
    apart: dict[str, int] = {}
    cs, objects = await restored(bootstrap, rt.config, scratch, apart)
    # The groups' members went through the changelogs held apart (split_values_from: 8), read back whole.
    assert apart["cs"] > 0 and apart["mv"] > 0, apart
    STATES[rt.config.name] = {
        # keyed like the store: a tombstone of a deleted object beside a live one of the same anchor
        "cs": {(o.connector, o.anchor, o.deleted_ts_ms is not None): _stable(as_dict(o)) for o in cs},
        "mv": {o.mv_id: _stable(as_dict(o)) for o in objects},
    }
    feed = await mv_changes(bootstrap, rt, rt.config.name)
    by_join: dict[str, dict[str, Any]] = {}
    for mv in objects:
        if mv.deleted:
            continue
        key = mv.attributes.get("employeeId", [mv.mv_id])[0]
        assert key not in by_join, f"two metaverse objects for employeeId {key}"
        # The feed, folded, ends in the object's state: values and connectors.
        assert feed[mv.mv_id].attributes == mv.attributes
        assert feed[mv.mv_id].connectors == sorted(mv.links)
        by_join[key] = {"attributes": mv.attributes, "connectors": sorted(mv.links)}
    return by_join


#: instance name -> its connector space and metaverse, read back from the changelogs.
STATES: dict[str, dict[str, dict[Any, Any]]] = {}


def _stable(value: Any) -> Any:
    """State without what depends on the wall clock of processing (times the stages stamp)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not (k.endswith("ts_ms") or k == "delete_due_ms")}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


#: instance name -> how many version 2 (by value) mv.changes records its feed folded.
FOLDED: dict[str, int] = {}


async def mv_changes(bootstrap: str, rt: Runtime, name: str) -> dict[str, MVChange]:
    """The mv.changes feed folded per mv_id, as a consumer folds it (docs/topics.md): the latest record,
    each attribute a version 2 record gives by value the values the records before it gave, changed by
    it — through handovers and the records a killed worker's successor published again."""
    topic = rt.names.mv_changes_topic()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(rt.partitions)]
        ends = {tp: end for tp, (end, _ts) in (await kafka.true_ends(consumer, tps)).items()}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        latest: dict[str, MVChange] = {}
        seen = dict.fromkeys(tps, 0)
        while any(seen[tp] < ends[tp] for tp in tps):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    seen[tp] = r.offset + 1
                    change = MVChange.model_validate_json(r.value)
                    if change.version == 2:
                        change = folded(latest[change.mv_id], change)
                        FOLDED[name] = FOLDED.get(name, 0) + 1
                    latest[change.mv_id] = change
    finally:
        await consumer.stop()
    return latest


def folded(before: MVChange, change: MVChange) -> MVChange:
    """A version 2 record applied to the object's record before it: a whole (version 1) record."""
    attrs = fold_values(before.attributes, change.attributes, change.added, change.removed)
    return change.model_copy(
        update={"version": 1, "attributes": attrs, "added": None, "removed": None, "counts": None}
    )


async def paced(bootstrap: str, rt: Runtime, sent: list[Message], messages: list[Message]) -> None:
    """Each of ``messages`` produced once what was ``sent`` before it (extended) is processed."""
    for message in messages:
        sent.append(message)
        await produce(bootstrap, [message], rt)
        await kafka.wait_drained(bootstrap, groups(rt), timeout_s=120, produced=counts(sent))


async def produce(bootstrap: str, messages: list[Message], rt: Runtime) -> None:
    out = await rt.outputs()
    await kafka.produce_all(out, messages)


def counts(messages: list[Message]) -> dict[str, int]:
    """Records per topic, so draining waits for at least these (see kafka.wait_drained)."""
    return dict(Counter(topic for topic, _k, _v, _p in messages))


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_membership_changes_under_load_end_in_the_same_metaverse(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path / "broker") as broker:
        bs = broker.bootstrap

        async def run_single() -> dict[str, dict[str, Any]]:
            config, rt, messages, by_value = inputs(tmp_path, "single", 4)
            rt = Runtime(Settings(bootstrap_servers=bs, data_dir=tmp_path / "single-rt"), rt.config)
            await ensure_topics(rt)
            procs = [spawn(config, bs, tmp_path / "single-w0", tmp_path / "single-w0.log")]
            try:
                await produce(bs, messages, rt)
                await kafka.wait_drained(bs, groups(rt), timeout_s=300, produced=counts(messages))
                await paced(bs, rt, messages, by_value)
                assert all(p.poll() is None for p in procs)
                return await metaverse(bs, rt, tmp_path / "single-read")
            finally:
                await rt.stop()
                stop(procs)

        async def run_changing_group() -> dict[str, dict[str, Any]]:
            config, rt, messages, by_value = inputs(tmp_path, "group", 4)
            rt = Runtime(Settings(bootstrap_servers=bs, data_dir=tmp_path / "group-rt"), rt.config)
            third = len(messages) // 3
            await ensure_topics(rt)
            w = [spawn(config, bs, tmp_path / "group-w0", tmp_path / "group-w0.log")]
            try:
                await produce(bs, messages[:third], rt)
                w.append(spawn(config, bs, tmp_path / "group-w1", tmp_path / "group-w1.log"))
                await asyncio.sleep(6)  # the group rebalances; partitions move to w1 with their state
                await produce(bs, messages[third : 2 * third], rt)
                await asyncio.sleep(1)
                w[0].kill()  # SIGKILL mid-load: its partitions are taken over from the changelogs
                w[0].wait(10)
                await produce(bs, messages[2 * third :], rt)
                w.append(spawn(config, bs, tmp_path / "group-w2", tmp_path / "group-w2.log"))
                await kafka.wait_drained(bs, groups(rt), timeout_s=300, produced=counts(messages))
                # The member changes by value, a fourth worker joining halfway: whoever takes all-staff's
                # partition publishes it whole before it goes by value again.
                half = len(by_value) // 2
                await paced(bs, rt, messages, by_value[:half])
                w.append(spawn(config, bs, tmp_path / "group-w3", tmp_path / "group-w3.log"))
                await asyncio.sleep(6)  # the group rebalances
                await paced(bs, rt, messages, by_value[half:])
                assert all(p.poll() is None for p in w[1:])
                return await metaverse(bs, rt, tmp_path / "group-read")
            finally:
                await rt.stop()
                stop(w)

        single = asyncio.run(run_single())
        changing = asyncio.run(run_changing_group())
    assert abs(len(single) - PEOPLE) < PEOPLE // 20  # the deltas hire and let go a few
    assert all("hr" in v["connectors"] for v in single.values())
    assert sum("dir" in v["connectors"] for v in single.values()) > PEOPLE // 10  # joins happened
    assert changing == single
    # Most of all-staff's member changes by value went on the feed by value in both runs (the first
    # record after each assignment of its partition goes whole), and were folded into the state above.
    assert FOLDED.get("single", 0) >= BY_VALUE - 1 and FOLDED.get("group", 0) >= BY_VALUE - 3, FOLDED
    # Both runs built their state from empty out of the same import records: the connector spaces hold the
    # same objects with the same values, linked to the same metaverse object ids (invariant 4).
    g, o = STATES["group"]["cs"], STATES["single"]["cs"]
    assert g.keys() == o.keys()
    diff = {k: (o[k], g[k]) for k in g if g[k] != o[k]}
    assert diff == {}
    # The same metaverse objects under the same ids. A live object is the same in every field except what
    # records the history of the run rather than its result: ``version`` (how many mv.changes records it
    # published) and ``targets`` (export bookkeeping: with exports off, pending exports planned in another
    # order stay unconfirmed in another shape). A deleted object (kept until its deprovisioning is
    # confirmed) is deleted in both.
    gm, om = STATES["group"]["mv"], STATES["single"]["mv"]
    assert gm.keys() == om.keys()
    history = {"version", "targets"}
    for k in gm:
        a, b = om[k], gm[k]
        assert a["deleted"] == b["deleted"], k
        if not a["deleted"]:
            assert {f: v for f, v in a.items() if f not in history} == {
                f: v for f, v in b.items() if f not in history
            }, k
