"""Join and projection: routing a disconnector to the join index, and the index's decisions.

The join index is keyed by *route*: the metaverse type plus the normalized values of one mapping group
("person|employeeId=E1"). Every object that could match the same metaverse object by that group carries
the same route, so they all meet in one partition whatever the arrival order or the number of workers.

One mapping group (``join:``): everything happens in the route's entry, in one step: candidates there
decide (one: join, several: ``ambiguous-join``), none: projection (or waiting, invariant 3).

Several mapping groups (``join_groups:``) are a small protocol between entries (docs/rules.md):
- search: the request visits its groups' routes in order; the first route with candidates decides;
  a miss moves on. The first route is the object's *home*: it runs one attempt per object at a time
  (``JoinTicket``) and hears how each attempt ended (``settle``).
- lock: an object that may project and matched nothing claims all its routes in sorted order (ordered
  locking: no deadlock), parking behind another object's claim. Holding them all, it projects at its home
  and commits the claims, which registers the new object on every route. An object that finds a candidate
  on a route it is claiming gives its claims back and searches again. So two objects sharing any join
  value never both project (invariant 2).
- the metaverse step registers every metaverse object on the routes its attribute values give, so a
  group over any metaverse attribute finds it; a candidate appearing wakes the objects waiting there.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from engine.values import first, normalize
from schemas.config import InboundRuleConfig, JoinCriterionConfig
from schemas.messages import CSLink, JoinIndexUpdate, JoinRequest, MVContribution
from schemas.records import Attrs
from schemas.state import CSObject, JoinEntry, JoinTicket
from schemas.wire import ErrorRecord

if TYPE_CHECKING:
    from engine.rules import JoinSignature, Rules

_MV_NAMESPACE = uuid.UUID("6f1d7c1e-5b0e-4c8e-9a51-3b6f7f0c1d2a")
_MV_NAMESPACE_BYTES = _MV_NAMESPACE.bytes
#: Join keys registered per mapping group of one metaverse object at most (multi-valued attributes).
MAX_KEYS_PER_GROUP = 32

JoinOutput = MVContribution | CSLink | ErrorRecord | JoinRequest | JoinIndexUpdate
JoinMessage = JoinRequest | JoinIndexUpdate


# --------------------------------------------------------------------------- resolver hook contract
@dataclass(frozen=True, slots=True)
class JoinSubject:
    """The connector-space object a resolver hook decides for."""

    connector: str
    anchor: str
    object_type: str | None
    dn: str | None
    attributes: Attrs


@dataclass(frozen=True, slots=True)
class JoinCandidate:
    """A metaverse object a mapping group found, with the attributes the join index last saw."""

    mv_id: str
    attributes: Attrs = field(default_factory=dict)


# --------------------------------------------------------------------------- routes
def group_route(mv_type: str, group: Sequence[JoinCriterionConfig], attrs: Attrs) -> str | None:
    """The route of one mapping group for a connector-space object, None when a value is missing."""
    parts: list[str] = []
    for crit in group:
        value = first(attrs, crit.cs)
        if value is None:
            return None
        parts.append(f"{crit.mv}={normalize(value, crit.normalize)}")
    return f"{mv_type}|" + "|".join(parts)


def projection_route(rule: InboundRuleConfig, cs: CSObject) -> str:
    """The object's own route when it has no join value but may project."""
    return f"{rule.mv_type}|cs|{cs.connector}|{cs.anchor}"


def join_routes(rule: InboundRuleConfig, cs: CSObject, project: bool | None = None) -> list[str]:
    """A disconnector's routes, one per mapping group it has all values for, in group order; its own
    projection route when it has none but may project; empty when it can neither join nor project."""
    routes: list[str] = []
    for group in rule.mapping_groups():
        route = group_route(rule.mv_type, group, cs.attributes)
        if route is not None and route not in routes:
            routes.append(route)
    if not routes and (rule.project if project is None else project):
        routes.append(projection_route(rule, cs))
    return routes


def join_route(rule: InboundRuleConfig, cs: CSObject) -> str | None:
    """The join-index key (home route) of a disconnector, or None when it can neither join nor project."""
    routes = join_routes(rule, cs)
    return routes[0] if routes else None


def mv_join_keys(mv_type: str, signatures: Sequence[JoinSignature], attrs: Attrs) -> list[str]:
    """Routes a metaverse object's attribute values give for the mapping groups (every value of a
    multi-valued attribute counts, at most ``MAX_KEYS_PER_GROUP`` combinations per group)."""
    keys: list[str] = []
    for sig in signatures:
        per_attr: list[list[str]] = []
        for attr, ops in sig:
            values = sorted({normalize(v, ops) for v in attrs.get(attr, ()) if v != ""})
            per_attr.append([f"{attr}={v}" for v in values])
        if not all(per_attr):
            continue
        for combo in itertools.islice(itertools.product(*per_attr), MAX_KEYS_PER_GROUP):
            key = f"{mv_type}|" + "|".join(combo)
            if key not in keys:
                keys.append(key)
    return keys


def mv_id_for(route: str, generation: int) -> str:
    """Deterministic mv_id: replaying the same imports rebuilds the same metaverse (invariant 4).

    RFC 4122 version 5 (``uuid.uuid5(_MV_NAMESPACE, "<route>#<generation>")``), computed without the
    UUID object: this runs once per projection."""
    digest = bytearray(hashlib.sha1(_MV_NAMESPACE_BYTES + f"{route}#{generation}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def member_key(connector: str, anchor: str) -> str:
    return f"{connector}|{anchor}"


# --------------------------------------------------------------------------- the step
@dataclass(slots=True)
class _Step:
    """One ``join_step`` call: the entry it changes (keyed by ``route``), the rules, the outputs so far."""

    entry: JoinEntry
    route: str
    rules: Rules | None
    out: list[JoinOutput] = field(default_factory=list)

    def send(self, msg: JoinMessage) -> None:
        """To another route through the join topic; to this one at once (same entry, same step)."""
        if msg.route == self.route:
            _dispatch(self, msg)
        else:
            self.out.append(msg)


def join_step(
    entry: JoinEntry | None, msg: JoinMessage, rules: Rules | None = None
) -> tuple[JoinEntry | None, list[JoinOutput]]:
    """Apply one message to a join-index entry. ``rules`` gives the resolver hooks (none without it).

    Outputs are metaverse contributions, links back to staging, per-object errors and join messages for
    other routes (forwarded through the join topic).
    """
    entry = fork_entry(entry) if entry is not None else JoinEntry()
    step = _Step(entry, msg.route, rules)
    _dispatch(step, msg)
    return entry, step.out


def fork_entry(entry: JoinEntry) -> JoinEntry:
    """A copy of an entry that a step may change without touching the original: the containers a step
    mutates, and the tickets (changed in place), are copied; requests are immutable and shared."""
    new = copy.copy(entry)
    new.members = list(entry.members)
    new.waiting = dict(entry.waiting)
    new.registered = dict(entry.registered)
    new.parked = list(entry.parked)
    new.tickets = {k: copy.copy(t) for k, t in entry.tickets.items()}
    new.ref_claims = dict(entry.ref_claims)
    return new


def _dispatch(step: _Step, msg: JoinMessage) -> None:
    if isinstance(msg, JoinRequest):
        if msg.phase == "lock":
            _lock(step, msg)
        elif msg.attempt == 0 and len(msg.routes) > 1:
            _start(step, msg)
        else:
            _search(step, msg)
        return
    handler = _SIGNALS[msg.op]
    handler(step, msg)


# --------------------------------------------------------------------------- helpers
def _routes(req: JoinRequest) -> list[str]:
    return req.routes or [req.route]


def _multi(req: JoinRequest) -> bool:
    return len(req.routes) > 1


def _member(msg: JoinRequest | JoinIndexUpdate) -> str:
    return member_key(msg.connector or "", msg.anchor or "")


def _fresh(req: JoinRequest) -> JoinRequest:
    """The request as staging sent it (to wait with, or to start a new attempt from)."""
    return replace(req, phase="search", hop=0, attempt=0, route=_routes(req)[0])


def candidates(entry: JoinEntry) -> list[str]:
    """Metaverse objects this route finds: the one projected here and the ones registered here."""
    found = set(entry.registered)
    if entry.mv_id is not None:
        found.add(entry.mv_id)
    return sorted(found)


def _signal(req: JoinRequest, route: str, op: str, **kw: object) -> JoinIndexUpdate:
    fields: dict[str, Any] = {
        "route": route,
        "op": op,
        "connector": req.connector,
        "anchor": req.anchor,
        "attempt": req.attempt,
        "ts_ms": req.ts_ms,
        **kw,
    }
    return JoinIndexUpdate(**fields)


def _connect(
    req: JoinRequest,
    mv_id: str,
    projected: bool,
    joining: list[str] | None = None,
    route: str | None = None,
    routes: list[str] | None = None,
) -> list[JoinOutput]:
    home = _routes(req)[0]
    via = route or req.route
    if routes is None:
        # The home route keeps the ticket: it hears when the metaverse object goes.
        routes = [home] if _multi(req) and via != home else []
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
            route=via,
            joining=joining or [],
            routes=routes,
            source_ts_ms=req.source_ts_ms,
            ts_ms=req.ts_ms,
            references=req.references,
            ref_keys=req.ref_keys,
        ),
        CSLink(
            connector=req.connector,
            anchor=req.anchor,
            mv_id=mv_id,
            outcome="projected" if projected else "joined",
            ts_ms=req.ts_ms,
            ref_keys=req.ref_keys,
            cs_version=req.cs_version,
        ),
    ]


def _join_existing(entry: JoinEntry, req: JoinRequest, member: str) -> list[JoinOutput]:
    """Join the metaverse object projected on this route (the entry tracks its members)."""
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


def _fail(step: _Step, req: JoinRequest, error_type: str, message: str, detail: str | None = None) -> None:
    """The object stays a disconnector (on its route) with a visible per-object error."""
    step.out.append(
        CSLink(connector=req.connector, anchor=req.anchor, mv_id=None, outcome="ambiguous", ts_ms=req.ts_ms)
    )
    step.out.append(
        ErrorRecord(
            step_id="join.index",
            error_type=error_type,
            algorithm_step="join",
            connector=req.connector,
            anchor=req.anchor,
            message=message,
            detail=detail,
            ts_ms=req.ts_ms,
        )
    )
    _settle(step, req, "done")


def _ask_resolver(step: _Step, req: JoinRequest, found: list[str]) -> str | None:
    """Call the rule's resolver hook; its exception propagates to the caller."""
    assert step.rules is not None
    hook = step.rules.resolver(req.connector, req.object_type)
    assert hook is not None
    subject = JoinSubject(req.connector, req.anchor, req.object_type, req.dn, req.cs_attributes or {})
    chosen = hook(subject, [JoinCandidate(m, dict(step.entry.registered.get(m, {}))) for m in found])
    if chosen is not None and not isinstance(chosen, str):
        raise TypeError(f"returned {type(chosen).__name__}, not an mv_id or None")
    return chosen


def _has_resolver(step: _Step, req: JoinRequest) -> bool:
    return step.rules is not None and step.rules.resolver(req.connector, req.object_type) is not None


def _decide(step: _Step, req: JoinRequest, found: list[str]) -> bool:
    """Candidates found on this route: join, fail, or (a resolver said none) pass. True: attempt over."""
    if _has_resolver(step, req):
        try:
            chosen = _ask_resolver(step, req, found)
        except Exception as exc:
            _fail(
                step,
                req,
                "resolver-error",
                f"join resolver of {req.connector} failed for {req.anchor} on {req.route!r}: "
                f"{type(exc).__name__}: {exc}",
                detail="".join(traceback.format_exception(exc)),
            )
            return True
        if chosen is None:
            return False  # no match in this mapping group: the next one is tried
        if chosen not in found:
            _fail(
                step,
                req,
                "resolver-error",
                f"join resolver of {req.connector} chose {chosen!r} for {req.anchor}, not one of {found}",
            )
            return True
    elif len(found) == 1:
        chosen = found[0]
    else:
        _fail(
            step,
            req,
            "ambiguous-join",
            f"{req.connector} object {req.anchor} matches {len(found)} metaverse objects on "
            f"{req.route!r}: {', '.join(found)}",
        )
        return True
    member = _member(req)
    if chosen == step.entry.mv_id:
        outputs = _join_existing(step.entry, req, member)
    else:
        step.entry.waiting.pop(member, None)
        outputs = _connect(req, chosen, projected=False)
    step.out.extend(outputs)
    joined = any(isinstance(o, CSLink) and o.outcome == "joined" for o in outputs)
    _settle(step, req, "done", mv_id=chosen if joined else None)
    return True


# --------------------------------------------------------------------------- search
def _start(step: _Step, req: JoinRequest) -> None:
    """At the home route: a fresh request starts an attempt, unless one is in flight."""
    entry, member = step.entry, _member(req)
    ticket = entry.tickets.get(member)
    if ticket is not None and ticket.active:
        if req.cs_version >= ticket.request.cs_version:
            ticket.request = req
        ticket.rerun = True
        return
    if ticket is not None and ticket.linked is not None:
        # Sent before staging heard of the join: the values go to the object it joined.
        step.out.extend(_connect(req, ticket.linked, projected=False, route=req.route, routes=[]))
        return
    attempt = (ticket.attempt if ticket is not None else 0) + 1
    entry.tickets[member] = JoinTicket(attempt=attempt, request=req)
    entry.waiting.pop(member, None)
    _search(step, replace(req, attempt=attempt, hop=0, route=_routes(req)[0]))


def _search(step: _Step, req: JoinRequest) -> None:
    """Evaluate the mapping group of this route; a miss passes to the next group."""
    found = candidates(step.entry)
    if found and _decide(step, req, found):
        return
    routes = _routes(req)
    if not req.project:
        step.entry.waiting[_member(req)] = _fresh(req)
    if req.hop + 1 < len(routes):
        step.send(replace(req, hop=req.hop + 1, route=routes[req.hop + 1]))
    else:
        _settle(step, req, "missed")


def _settle(step: _Step, req: JoinRequest, outcome: str, mv_id: str | None = None) -> None:
    """An attempt ended: tell its home (several groups) or finish it here (one group)."""
    if _multi(req):
        step.send(_signal(req, _routes(req)[0], "settle", outcome=outcome, mv_id=mv_id))
    elif outcome == "missed":
        _missed(step, req)
    elif outcome == "retry":
        _search(step, _fresh(req))


def _on_settle(step: _Step, msg: JoinIndexUpdate) -> None:
    entry = step.entry
    ticket = entry.tickets.get(_member(msg))
    if ticket is None or not ticket.active or ticket.attempt != msg.attempt:
        return  # an older attempt's news (or a duplicate)
    if msg.outcome == "done":
        ticket.active = False
        ticket.linked = msg.mv_id
        entry.waiting.pop(_member(msg), None)
        if ticket.rerun:
            ticket.rerun = False
            if msg.mv_id is not None:
                step.out.extend(_connect(ticket.request, msg.mv_id, False, route=step.route, routes=[]))
            else:
                _start(step, ticket.request)
        return
    if msg.outcome == "retry" or ticket.rerun:
        ticket.active = False
        ticket.rerun = False
        _start(step, ticket.request)
        return
    if not ticket.request.project:
        ticket.active = False  # waiting on every route it has
        return
    _missed(step, replace(ticket.request, attempt=ticket.attempt, route=step.route))


def _missed(step: _Step, req: JoinRequest) -> None:
    """No mapping group matched: an object that may project starts claiming its routes."""
    if not req.project:
        return
    if not _multi(req) and step.entry.claim is None:
        _project(step, req)  # one route, nobody claiming it: nothing to lock first
        return
    order = sorted(set(_routes(req)))
    step.send(replace(req, phase="lock", hop=0, route=order[0]))


# --------------------------------------------------------------------------- lock and project
def _refused(step: _Step, req: JoinRequest, found: list[str]) -> bool:
    """Does the resolver hook turn all these candidates down (so they do not stop a projection)?"""
    if not found or not _has_resolver(step, req):
        return not found
    try:
        return _ask_resolver(step, req, found) is None
    except Exception:
        return False  # searching again reports the hook's failure


def _lock(step: _Step, req: JoinRequest) -> None:
    entry, member = step.entry, _member(req)
    routes = _routes(req)
    order = sorted(set(routes))
    if req.hop >= len(order):
        _project(step, req)
        return
    if entry.claim != member:
        if not _refused(step, req, candidates(entry)):
            # Someone got here first: give the claims back and search again.
            for route in order[: req.hop]:
                step.send(_signal(req, route, "release"))
            _settle(step, req, "retry")
            return
        if entry.claim is not None:
            entry.parked = [p for p in entry.parked if _member(p) != member] + [req]
            return
        entry.claim = member
    nxt = order[req.hop + 1] if req.hop + 1 < len(order) else routes[0]
    step.send(replace(req, hop=req.hop + 1, route=nxt))


def _project(step: _Step, req: JoinRequest) -> None:
    """At the home route, every route claimed: create the metaverse object (or, if one appeared at home
    meanwhile, search again)."""
    entry, member = step.entry, _member(req)
    routes = _routes(req)
    others = sorted(set(routes) - {step.route})
    if not _refused(step, req, candidates(entry)):
        for route in others:
            step.send(_signal(req, route, "release"))
        if entry.claim == member:
            entry.claim = None
            _unpark(step)
        _settle(step, req, "retry")
        return
    mv_id = mv_id_for(step.route, entry.generation)
    entry.mv_id = mv_id
    entry.members = [member]
    if entry.claim == member:
        entry.claim = None
    ticket = entry.tickets.get(member)
    if ticket is not None and ticket.attempt == req.attempt:
        ticket.active = False
        ticket.linked = mv_id
        if ticket.rerun:
            ticket.rerun = False
            req = replace(ticket.request, attempt=req.attempt)
    entry.waiting.pop(member, None)
    # Objects waiting for this value join now, no full sync needed (invariant 3).
    main, step.out = step.out, []
    _wake_all(step)
    woken, step.out = step.out, main
    joining = sorted({o.connector for o in woken if isinstance(o, MVContribution) and o.mv_id == mv_id})
    step.out.extend(_connect(req, mv_id, projected=True, joining=joining, route=step.route, routes=others))
    step.out.extend(woken)
    for route in others:
        step.send(_signal(req, route, "commit", mv_id=mv_id, attributes=req.flows))


def _wake_all(step: _Step) -> None:
    """A candidate appeared on this route: parked projections and waiting objects look again."""
    entry = step.entry
    parked, entry.parked = entry.parked, []
    for req in parked:
        _lock(step, req)
    for key in sorted(entry.waiting):
        waiting = entry.waiting.get(key)
        if waiting is None:
            continue
        home = _routes(waiting)[0]
        if not _multi(waiting):
            del entry.waiting[key]
            _search(step, waiting)
        elif home == step.route:
            _wake_home(step, key)
        else:
            del entry.waiting[key]
            step.out.append(_signal(waiting, home, "wake"))


def _wake_home(step: _Step, member: str) -> None:
    ticket = step.entry.tickets.get(member)
    if ticket is not None and ticket.active:
        ticket.rerun = True
        return
    waiting = step.entry.waiting.get(member)
    if waiting is not None:
        _start(step, waiting)


# --------------------------------------------------------------------------- signals
def _on_leave(step: _Step, msg: JoinIndexUpdate) -> None:
    """A member left, a waiting object withdrew, or (``mv_deleted``) a metaverse object is gone."""
    entry = step.entry
    if msg.connector is not None and msg.anchor is not None:
        member = _member(msg)
        if member in entry.members:
            entry.members.remove(member)
        entry.waiting.pop(member, None)
        ticket = entry.tickets.get(member)
        if ticket is not None:
            ticket.active = False  # kept: its attempt number stays monotone
            ticket.linked = None
            ticket.rerun = False
        for req in [p for p in entry.parked if _member(p) == member]:
            entry.parked.remove(req)
            for route in sorted(set(_routes(req)))[: req.hop]:
                step.send(_signal(req, route, "release"))
    if msg.mv_deleted and msg.mv_id is not None:
        if entry.mv_id == msg.mv_id:
            entry.mv_id = None
            entry.members = []
            entry.generation += 1
        entry.registered.pop(msg.mv_id, None)
        for ticket in entry.tickets.values():
            if ticket.linked == msg.mv_id:
                ticket.linked = None


def _on_register(step: _Step, msg: JoinIndexUpdate) -> None:
    if msg.mv_id is None:
        return
    known = msg.mv_id in candidates(step.entry)
    step.entry.registered[msg.mv_id] = dict(msg.attributes or {})
    if not known:
        _wake_all(step)


def _on_unregister(step: _Step, msg: JoinIndexUpdate) -> None:
    if msg.mv_id is not None:
        step.entry.registered.pop(msg.mv_id, None)


def _on_commit(step: _Step, msg: JoinIndexUpdate) -> None:
    """A projection that claimed this route created its object: it is a candidate here now."""
    if step.entry.claim == _member(msg):
        step.entry.claim = None
    _on_register(step, msg)
    _unpark(step)


def _on_release(step: _Step, msg: JoinIndexUpdate) -> None:
    if step.entry.claim == _member(msg):
        step.entry.claim = None
        _unpark(step)


def _unpark(step: _Step) -> None:
    if step.entry.claim is None and step.entry.parked:
        parked, step.entry.parked = step.entry.parked, []
        for req in parked:
            _lock(step, req)


def _on_wake(step: _Step, msg: JoinIndexUpdate) -> None:
    _wake_home(step, _member(msg))


_SIGNALS = {
    "leave": _on_leave,
    "register": _on_register,
    "unregister": _on_unregister,
    "settle": _on_settle,
    "wake": _on_wake,
    "commit": _on_commit,
    "release": _on_release,
}
