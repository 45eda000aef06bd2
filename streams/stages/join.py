"""Join agent (keyed by join route): the join index decides join, projection or ambiguity."""

from __future__ import annotations

from typing import Any

from engine.join import join_step
from engine.references import ref_step, referrer_key, referrer_prefix
from schemas.codec import pack, unpacker
from schemas.messages import (
    CSLink,
    JoinIndexUpdate,
    JoinMessage,
    JoinRequest,
    MVContribution,
    RefUpdate,
)
from schemas.state import JoinEntry
from schemas.wire import ErrorRecord
from streams.output import Outputs
from streams.stages.base import Batch, Stage

_JOIN = unpacker(JoinMessage)


class JoinStage(Stage[JoinEntry]):
    step_id = "join"
    store_name = "join"
    state_model = JoinEntry

    def decode(self, topic: str, value: bytes) -> Any:
        return _JOIN.decode(value)

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        if isinstance(msg, RefUpdate) and msg.referrer is not None:
            sub = referrer_key(msg.route, msg.referrer, msg.attribute or "", msg.anchor or "")
            return [msg.route.encode(), sub.encode()]
        return [msg.route.encode()]

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        if isinstance(msg, RefUpdate):
            self._reference(batch, msg, out)
            return
        key = msg.route.encode()
        entry, outputs = join_step(batch.get(key), msg, self.rt.rules)
        batch.update(key, entry)
        n = self.rt.names
        for o in outputs:
            if isinstance(o, MVContribution):
                out.add(n.mv_topic(), o.mv_id.encode(), pack(o))
            elif isinstance(o, CSLink):
                self.rt.counters.count("projected" if o.outcome == "projected" else f"join-{o.outcome}")
                out.add(n.links_topic(), o.anchor.encode(), pack(o))
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)
            elif isinstance(o, JoinRequest | JoinIndexUpdate):
                # Several mapping groups: the next group's route, the home route, or a claimed route.
                out.add(n.join_topic(), o.route.encode(), pack(o))

    def _reference(self, batch: Batch, msg: RefUpdate, out: Outputs) -> None:
        """The reference index: referrers are keys under the route's prefix (one more is O(1))."""
        key = msg.route.encode()
        prefix = referrer_prefix(msg.route).encode()

        def referrers() -> list[str]:
            return [k.decode() for k, _v in batch.scan(prefix)]

        step = ref_step(batch.get(key), msg, referrers)
        batch.update(key, step.entry)
        if step.referrer is not None:
            sub, present = step.referrer
            batch.update(sub.encode(), JoinEntry() if present else None)
        mv_topic = self.rt.names.mv_topic()
        for o in step.outputs:
            out.add(mv_topic, o.mv_id.encode(), pack(o))
        for claim in step.claims:
            out.add(self.rt.names.links_topic(), claim.anchor.encode(), pack(claim))
            self.rt.counters.count(f"dn-{'transient' if claim.transient else 'held'}:{claim.connector}")
        self.rt.counters.count(f"ref-{msg.direction}-{msg.op}")
