"""Join and projection: routing a disconnector to the join index, and the index's decision.

The join index is keyed by *route*: the metaverse type plus the normalized join values. Every object
that could match the same metaverse object carries the same route, so they all meet in one partition,
whatever the arrival order or the number of workers (invariant 2). Projection allocates the mv_id there.
"""

from __future__ import annotations

import uuid

from engine.values import first, normalize
from schemas.config import InboundRuleConfig
from schemas.records import CSLink, ErrorRecord, JoinIndexUpdate, JoinRequest, MVContribution
from schemas.state import CSObject, JoinEntry

_MV_NAMESPACE = uuid.UUID("6f1d7c1e-5b0e-4c8e-9a51-3b6f7f0c1d2a")

JoinOutput = MVContribution | CSLink | ErrorRecord


def join_route(rule: InboundRuleConfig, cs: CSObject) -> str | None:
    """The join-index key of a disconnector, or None when it can neither join nor project."""
    parts: list[str] = []
    for crit in rule.join:
        value = first(cs.attributes, crit.cs)
        if value is None:
            parts = []
            break
        parts.append(f"{crit.mv}={normalize(value, crit.normalize)}")
    if parts:
        return f"{rule.mv_type}|" + "|".join(parts)
    if rule.project:
        # Nothing to join on: the object projects its own metaverse object.
        return f"{rule.mv_type}|cs|{cs.connector}|{cs.anchor}"
    return None


def mv_id_for(route: str, generation: int) -> str:
    """Deterministic mv_id: replaying the same imports rebuilds the same metaverse (invariant 4)."""
    return str(uuid.uuid5(_MV_NAMESPACE, f"{route}#{generation}"))


def member_key(connector: str, anchor: str) -> str:
    return f"{connector}|{anchor}"


def _connect(
    req: JoinRequest, mv_id: str, projected: bool, joining: list[str] | None = None
) -> list[JoinOutput]:
    return [
        MVContribution(
            mv_id=mv_id,
            mv_type=req.mv_type,
            connector=req.connector,
            anchor=req.anchor,
            dn=req.dn,
            cs_version=req.cs_version,
            event_id=req.event_id,
            flows=req.flows,
            image=req.image,
            projected=projected,
            route=req.route,
            joining=joining or [],
            ts_ms=req.ts_ms,
        ),
        CSLink(
            connector=req.connector,
            anchor=req.anchor,
            mv_id=mv_id,
            outcome="projected" if projected else "joined",
            ts_ms=req.ts_ms,
        ),
    ]


def _join_existing(entry: JoinEntry, req: JoinRequest, member: str) -> list[JoinOutput]:
    assert entry.mv_id is not None
    others = [m for m in entry.members if m != member and m.split("|", 1)[0] == req.connector]
    if others:
        # One connector never contributes two objects to one metaverse object (invariant 1).
        return [
            CSLink(
                connector=req.connector, anchor=req.anchor, mv_id=None, outcome="ambiguous", ts_ms=req.ts_ms
            ),
            ErrorRecord(
                step_id="join.index",
                error_type="ambiguous-join",
                algorithm_step="join",
                connector=req.connector,
                anchor=req.anchor,
                mv_id=entry.mv_id,
                message=(
                    f"{req.connector} object {req.anchor} matches metaverse object {entry.mv_id} on "
                    f"{req.route!r}, which {others[0]} of the same connector already joined"
                ),
                ts_ms=req.ts_ms,
            ),
        ]
    if member not in entry.members:
        entry.members.append(member)
    entry.waiting.pop(member, None)
    return _connect(req, entry.mv_id, projected=False)


def join_step(
    entry: JoinEntry | None, msg: JoinRequest | JoinIndexUpdate
) -> tuple[JoinEntry | None, list[JoinOutput]]:
    """Apply one message to a join-index entry."""
    entry = entry.model_copy(deep=True) if entry is not None else JoinEntry()
    if isinstance(msg, JoinIndexUpdate):
        if msg.connector is not None and msg.anchor is not None:
            member = member_key(msg.connector, msg.anchor)
            if member in entry.members:
                entry.members.remove(member)
            entry.waiting.pop(member, None)
        if msg.mv_deleted and entry.mv_id == msg.mv_id:
            entry.mv_id = None
            entry.members = []
            entry.generation += 1
        return entry, []
    member = member_key(msg.connector, msg.anchor)
    if entry.mv_id is not None:
        return entry, _join_existing(entry, msg, member)
    if not msg.project:
        entry.waiting[member] = msg
        return entry, []
    mv_id = mv_id_for(msg.route, entry.generation)
    entry.mv_id = mv_id
    entry.members = [member]
    entry.waiting.pop(member, None)
    # A disconnector waiting for this value joins now, no full sync needed (invariant 3).
    joins: list[JoinOutput] = []
    for key, waiting in sorted(entry.waiting.items()):
        joins.extend(_join_existing(entry, waiting, key))
    joining = sorted({m.split("|", 1)[0] for m in entry.members if m != member})
    return entry, _connect(msg, mv_id, projected=True, joining=joining) + joins
