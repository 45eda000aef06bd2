"""Metaverse agent (keyed by mv_id): precedence, deletion rule, outbound sync, confirmation."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from engine.metaverse import MVOutput, due_deletions, expire, metaverse_step, metaverse_steps
from schemas.codec import pack, to_json, unpacker
from schemas.messages import CSLink, JoinIndexUpdate, MVInbound, RefSync, RefUpdate
from schemas.state import MVObject
from schemas.wire import ErrorRecord, ExportConfirmed, MVChange, PendingExport
from streams.output import Outputs
from streams.runtime import now_ms
from streams.stages.base import Batch, Stage

_MV = unpacker(MVInbound)
#: How often the stage looks for objects whose deletion grace period ended without a message reaching them.
EXPIRY_INTERVAL_MS = 10_000
#: An object with at least this many references (a large group) is synced at most once per checkpoint
#: interval while its members keep answering: syncing it recomputes and plans all of its values.
LARGE_REFS = 1_000


def ref_count(mv: MVObject) -> int:
    """References an object holds (a group: its members), over its connectors and attributes."""
    return sum(len(refs) for link in mv.links.values() for refs in link.refs.values())


class MetaverseStage(Stage[MVObject]):
    step_id = "metaverse"
    store_name = "mv"
    state_model = MVObject

    def decode(self, topic: str, value: bytes) -> Any:
        return _MV.decode(value)

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        return [msg.mv_id.encode()]

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self._grace = any(d.grace_period_s > 0 for d in rt.rules.deletion.values())
        self._next_expiry = 0
        n = rt.names
        self._changes, self._join, self._mv = n.mv_changes_topic(), n.join_topic(), n.mv_topic()
        self._exports = {c: n.export_topic(c) for c in rt.rules.targets}
        #: Large objects whose reference answers are held until the checkpoint, per partition, and when
        #: each large object was last synced (loop time; only large objects are tracked).
        self._interval_s = rt.config.pipeline.checkpoint_interval_ms / 1000
        self._held: dict[int, set[bytes]] = {}
        self._synced_at: dict[bytes, float] = {}

    async def process(self, events: list[Any]) -> None:
        await super().process(events)
        now = now_ms()
        if self._grace and now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_INTERVAL_MS
            await self._expire_due(now)

    async def _expire_due(self, now: int) -> None:
        """Deletion rule grace periods: delete the objects whose deletion fell due (engine.deletion).

        Scans the partitions this worker owns (objects marked for deletion carry ``delete_due_ms``).
        """
        out = await self.rt.outputs()
        batches = []
        for p in sorted(self.store.owned):
            part = self.store.partition(p)
            keys = [k for k, raw in part.scan(b"") if b"delete_due_ms" in raw and k not in part.unsaved]
            keys += [k for k, mv in part.unsaved.items() if mv is not None and mv.delete_due_ms is not None]
            if not keys:
                continue
            batch = Batch(part, keys, MVObject)
            for mv_id in due_deletions([batch.get(k) for k in keys], now):
                mv, outputs = expire(self.rt.rules, batch.get(mv_id.encode()), now)
                batch.put(mv_id.encode(), mv)
                self._emit(outputs, out, p)
            batches.append(batch)
        await self.commit(batches, out)

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        key = msg.mv_id.encode()
        mv, outputs = metaverse_step(self.rt.rules, batch.get(key), msg)
        batch.update(key, mv)
        self._emit(outputs, out, batch.partition)

    def handle_all(self, batch: Batch, items: list[tuple[Any, Any]], out: Outputs) -> None:
        """The messages of one metaverse object in this batch are applied together (one copy of the
        object for all: a large group hears from thousands of members at once). Should that raise,
        they are applied one by one from the object as it was, and only the failing one is
        dead-lettered."""
        by_key: dict[bytes, list[tuple[Any, Any]]] = {}
        for item in items:
            by_key.setdefault(item[1].mv_id.encode(), []).append(item)
        now = asyncio.get_running_loop().time()
        for key, group in by_key.items():

            def settle(mv: MVObject, key: bytes = key) -> bool:
                """Sync now, or hold a large object's answers until the checkpoint when it was synced
                less than a checkpoint interval ago (its members are answering one batch after another:
                one sync per interval instead of one per batch)."""
                if self._interval_s <= 0 or ref_count(mv) < LARGE_REFS:
                    return True
                if now - self._synced_at.get(key, -math.inf) < self._interval_s:
                    return False
                self._synced_at[key] = now
                return True

            try:
                msgs = [m for _ev, m in group]
                mv, outputs = metaverse_steps(self.rt.rules, batch.get(key), msgs, settle=settle)
            except Exception:
                super().handle_all(batch, group, out)
                continue
            batch.update(key, mv)
            if mv is not None and mv.ref_sync is not None:
                self._held.setdefault(batch.partition, set()).add(key)
            for each in outputs:
                self._emit(each, out, batch.partition)

    async def checkpoint(self) -> None:
        """Sync the objects whose answers are held (their outputs go out first), then save: saved state
        never holds answers, so neither a crash nor a partition moving to another worker can leave an
        object waiting for a sync nobody will send."""
        await self._settle_held()
        await super().checkpoint()

    async def _settle_held(self) -> None:
        held, self._held = self._held, {}
        if not held:
            return
        now, ts = asyncio.get_running_loop().time(), now_ms()
        out = await self.rt.outputs()
        batches = []
        for p, unordered in sorted(held.items()):
            keys = sorted(unordered)
            batch = Batch(self.store.partition(p), keys, MVObject)
            for key in keys:
                mv = batch.get(key)
                if mv is None or mv.ref_sync is None:
                    continue  # synced since (a RefSync on its way found it) or gone
                mv, [outputs] = metaverse_steps(self.rt.rules, mv, [RefSync(mv_id=key.decode(), ts_ms=ts)])
                batch.update(key, mv)
                self._synced_at[key] = now
                self._emit(outputs, out, p)
            batches.append(batch)
        await self.commit(batches, out)

    def _emit(self, outputs: list[MVOutput], out: Outputs, partition: int) -> None:
        """Records keyed by this object's mv_id go to ``partition``, the one its own messages come from
        (every topic has the same partition count and partitioner): no hashing."""
        n = self.rt.names
        c = self.rt.counters
        for o in outputs:
            if isinstance(o, MVChange):
                c.count(f"mv-{o.op}")
                out.add(self._changes, o.mv_id.encode(), to_json(o), partition)
            elif isinstance(o, PendingExport):
                c.count(
                    f"provisioned:{o.connector}" if o.op == "add" else f"export-{o.op}-planned:{o.connector}"
                )
                out.add(self._exports[o.connector], o.mv_id.encode(), to_json(o), partition)
            elif isinstance(o, JoinIndexUpdate | RefUpdate):
                out.add(self._join, o.route.encode(), pack(o))
            elif isinstance(o, RefSync):
                out.add(self._mv, o.mv_id.encode(), pack(o), partition)
            elif isinstance(o, CSLink):
                out.add(n.links_topic(), o.anchor.encode(), pack(o))
            elif isinstance(o, ExportConfirmed):
                c.count(f"export-confirmed:{o.connector}")
                out.add(n.confirmations_topic(), o.mv_id.encode(), to_json(o), partition)
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)
