"""Join agent (keyed by join route): the join index decides join, projection or ambiguity."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from engine.join import join_step
from schemas.records import CSLink, ErrorRecord, JoinIndexUpdate, JoinMessage, JoinRequest, MVContribution
from schemas.state import JoinEntry
from streams.output import Outputs
from streams.stages.base import Batch, Stage, encode

_JOIN = TypeAdapter(JoinMessage)


class JoinStage(Stage[JoinEntry]):
    step_id = "join"
    store_name = "join"
    state_model = JoinEntry

    def decode(self, topic: str, value: bytes) -> Any:
        return _JOIN.validate_json(value)

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        return [msg.route.encode()]

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        key = msg.route.encode()
        entry, outputs = join_step(batch.get(key), msg, self.rt.rules)
        batch.put(key, entry)
        n = self.rt.names
        for o in outputs:
            if isinstance(o, MVContribution):
                out.add(n.mv_topic(), o.mv_id.encode(), encode(o))
            elif isinstance(o, CSLink):
                self.rt.counters.count("projected" if o.outcome == "projected" else f"join-{o.outcome}")
                out.add(n.links_topic(), o.anchor.encode(), encode(o))
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)
            elif isinstance(o, JoinRequest | JoinIndexUpdate):
                # Several mapping groups: the next group's route, the home route, or a claimed route.
                out.add(n.join_topic(), o.route.encode(), encode(o))
