"""Metaverse agent (keyed by mv_id): precedence, deletion rule, outbound sync, confirmation."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from engine.metaverse import metaverse_step
from schemas.records import (
    CSLink,
    ErrorRecord,
    ExportConfirmed,
    JoinIndexUpdate,
    MVChange,
    MVInbound,
    PendingExport,
)
from schemas.state import MVObject
from streams.output import Outputs
from streams.stages.base import Batch, Stage, encode

_MV = TypeAdapter(MVInbound)


class MetaverseStage(Stage[MVObject]):
    step_id = "metaverse"
    store_name = "mv"
    state_model = MVObject

    def decode(self, topic: str, value: bytes) -> Any:
        return _MV.validate_json(value)

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        return [msg.mv_id.encode()]

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        key = msg.mv_id.encode()
        mv, outputs = metaverse_step(self.rt.rules, batch.get(key), msg)
        batch.put(key, mv)
        n = self.rt.names
        c = self.rt.counters
        for o in outputs:
            if isinstance(o, MVChange):
                c.count(f"mv-{o.op}")
                out.add(n.mv_changes_topic(), o.mv_id.encode(), encode(o))
            elif isinstance(o, PendingExport):
                c.count(
                    f"provisioned:{o.connector}" if o.op == "add" else f"export-{o.op}-planned:{o.connector}"
                )
                out.add(n.export_topic(o.connector), o.mv_id.encode(), encode(o))
            elif isinstance(o, JoinIndexUpdate):
                out.add(n.join_topic(), o.route.encode(), encode(o))
            elif isinstance(o, CSLink):
                out.add(n.links_topic(), o.anchor.encode(), encode(o))
            elif isinstance(o, ExportConfirmed):
                c.count(f"export-confirmed:{o.connector}")
                out.add(n.confirmations_topic(), o.mv_id.encode(), encode(o))
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)
