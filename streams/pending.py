"""Operator commands on ``export.<connector>``: approving held deletes, listing pending exports.

``idsync approve-deletes`` publishes an ``ApproveDeletes`` record on every partition, so each partition's
export worker meets it in order and releases exactly the deletes it held before it.

``idsync pending-exports`` (staging mode's preview) reads what the export consumer group has not yet
committed and folds it into the net change per target object: what an export run would do.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.errors import ConfigError
from schemas.records import APPROVE_DELETES_KEY, ApproveDeletes, PendingExport
from streams.runtime import Runtime, now_ms
from streams.stages.export import committed_export_offsets


def _target(rt: Runtime, connector: str) -> str:
    if connector not in rt.rules.targets:
        targets = ", ".join(sorted(rt.rules.targets)) or "none"
        raise ConfigError(f"connector {connector!r} is not an export target (targets: {targets})")
    return rt.names.export_topic(connector)


async def approve_deletes(rt: Runtime, connector: str) -> ApproveDeletes:
    """Publish one approval on every partition of ``export.<connector>``; returns it (partition 0's)."""
    topic = _target(rt, connector)
    approval_id = uuid.uuid4().hex
    try:
        user: str | None = getpass.getuser()
    except Exception:
        user = None
    out = await rt.outputs()
    first: ApproveDeletes | None = None
    for p in range(rt.partitions):
        record = ApproveDeletes(
            approval_id=approval_id, connector=connector, partition=p, approved_by=user, ts_ms=now_ms()
        )
        first = first or record
        out.add(topic, APPROVE_DELETES_KEY, record.model_dump_json().encode(), partition=p)
    await out.flush()
    assert first is not None
    return first


# --------------------------------------------------------------------------- pending exports
@dataclass
class AttrNet:
    """The net change of one attribute: a replacement (``new``) or value-level adds and removes."""

    old: list[str] | None = None
    new: list[str] | None = None
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        if self.new is not None:
            return {"old": self.old or [], "new": self.new}
        return {"add": self.add, "remove": self.remove}


@dataclass
class NetExport:
    """What exporting the pending changes of one target object would do, net."""

    mv_id: str
    object_type: str
    op: str
    dn: str
    new_dn: str | None = None
    attributes: dict[str, AttrNet] = field(default_factory=dict)
    exports: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mv_id": self.mv_id, "op": self.op, "object_type": self.object_type}
        out["dn"] = self.dn
        if self.new_dn is not None:
            out["new_dn"] = self.new_dn
        out["attributes"] = {k: v.as_dict() for k, v in sorted(self.attributes.items())}
        out["exports"] = self.exports
        return out


def _merge_attrs(net: NetExport, e: PendingExport) -> None:
    for name, change in e.attributes.items():
        a = net.attributes.get(name)
        if a is None:
            a = net.attributes[name] = AttrNet(old=list(e.old.get(name, [])) if net.op != "add" else None)
        if change.op == "replace":
            a.new, a.add, a.remove = list(change.values), [], []
        elif a.new is not None:
            base = a.new
            if change.op == "add":
                a.new = base + [v for v in change.values if v not in base]
            else:
                a.new = [v for v in base if v not in change.values]
        elif change.op == "add":
            a.remove = [v for v in a.remove if v not in change.values]
            a.add += [v for v in change.values if v not in a.add]
        else:
            a.add = [v for v in a.add if v not in change.values]
            a.remove += [v for v in change.values if v not in a.remove]


def fold(exports: list[PendingExport]) -> list[NetExport]:
    """Net change per target object, in first-seen order; an add then a delete nets to nothing."""
    nets: dict[str, NetExport | None] = {}
    for e in exports:
        net = nets.get(e.mv_id)
        if net is None:
            net = NetExport(e.mv_id, e.object_type, e.op, e.dn, e.new_dn)
            if e.op == "delete":
                net.attributes = {}
            else:
                _merge_attrs(net, e)
            net.exports = 1
            nets[e.mv_id] = net
            continue
        net.exports += 1
        if e.op == "delete":
            if net.op == "add":
                nets[e.mv_id] = None  # created and deleted again: the target never sees it
                continue
            net.op, net.attributes, net.new_dn = "delete", {}, None
            continue
        if net.op == "delete":
            # Deleted, then provisioned again (MIM's delete-add).
            net.op, net.dn, net.new_dn = "delete-add", e.dn, e.new_dn
            net.attributes = {}
            _merge_attrs(net, e)
            continue
        if e.op == "rename":
            if net.op == "add":
                net.dn = e.new_dn or net.dn
            else:
                net.op = "rename" if net.op in ("update", "rename") else net.op
                net.new_dn = e.new_dn
        _merge_attrs(net, e)
    return [n for n in nets.values() if n is not None]


async def read_pending(rt: Runtime, connector: str, idle_s: float = 1.0) -> list[PendingExport]:
    """Every pending export on ``export.<connector>`` past the export group's committed offsets, in
    partition order (each partition in its own order)."""
    topic = _target(rt, connector)
    committed = await committed_export_offsets(rt, connector)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=rt.settings.bootstrap_servers,
        enable_auto_commit=False,
        client_id=f"idsync-{rt.config.name}-pending",
    )
    await consumer.start()
    found: dict[int, list[PendingExport]] = {p: [] for p in range(rt.partitions)}
    try:
        tps = [TopicPartition(topic, p) for p in range(rt.partitions)]
        consumer.assign(tps)
        for tp in tps:
            offset = committed.get(tp.partition)
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    if r.key == APPROVE_DELETES_KEY or r.value is None:
                        continue
                    found[tp.partition].append(PendingExport.model_validate_json(r.value))
            if batch:
                quiet_since = loop.time()
                continue
            # The embedded broker may under-report end offsets: stop only once quiet past them.
            at_end = all([await consumer.position(tp) >= ends[tp] for tp in tps])
            if at_end and loop.time() - quiet_since >= idle_s:
                break
    finally:
        await consumer.stop()
    return [e for p in sorted(found) for e in found[p]]


def _values(values: list[str] | None) -> str:
    if not values:
        return "(none)"
    text = "; ".join(values)
    return text if len(text) <= 60 else text[:57] + "..."


def format_pending(nets: list[NetExport]) -> str:
    """The listing as a table: one row per changed attribute (a delete or an attribute-less row: one)."""
    from streams.sync import format_table

    rows: list[list[str]] = []
    for n in sorted(nets, key=lambda n: (n.op, (n.new_dn or n.dn).lower())):
        where = n.dn if n.new_dn is None else f"{n.dn} -> {n.new_dn}"
        if not n.attributes:
            rows.append([n.op, where, "", "", ""])
        for name, a in sorted(n.attributes.items()):
            if a.new is not None:
                old = "" if n.op in ("add", "delete-add") else _values(a.old)
                rows.append([n.op, where, name, old, _values(a.new)])
            else:
                change = " ".join([*(f"+{v}" for v in a.add), *(f"-{v}" for v in a.remove)])
                rows.append([n.op, where, name, "", change])
            where = ""
    counts: dict[str, int] = {}
    for n in nets:
        counts[n.op] = counts.get(n.op, 0) + 1
    total = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing pending"
    if not rows:
        return total
    table = format_table(["op", "object", "attribute", "old", "new"], rows)
    return f"{table}\n\n{len(nets)} objects: {total}"


def pending_json(nets: list[NetExport]) -> str:
    return json.dumps([n.as_dict() for n in nets], indent=2)
