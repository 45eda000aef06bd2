"""Staging agent (keyed by anchor): import records and join outcomes -> connector space -> routing."""

from __future__ import annotations

from typing import Any

from engine.inbound import InboundOutput, on_link, on_link_gone, on_operator, route
from engine.references import staging_updates
from engine.staging import (
    Staged,
    apply_dn_claim,
    missed_by_run,
    stage,
    stage_absent,
    tombstone,
    tombstone_key,
)
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
from schemas.state import CSHead, CSObject
from schemas.wire import ChangeRecord, ErrorRecord, RunMarker
from streams.output import Outputs
from streams.runtime import now_ms
from streams.stages.base import Batch, Stage

_LINK = unpacker(LinkMessage)


def cs_key(connector: str, anchor: str) -> bytes:
    return f"{connector}\x00{anchor}".encode()


class StagingStage(Stage[CSObject]):
    step_id = "staging"
    store_name = "cs"
    state_model = CSObject

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self._links = rt.names.links_topic()
        self._topic_connector = {rt.names.import_topic(c): c for c in rt.config.connectors}

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
            cs = batch.get(key)
            new, outputs = on_operator(self.rt.rules, cs, msg)
            outputs.extend(staging_updates(self.rt.rules, cs, new, msg.ts_ms))
            if new is not cs:
                batch.put(key, new)
            c.count(f"operator-{msg.action}:{msg.connector}")
            self._emit(outputs, out)
            return
        if isinstance(msg, CSLink):
            key = cs_key(msg.connector, msg.anchor)
            cs = batch.get(key)
            if cs is None:
                # Deleted meanwhile: leave what it joined; not staged yet (a replay): wait for its record.
                tomb = batch.get(tombstone_key(msg.connector, msg.anchor))
                c.count(f"link-{'gone' if tomb is not None else 'early'}:{msg.connector}")
                self._emit(on_link_gone(msg, tomb), out)
                return
            new, outputs = on_link(self.rt.rules, cs, msg)
            outputs.extend(staging_updates(self.rt.rules, cs, new, msg.ts_ms, carried=msg.ref_keys))
            batch.put(key, new)
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
        tomb = batch.get(tkey) if current is None else None
        staged = stage(current, msg, tomb, self.rt.rules.ref_sources(connector, msg.object_type))
        self._apply(batch, key, staged, out)
        if staged.skipped:
            return
        if msg.op == "d":
            # Remembered even when the object was never seen: its older records may still be on the way.
            gone = current or CSObject(connector=connector, anchor=msg.anchor, object_type=msg.object_type)
            batch.put(tkey, tombstone(gone, msg.source.version, msg.source.event_id, now_ms()))
        elif tomb is not None:
            batch.put(tkey, None)  # back, with a newer version than its delete

    def _apply(self, batch: Batch, key: bytes, staged: Staged, out: Outputs) -> None:
        connector = (staged.after or staged.before).connector if (staged.after or staged.before) else ""
        self.rt.counters.count(f"stage-{staged.pending}:{connector}")
        if staged.pending in ("stale", "duplicate"):
            return
        ts = now_ms()
        cs, outputs = route(self.rt.rules, staged, ts)
        # The reference index hears when its DN, its mv_id or its references changed.
        outputs.extend(staging_updates(self.rt.rules, staged.before, cs, ts, values=staged.values))
        batch.put(key, cs)
        self._emit(outputs, out)

    def _end_run(self, batch: Batch, marker: RunMarker, out: Outputs) -> None:
        """Full import end on this partition: objects the run did not see are deleted."""
        prefix = cs_key(marker.connector, "")
        now = now_ms()
        for key, head in batch.scan(prefix, head=CSHead):
            if not missed_by_run(head.last_run, head.version, marker.run_id, marker.run_version):
                continue  # most objects: seen by the run, decoded no further
            cs = batch.get(key)
            staged = stage_absent(cs, marker.run_id, marker.run_version)
            if staged is not None:
                self._apply(batch, key, staged, out)
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
