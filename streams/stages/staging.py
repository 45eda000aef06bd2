"""Staging agent (keyed by anchor): import records and join outcomes -> connector space -> routing."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from engine.inbound import (
    InboundOutput,
    answers_later_life,
    on_link,
    on_link_gone,
    on_operator,
    route,
    routes_by_value,
)
from engine.references import staging_updates
from engine.staging import (
    HeldAttrs,
    HeldWrites,
    Staged,
    apply_dn_claim,
    held_bucket,
    held_bucket_key,
    held_of,
    held_prefix,
    hydrate,
    missed_by_run,
    skipped_by,
    split_object,
    stage,
    stage_absent,
    stage_by_value,
    tombstone,
    tombstone_key,
)
from engine.values import dn_keys
from schemas.codec import decode_import, pack, unpacker
from schemas.errors import DataError
from schemas.messages import (
    CSLink,
    DnClaim,
    JoinIndexUpdate,
    JoinRequest,
    LinkMessage,
    OperatorLink,
    RefRegister,
    RefUpdate,
)
from schemas.state import CSHead, CSObject, HeldBucket
from schemas.wire import ChangeRecord, ErrorRecord, RunMarker
from streams.output import Outputs
from streams.runtime import now_ms
from streams.stages.base import Batch, Stage
from streams.store import Store

_LINK = unpacker(LinkMessage)


def cs_key(connector: str, anchor: str) -> bytes:
    return f"{connector}\x00{anchor}".encode()


def connector_space_size(cs_store: Store, connector: str) -> int:
    """How many objects of a connector the connector space holds on this process's partitions (its
    tombstones and the values its large objects hold apart are outside the range scanned)."""
    return sum(1 for _ in cs_store.scan_all(cs_key(connector, "")))


class _Held:
    """One object's held values (``engine.staging.HeldValues``), read through the batch of its
    partition's held buckets (``HeldBucket``)."""

    __slots__ = ("_anchor", "_batch", "_connector")

    def __init__(self, batch: Batch, connector: str, anchor: str) -> None:
        self._batch, self._connector, self._anchor = batch, connector, anchor

    def lookup(self, attribute: str, keys: Collection[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for key in keys:
            bucket = self._batch.get(
                held_bucket_key(self._connector, self._anchor, attribute, held_bucket(key))
            )
            if bucket is not None and key in bucket.values:
                found[key] = bucket.values[key]
        return found

    def values(self, attribute: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for _k, bucket in self._batch.scan(held_prefix(self._connector, self._anchor, attribute)):
            found.update(bucket.values)
        return found


class StagingStage(Stage[CSObject]):
    step_id = "staging"
    store_name = "cs"
    state_model = CSObject

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self._links = rt.names.links_topic()
        self._topic_connector = {rt.names.import_topic(c): c for c in rt.config.connectors}
        #: The batch of held values (``HeldBucket``) of the partition being handled, and those of the batch
        #: being processed (stashed with the objects' batches when their outputs are acknowledged).
        self._split_from = rt.config.pipeline.split_values_from
        self._held: Batch | None = None
        self._held_batches: list[Batch] = []

    def decode(self, topic: str, value: bytes) -> Any:
        if topic == self._links:
            link = _LINK.decode(value)
            if link.connector not in self.rt.config.connectors:
                raise DataError(
                    f"{link.kind} for unknown connector {link.connector!r}", error_type="data-error"
                )
            return link
        msg = decode_import(value)
        connector = self._topic_connector[topic]
        got = msg.source.connector if isinstance(msg, ChangeRecord) else msg.connector
        if got != connector:
            raise DataError(
                f"record of connector {got!r} on the topic of {connector!r}", error_type="wrong-topic"
            )
        return msg

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        if isinstance(msg, ChangeRecord):
            return [cs_key(msg.source.connector, msg.anchor), tombstone_key(msg.source.connector, msg.anchor)]
        if isinstance(msg, CSLink | OperatorLink | DnClaim):
            # A link's tombstone is read only when its object is missing (rare): not multi-got for all.
            return [cs_key(msg.connector, msg.anchor)]
        return []

    def handle_all(self, batch: Batch, items: list[tuple[Any, Any]], out: Outputs) -> None:
        """One partition's events, with one multi-get of the held values their value-level records name
        (a member added to or removed from a large group reads its one bucket, engine.staging)."""
        self._held = batch.sibling(self._held_keys(items), HeldBucket)
        self._held_batches.append(self._held)
        super().handle_all(batch, items, out)

    def _held_keys(self, items: list[tuple[Any, Any]]) -> list[bytes]:
        keys: list[bytes] = []
        for _ev, msg in items:
            if not isinstance(msg, ChangeRecord) or not (msg.added or msg.removed):
                continue
            connector = msg.source.connector
            split = self.rt.rules.splittable(connector, msg.object_type)
            try:
                for attrs in (msg.added, msg.removed):
                    for name, values in (attrs or {}).items():
                        if name in split:
                            keys.extend(
                                held_bucket_key(connector, msg.anchor, name, held_bucket(k))
                                for k in dn_keys(values)
                                if k
                            )
            except Exception:  # its own handling fails again and dead-letters it, not the batch
                continue
        return list(dict.fromkeys(keys))

    async def process(self, events: list[Any]) -> None:
        # Held values of a batch that failed before its commit are not carried into the next one.
        self._held_batches = []
        await super().process(events)

    async def commit(self, batches: list[Batch], out: Outputs) -> None:
        held, self._held_batches = self._held_batches, []
        await super().commit([*batches, *held], out)

    def _held_values(self, cs: CSObject) -> _Held:
        assert self._held is not None  # set by handle_all
        return _Held(self._held, cs.connector, cs.anchor)

    def _whole(self, cs: CSObject | None) -> tuple[CSObject | None, HeldAttrs]:
        """The object with its held values in it, and those values (what it held before a change)."""
        if cs is None or not cs.split:
            return cs, {}
        held = held_of(cs, self._held_values(cs))
        return hydrate(cs, held), held

    def _store(
        self, batch: Batch, key: bytes, connector: str, anchor: str, cs: CSObject | None, before: HeldAttrs
    ) -> None:
        """Store a whole object (None: gone) that held ``before``: its large attributes held by value."""
        split = self.rt.rules.splittable(connector, cs.object_type) if cs is not None else frozenset()
        if split or before:
            stored, writes = split_object(cs, before, split, self._split_from)
            self._write_held(connector, anchor, writes)
            cs = stored
        batch.put(key, cs)

    def _write_held(self, connector: str, anchor: str, writes: HeldWrites) -> None:
        """Write what changed of held values, one bucket at a time (a copy: the batch's is not changed)."""
        held = self._held
        assert held is not None
        for attr, changes in writes.items():
            by_bucket: dict[int, list[str]] = {}
            for k in changes:
                by_bucket.setdefault(held_bucket(k), []).append(k)
            for b in sorted(by_bucket):
                key = held_bucket_key(connector, anchor, attr, b)
                bucket = held.get(key)
                values = dict(bucket.values) if bucket is not None else {}
                for k in by_bucket[b]:
                    value = changes[k]
                    if value is None:
                        values.pop(k, None)
                    else:
                        values[k] = value
                held.put(key, HeldBucket(values=values) if values else None)

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        c = self.rt.counters
        if isinstance(msg, DnClaim):
            key = cs_key(msg.connector, msg.anchor)
            changed = apply_dn_claim(batch.get(key), msg)
            if changed is not None:
                batch.put(key, changed)
                c.count(f"cs-{'transient' if msg.transient else 'holds-dn'}:{msg.connector}")
            return
        if isinstance(msg, OperatorLink):
            key = cs_key(msg.connector, msg.anchor)
            cs, held = self._whole(batch.get(key))
            new, outputs = on_operator(self.rt.rules, cs, msg)
            outputs.extend(staging_updates(self.rt.rules, cs, new, msg.ts_ms))
            if new is not cs:
                self._store(batch, key, msg.connector, msg.anchor, new, held)
            c.count(f"operator-{msg.action}:{msg.connector}")
            self._emit(outputs, out)
            return
        if isinstance(msg, CSLink):
            key = cs_key(msg.connector, msg.anchor)
            cs, held = self._whole(batch.get(key))
            if cs is None:
                # Deleted meanwhile: leave what it joined; not staged yet, or a later life of a deleted
                # object not staged again yet (a replay): wait for its record.
                tomb = batch.get(tombstone_key(msg.connector, msg.anchor))
                gone = tomb is not None and not answers_later_life(msg, tomb)
                c.count(f"link-{'gone' if gone else 'early'}:{msg.connector}")
                self._emit(on_link_gone(msg, tomb), out)
                return
            new, outputs = on_link(self.rt.rules, cs, msg)
            outputs.extend(staging_updates(self.rt.rules, cs, new, msg.ts_ms, carried=msg.ref_keys))
            self._store(batch, key, msg.connector, msg.anchor, new, held)
            c.count(f"link-{msg.outcome}")
            self._emit(outputs, out)
            return
        if isinstance(msg, RunMarker):
            if msg.op == "run-end":
                self._end_run(batch, msg, out)
            return
        connector = msg.source.connector
        key, tkey = cs_key(connector, msg.anchor), tombstone_key(connector, msg.anchor)
        current = batch.get(key)
        dn_valued = self.rt.rules.ref_sources(connector, msg.object_type)
        if current is not None and current.split and self._by_value(batch, key, current, msg, dn_valued, out):
            return
        tomb = batch.get(tkey) if current is None else None
        if skipped_by(current, msg) is not None:
            held: HeldAttrs = {}  # stale or a duplicate: nothing of it is read
        else:
            current, held = self._whole(current)
        staged = stage(current, msg, tomb, dn_valued)
        self._apply(batch, key, staged, out, held)
        if staged.skipped:
            return
        if msg.op == "d":
            # Remembered even when the object was never seen: its older records may still be on the way.
            gone = current or CSObject(connector=connector, anchor=msg.anchor, object_type=msg.object_type)
            batch.put(tkey, tombstone(gone, msg.source.version, msg.source.event_id, now_ms()))
        elif tomb is not None:
            batch.put(tkey, None)  # back, with a newer version than its delete

    def _by_value(
        self,
        batch: Batch,
        key: bytes,
        current: CSObject,
        msg: ChangeRecord,
        dn_valued: Collection[str],
        out: Outputs,
    ) -> bool:
        """Stage a value-level change of a large attribute held apart (a group's members) without reading
        the object whole: its changed values are read and written, one key each. False when the change
        needs the whole object (engine.staging.stage_by_value, engine.inbound.routes_by_value)."""
        if not current.split.keys() <= self.rt.rules.splittable(current.connector, current.object_type):
            return False  # held under rules that no longer allow it: read whole, stored back inside
        fast = stage_by_value(current, msg, dn_valued, self._held_values(current), self._split_from)
        if fast is None or not routes_by_value(self.rt.rules, fast[0]):
            return False
        staged, writes = fast
        self.rt.counters.count(f"stage-{staged.pending}:{current.connector}")
        if staged.skipped:
            return True
        ts = now_ms()
        cs, outputs = route(self.rt.rules, staged, ts)
        outputs.extend(staging_updates(self.rt.rules, staged.before, cs, ts, values=staged.values))
        self._write_held(current.connector, current.anchor, writes)
        batch.put(key, cs)
        self._emit(outputs, out)
        return True

    def _apply(self, batch: Batch, key: bytes, staged: Staged, out: Outputs, held: HeldAttrs) -> None:
        obj = staged.after or staged.before
        connector = obj.connector if obj is not None else ""
        self.rt.counters.count(f"stage-{staged.pending}:{connector}")
        if staged.pending in ("stale", "duplicate") or obj is None:
            return
        ts = now_ms()
        cs, outputs = route(self.rt.rules, staged, ts)
        # The reference index hears when its DN, its mv_id or its references changed.
        outputs.extend(staging_updates(self.rt.rules, staged.before, cs, ts, values=staged.values))
        self._store(batch, key, obj.connector, obj.anchor, cs, held)
        self._emit(outputs, out)

    def _end_run(self, batch: Batch, marker: RunMarker, out: Outputs) -> None:
        """Full import end on this partition: objects the run did not see are deleted."""
        prefix = cs_key(marker.connector, "")
        now = now_ms()
        for key, head in batch.scan(prefix, head=CSHead):
            if not missed_by_run(head.last_run, head.version, marker.run_id, marker.run_version):
                continue  # most objects: seen by the run, decoded no further
            cs, held = self._whole(batch.get(key))
            staged = stage_absent(cs, marker.run_id, marker.run_version)
            if staged is not None:
                self._apply(batch, key, staged, out, held)
                tomb = tombstone(cs, marker.run_version, f"{marker.run_id}:absent", now)
                batch.put(tombstone_key(cs.connector, cs.anchor), tomb)
        # Tombstones past their retention are forgotten (a record that old is not expected any more).
        oldest = now - self.rt.config.pipeline.tombstone_retention_s * 1000
        for key, tomb in batch.scan(tombstone_key(marker.connector, "")):
            if tomb.deleted_ts_ms is not None and tomb.deleted_ts_ms < oldest:
                batch.put(key, None)

    def _emit(self, outputs: list[InboundOutput | RefUpdate | RefRegister], out: Outputs) -> None:
        n = self.rt.names
        for o in outputs:
            if isinstance(o, JoinRequest | JoinIndexUpdate | RefUpdate):
                out.add(n.join_topic(), o.route.encode(), pack(o))
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)  # an import flow failed for this object
            else:
                out.add(n.mv_topic(), o.mv_id.encode(), pack(o))
