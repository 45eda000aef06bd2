"""Join agent (keyed by join route): the join index decides join, projection or ambiguity."""

from __future__ import annotations

from typing import Any

from engine.join import join_step
from engine.references import ref_step, table_value
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
                # Staging answers a link with registrations on the metaverse topic that must come after
                # the contribution's own (the keys it carried): the link goes out once that is on record.
                out.add(n.links_topic(), o.anchor.encode(), pack(o), after=True)
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)
            elif isinstance(o, JoinRequest | JoinIndexUpdate):
                # Several mapping groups: the next group's route, the home route, or a claimed route.
                out.add(n.join_topic(), o.route.encode(), pack(o))

    def _reference(self, batch: Batch, msg: RefUpdate, out: Outputs) -> None:
        """The reference index: a DN's claimants; its value goes to the reference table when it changes."""
        key = msg.route.encode()
        step = ref_step(batch.get(key), msg)
        batch.update(key, step.entry)
        if step.value is not None:
            out.add(self.rt.names.refs_topic(), key, pack(step.value))
        for claim in step.claims:
            out.add(self.rt.names.links_topic(), claim.anchor.encode(), pack(claim))
            self.rt.counters.count(f"dn-{'transient' if claim.transient else 'held'}:{claim.connector}")
        self.rt.counters.count(f"ref-{msg.op}")

    async def assigned(self, partitions: list[int], seeded: list[int]) -> None:
        """Where the broker had lost a partition's history (a new embedded broker: its changelog was seeded
        from the local copy), the reference table gets the partition's DN values again."""
        out = await self.rt.outputs()
        topic = self.rt.names.refs_topic()
        for p in seeded:
            batch = Batch(self.store.partition(p), [], JoinEntry)
            for key, entry in batch.scan(b"ref|"):
                value = table_value(key.decode(), entry)
                if value is not None:
                    out.add(topic, key, pack(value))
            await self.commit([], out)
