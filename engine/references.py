"""Reference attributes (manager, member): DNs in the connector space, mv_ids in the metaverse, DNs again
in each target — whatever order the objects arrive in (docs/rules.md#reference-attributes).

Both translations read one *reference table* (``sync.refs``, compacted, keyed by route), which every worker
reads whole into a local copy (``streams.reftable``), as Kafka Streams' global tables:

- inbound, ``ref|<connector>|<normalized DN>`` -> the mv_id of the object holding that DN. Staging tells
  the join stage who claims which DN (``own``/``disown``: its mv_id, None while not joined, a placeholder);
  the join stage arbitrates between claimants (the later taker owns a DN; the other is transient) and
  publishes the winner's value when it changes (``ref_step``).
- outbound, ``xref|<target connector>|<mv_id>`` -> the object's DN in that target, published by the
  object's own metaverse step once it exists there (``mv_updates``); a reference to an object not created
  yet waits for this second pass.

Referrers register without a round trip through the index: a metaverse object's registrations
(``RefRegister``: inbound ones sent by staging to the object, outbound ones made by its own step) are keys in
its own partition of the metaverse stage (``registration_keys``, under the route's prefix), resolved by a
lookup in the local table when made, and answered again (``RefResolved``, built in the stage) whenever the
table changes the route.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from engine.rules import Rules
from engine.shared import journal_of, pop_entry, set_entry
from engine.staging import ValueChanges
from engine.values import dn_key, dn_keys
from schemas.messages import DnClaim, RefRegister, RefResolved, RefUpdate, RefValue
from schemas.state import CSObject, JoinEntry, MVObject, TargetState

_SEP = "\x00"
RegisterOp = Literal["refer", "unrefer"]
#: The local reference table: route -> value (None: no value).
Lookup = Callable[[str], str | None]


def no_table(_route: str) -> str | None:
    """A lookup that finds nothing: every reference waits for the table's change to reach it."""
    return None


def in_route(connector: str, dn: str) -> str:
    """Route of a DN of ``connector`` in the reference index (the DN is normalized here)."""
    return f"ref|{connector}|{dn_key(dn)}"


def out_route(connector: str, mv_id: str) -> str:
    """Route of a metaverse object's DN in target ``connector``."""
    return f"xref|{connector}|{mv_id}"


def is_ref_route(route: str) -> bool:
    return route.startswith(("ref|", "xref|"))


#: Keys one ``RefRegister`` carries at most (a 50,000-member group registers in 50 messages of ~40 KB).
REGISTER_KEYS = 1000


def register_routes(msg: RefRegister) -> list[str]:
    """The table routes a registration message reads, one per key (keys are already normalized)."""
    prefix = f"{'ref' if msg.direction == 'in' else 'xref'}|{msg.connector}|"
    return [prefix + key for key in msg.keys]


def registration_prefix(route: str) -> str:
    return route + _SEP


def registration_keys(msg: RefRegister) -> list[str]:
    """State keys of a message's registrations in the metaverse stage (each under its route's prefix)."""
    tail = _SEP.join(("", msg.mv_id, msg.attribute or "", msg.anchor or ""))
    return [route + tail for route in register_routes(msg)]


def registers(
    mv_id: str,
    op: RegisterOp,
    connector: str,
    keys: list[str],
    ts_ms: int,
    direction: Literal["in", "out"] = "in",
    attribute: str | None = None,
    anchor: str | None = None,
) -> list[RefRegister]:
    """Messages registering ``mv_id`` to (or from) ``keys``, ``REGISTER_KEYS`` at a time (none for no
    keys)."""
    return [
        RefRegister(
            mv_id=mv_id,
            op=op,
            direction=direction,
            connector=connector,
            keys=keys[i : i + REGISTER_KEYS],
            attribute=attribute,
            anchor=anchor,
            ts_ms=ts_ms,
        )
        for i in range(0, len(keys), REGISTER_KEYS)
    ]


def resolution(key: str, value: str | None, ts_ms: int) -> RefResolved:
    """What the table says to the object of registration ``key``: its route resolves to ``value``."""
    route, referrer, attribute, anchor = key.split(_SEP)
    family, connector, ref = route.split("|", 2)
    return RefResolved(
        mv_id=referrer,
        direction="in" if family == "ref" else "out",
        connector=connector,
        key=ref,
        value=value,
        attribute=attribute or None,
        anchor=anchor or None,
        ts_ms=ts_ms,
    )


def registered(msg: RefRegister, lookup: Lookup) -> list[RefResolved]:
    """The answers a registration message gets at once, one per key that has one: the table's value for
    a new registration (none while there is none), None for one that leaves (inbound: the metaverse holds
    a value until told otherwise; an outbound registration that leaves is forgotten by its own step)."""
    answers: list[tuple[str, str | None]]
    if msg.op == "refer":
        found = [(key, lookup(route)) for key, route in zip(msg.keys, register_routes(msg), strict=True)]
        answers = [(key, value) for key, value in found if value is not None]
    elif msg.direction == "in":
        answers = [(key, None) for key in msg.keys]
    else:
        return []
    return [
        RefResolved(
            mv_id=msg.mv_id,
            direction=msg.direction,
            connector=msg.connector,
            key=key,
            value=value,
            attribute=msg.attribute,
            anchor=msg.anchor,
            ts_ms=msg.ts_ms,
        )
        for key, value in answers
    ]


# --------------------------------------------------------------------------- staging side
def _ref_keys(values: list[str]) -> set[str]:
    """Normalized DNs of a reference attribute's values. Blank values refer to nothing: theirs is the
    empty key, which no other value has (``dn_key`` strips what ``str.strip`` strips, and keeps the rest)."""
    keys = set(dn_keys(values))
    keys.discard("")
    return keys


def cs_references(rules: Rules, cs: CSObject | None) -> dict[str, set[str]]:
    """Normalized DNs a connector-space object refers to through its reference flows, per metaverse
    attribute; none while it has no metaverse object (nothing to resolve them into)."""
    if cs is None or cs.mv_id is None:
        return {}
    return reference_keys(rules, cs)


#: Keys a join request carries at most (``carried_keys``): a person's manager, a small group's members.
#: A larger group registers from staging once joined, ``REGISTER_KEYS`` at a time.
CARRIED_KEYS = REGISTER_KEYS


def carried_keys(rules: Rules, cs: CSObject) -> dict[str, list[str]] | None:
    """What a join request carries for the metaverse to register with the join's contribution, so the
    new object's first sync holds the references the table resolves already (one sync and one export
    per new hire, not a second one for its manager): its reference keys per attribute, sorted. None
    when its connector's DNs are not referenced, its rule has no reference flow, or there are more than
    ``CARRIED_KEYS`` (then staging registers them once the join is answered, as for any joined object)."""
    if cs.connector not in rules.reference_connectors or not rules.ref_flows(cs.connector, cs.object_type):
        return None
    refs = reference_keys(rules, cs)
    if sum(len(keys) for keys in refs.values()) > CARRIED_KEYS:
        return None
    return {attr: sorted(keys) for attr, keys in sorted(refs.items())}


def reference_keys(rules: Rules, cs: CSObject) -> dict[str, set[str]]:
    """Normalized DNs a connector-space object's reference flows name, per metaverse attribute.

    A single-valued reference attribute with several DNs refers to none (staging reports the
    ``flow-multi-values-to-single-value`` error for it)."""
    flows = rules.ref_flows(cs.connector, cs.object_type)
    if not flows:
        return {}
    rule = rules.inbound_rule(cs.connector, cs.object_type)
    single = rules.single_valued.get(rule.mv_type, frozenset()) if rule is not None else frozenset()
    refs: dict[str, set[str]] = {}
    for attr, source in flows:
        keys = _ref_keys(cs.attributes.get(source, []))
        if attr in single and len(keys) > 1:
            continue
        if keys:
            refs.setdefault(attr, set()).update(keys)
    return refs


def _same_references(rules: Rules, before: CSObject | None, after: CSObject | None) -> bool:
    """Whether two versions of an object refer to the same DNs, value for value (then their reference
    pairs are equal without normalizing a large group's member DNs)."""
    if before is None or after is None or before.mv_id != after.mv_id:
        return False
    return all(
        before.attributes.get(source) == after.attributes.get(source)
        for _attr, source in rules.ref_flows(after.connector, after.object_type)
    )


def _value_references(
    rules: Rules, before: CSObject | None, after: CSObject | None, values: ValueChanges
) -> tuple[dict[str, list[str]], dict[str, list[str]]] | None:
    """(keys referred to now, keys no longer referred to) per metaverse attribute, from a value-level
    change alone: O(values changed), whatever the size of the group. None when the values do not say it
    all — the object changed metaverse objects, a reference source attribute changed whole, two source
    attributes flow into one metaverse attribute, or a single-valued one (several DNs refer to none)."""
    if before is None or after is None or after.mv_id is None or before.mv_id != after.mv_id:
        return None
    flows = rules.ref_flows(after.connector, after.object_type)
    rule = rules.inbound_rule(after.connector, after.object_type)
    single = rules.single_valued.get(rule.mv_type, frozenset()) if rule is not None else frozenset()
    targets = [attr for attr, _source in flows]
    added: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    for attr, source in flows:
        if source in values:
            if attr in single or targets.count(attr) > 1:
                return None
            gained, lost = values[source]
            # A DN removed and added back in another spelling refers to what it did.
            now, was = _ref_keys(gained), _ref_keys(lost)
            if now - was:
                added[attr] = sorted(now - was)
            if was - now:
                removed[attr] = sorted(was - now)
        elif before.attributes.get(source) != after.attributes.get(source):
            return None
    return added, removed


def _owned(rules: Rules, cs: CSObject | None) -> tuple[str, str, str | None] | None:
    """(route, anchor, mv_id) this object publishes as the owner of its DN, if any.

    Every object with a DN claims it (the index tells an object whose DN another took: transient); the
    mv_id goes with it only where DNs are referenced (otherwise nobody asks, and a join sends nothing).

    Where DNs are referenced, an object whose join is in flight (routed, no mv_id yet) claims nothing until
    the join's answer: then it claims once, with its mv_id, instead of once without and again with it (a
    new person of the HR feed cost the index two claims). Nobody could resolve a reference to it meanwhile
    (its claim would carry no mv_id); what waits is only the arbitration between two objects on one DN —
    the other holds it until this one's claim arrives, and the later taker wins then as always."""
    if cs is None or (at := _dn_route(cs)) is None:
        return None
    if cs.connector not in rules.reference_connectors:
        return *at, None
    if cs.mv_id is None and cs.join_route is not None:
        return None
    return *at, cs.mv_id


def _dn_route(cs: CSObject | None) -> tuple[str, str] | None:
    """(route, anchor) of the DN an object has in the index, if it has a DN."""
    if cs is None or not cs.dn:
        return None
    return in_route(cs.connector, cs.dn), cs.anchor


def staging_updates(
    rules: Rules,
    before: CSObject | None,
    after: CSObject | None,
    ts_ms: int,
    carried: dict[str, list[str]] | None = None,
    values: ValueChanges | None = None,
) -> list[RefUpdate | RefRegister]:
    """Reference updates for a connector-space object that changed from ``before`` to ``after`` (any
    change: staged, joined, unlinked, renamed, deleted): its claim on its DN for the join stage
    (``RefUpdate``), its metaverse object's registrations for the metaverse stage (``RefRegister``).
    Nothing when neither its DN, its mv_id nor its references changed, so an ordinary update costs
    nothing here.

    ``carried``: the join that gave ``after`` its mv_id carried these keys (``CSLink.ref_keys``), and
    the metaverse registered them with the join's contribution: only the difference to the object's
    references now is registered (nothing, unless it changed while the join was in flight).

    ``values``: what a value-level change record did (``engine.staging.Staged.values``): the references
    it added and removed are registered from those values alone, not by comparing the group's members."""
    obj = after or before
    if obj is None:
        return []
    connector = obj.connector
    out: list[RefUpdate | RefRegister] = []
    referenced = connector in rules.reference_connectors
    # The claim (DN, and the mv_id where DNs are referenced) is unchanged by an ordinary update: skip the
    # DN parsing on that hot path.
    same_claim = (
        before is not None
        and after is not None
        and before.dn == after.dn
        and (
            not referenced
            or (before.mv_id == after.mv_id and (before.join_route is None) == (after.join_route is None))
        )
    )
    if not same_claim:
        old, new = _owned(rules, before), _owned(rules, after)
        # The DN the object may hold in the index: its claim, or, while its join is in flight, the claim
        # an earlier release made at staging (before claims waited for the join). Leaving it is disowned
        # either way: a disown of a DN it does not hold changes nothing, a claim left behind would stay.
        held = _dn_route(before)
        if held is not None and (new is None or new[:2] != held):
            out.append(
                RefUpdate(
                    route=held[0],
                    op="disown",
                    connector=connector,
                    key=held[0].split("|", 2)[2],
                    owner=held[1],
                    ts_ms=ts_ms,
                )
            )
        if new is not None and new != old:
            assert after is not None
            out.append(
                RefUpdate(
                    route=new[0],
                    op="own",
                    connector=connector,
                    key=new[0].split("|", 2)[2],
                    owner=new[1],
                    value=new[2],
                    # A stale claimant of a DN (its delete or rename not seen yet) has only versions older
                    # than the new holder's: the source moved it away before the new holder took the DN.
                    version=after.version,
                    ts_ms=ts_ms,
                )
            )
    if not referenced:
        return out
    new_mv = after.mv_id if after is not None else None
    # A join answer (``carried``): what its contribution registered is compared with what the object
    # names now, even when it was joined already (a later request's contribution registered its keys
    # too, or the answer is delivered again).
    made = {a: set(keys) for a, keys in carried.items()} if carried is not None and new_mv is not None else {}
    if carried is None and values is None and _same_references(rules, before, after):
        return out  # an ordinary update of a group: its members did not change, nothing to compare
    if carried is None and values is not None:
        delta = _value_references(rules, before, after, values)
        if delta is not None:
            assert new_mv is not None  # _value_references answers only for a joined object
            steps: tuple[tuple[RegisterOp, dict[str, list[str]]], ...] = (
                ("unrefer", delta[1]),
                ("refer", delta[0]),
            )
            for op, keyed in steps:
                for attr, keys in sorted(keyed.items()):
                    out += registers(new_mv, op, connector, keys, ts_ms, attribute=attr, anchor=obj.anchor)
            return out
    old_refs, new_refs = cs_references(rules, before), cs_references(rules, after)
    old_mv = before.mv_id if before is not None else None
    removed: list[tuple[str, str]] = []
    #: Keys the join's contribution registered that the object no longer names.
    dropped: list[tuple[str, str]] = []
    added: list[tuple[str, str]] = []
    for attr in old_refs.keys() | new_refs.keys() | made.keys():
        was, now = old_refs.get(attr, set()), new_refs.get(attr, set())
        if old_mv == new_mv:  # compared per attribute as sets of keys: a group's member change is C-level
            was, now = was - now, now - was
        if attr in made:
            dropped.extend((attr, key) for key in made[attr] - new_refs.get(attr, set()))
            if old_mv != new_mv:
                now = now - made[attr]  # registered with the contribution already
        removed.extend((attr, key) for key in was)
        added.extend((attr, key) for key in now)
    changes: tuple[tuple[RegisterOp, str | None, list[tuple[str, str]]], ...] = (
        ("unrefer", old_mv, removed),
        ("unrefer", new_mv, dropped),
        ("refer", new_mv, added),
    )
    for op, mv_id, pairs in changes:
        if mv_id is None:
            continue
        by_attr: dict[str, list[str]] = {}
        for attr, key in sorted(pairs):
            by_attr.setdefault(attr, []).append(key)
        for attr, keys in by_attr.items():
            out += registers(mv_id, op, connector, keys, ts_ms, attribute=attr, anchor=obj.anchor)
    return out


# --------------------------------------------------------------------------- the index (join stage)
@dataclass(slots=True)
class RefStep:
    """One claim applied to a DN's index entry: the entry, the table's new value, claimants told."""

    entry: JoinEntry | None
    #: The DN's new value for the reference table, when it changed.
    value: RefValue | None = None
    #: Claimants of a DN whose standing changed (transient or owner again), for their staging.
    claims: list[DnClaim] = field(default_factory=list)


def ref_step(entry: JoinEntry | None, msg: RefUpdate) -> RefStep:
    """Apply one claim (``own``/``disown``) to a DN's index entry."""
    entry = copy.copy(entry) if entry is not None else JoinEntry()
    current = entry.ref_value if entry.ref_owner is not None else None
    step = RefStep(entry)
    claims = dict(entry.ref_claims)
    if entry.ref_owner is not None and entry.ref_owner not in claims:
        claims[entry.ref_owner] = (0, entry.ref_value)  # an entry written before claims were kept
    if msg.op == "own":
        claims[msg.owner] = (msg.version, msg.value)
    else:
        claims.pop(msg.owner, None)
    before = entry.ref_owner
    entry.ref_claims = claims
    if claims:
        # The later taker owns the key; equal versions by name.
        entry.ref_owner = max(claims, key=lambda owner: (claims[owner][0], owner))
        entry.ref_value = claims[entry.ref_owner][1]
    else:
        entry.ref_owner, entry.ref_value = None, None
    value = entry.ref_value if entry.ref_owner is not None else None
    step.claims = _standing(msg, before, entry.ref_owner, set(claims))
    if value != current:
        step.value = RefValue(route=msg.route, value=value, ts_ms=msg.ts_ms)
    if entry.ref_owner is None:
        step.entry = None
    return step


def table_value(route: str, entry: JoinEntry) -> RefValue | None:
    """The table value an index entry stands for (republished when the table topic lost it)."""
    if entry.ref_owner is None or entry.ref_value is None or not route.startswith("ref|"):
        return None
    return RefValue(route=route, value=entry.ref_value, ts_ms=0)


def _standing(msg: RefUpdate, before: str | None, owner: str | None, claimants: set[str]) -> list[DnClaim]:
    """DnClaim messages for the claimants whose standing this message changed: the one that lost the DN
    to a later taker (transient), the one that got it back when the other left (not transient), and a
    new claimant that does not own it (transient from the start)."""
    out: list[DnClaim] = []

    def tell(anchor: str, transient: bool) -> None:
        out.append(
            DnClaim(
                connector=msg.connector, anchor=anchor, dn_key=msg.key, transient=transient, ts_ms=msg.ts_ms
            )
        )

    if before != owner:
        if before is not None and before in claimants:
            tell(before, True)
        if owner is not None and (before is not None or msg.owner != owner):
            tell(owner, False)
    if msg.op == "own" and msg.owner != owner and msg.owner in claimants:
        tell(msg.owner, True)  # took the DN earlier than its current holder: its delete is on the way
    return out


# --------------------------------------------------------------------------- metaverse side
def published_dn(mv: MVObject | None, connector: str) -> str | None:
    """The DN a metaverse object has in a target, once it exists there (what referrers export)."""
    if mv is None or mv.deleted:
        return None
    target = mv.targets.get(connector)
    if target is None or target.status != "exists" or not target.dn:
        return None
    return target.dn


def referenced(rules: Rules, mv: MVObject | None, connector: str) -> set[str]:
    """mv_ids a metaverse object exports references to in a target connector."""
    if mv is None or mv.deleted:
        return set()
    attrs = rules.export_references.get((connector, mv.object_type), frozenset())
    return set().union(*(mv.attributes.get(a, ()) for a in attrs))


def published_dns(rules: Rules, mv: MVObject | None) -> dict[str, str | None]:
    """The object's DN in each target whose referrers need it (``published_dn``), before a step."""
    return {connector: published_dn(mv, connector) for connector in rules.xref_targets}


def mv_updates(
    rules: Rules,
    mv_id: str,
    published_before: dict[str, str | None],
    mv: MVObject | None,
    ts_ms: int,
    dropped: bool = False,
    registrations: bool = True,
    lookup: Lookup = no_table,
) -> tuple[list[RefValue | RefRegister], str | None]:
    """Outbound reference updates after a metaverse step: publish this object's DN in each target that
    needs it (``published_before``: ``published_dns`` before the step), and (un)register the objects it
    references there. Registration is recorded in ``TargetState.ref_dns`` of ``mv``, which the step owns
    (changed in place), with the DN the table already knows (``lookup``; "" until it does). ``dropped``:
    the step removed the object; ``mv`` is what it was, and every registration it had goes.
    ``registrations=False``: the step changed no attribute value, so what the object references is as it
    was (a group's member answer: checking would be O(members)).

    Also returns the first target where a new registration found a DN (None: none did): the target is
    marked for re-planning and the object must be synced again (the caller defers a ``RefSync``)."""
    out: list[RefValue | RefRegister] = []
    found: str | None = None
    for connector in rules.xref_targets:
        dn_after = None if dropped else published_dn(mv, connector)
        if published_before.get(connector) != dn_after:
            out.append(RefValue(route=out_route(connector, mv_id), value=dn_after, ts_ms=ts_ms))
        if not registrations and not dropped:
            continue
        msgs, known = register_target(rules, mv_id, mv, connector, ts_ms, lookup, dropped)
        out += msgs
        if known:
            found = found or connector
    return out, found


def register_target(
    rules: Rules,
    mv_id: str,
    mv: MVObject | None,
    connector: str,
    ts_ms: int,
    lookup: Lookup,
    dropped: bool = False,
) -> tuple[list[RefRegister], bool]:
    """(Un)register the objects ``mv`` references in target ``connector`` (``TargetState.ref_dns``,
    changed in place, with the DN the table knows already, "" until it does). Returns the registration
    messages for the stage, and whether a new registration found a DN (the target is then marked for
    re-planning).

    Called by the metaverse sync before it plans exports (a new hire's add then carries its manager's DN
    when the manager is in the target already), and after each step for what changed otherwise."""
    target = mv.targets.get(connector) if mv is not None else None
    registered = set(target.ref_dns) if target is not None else set()
    wanted = set() if dropped else referenced(rules, mv, connector)
    if registered == wanted:
        return [], False
    found = False
    if mv is not None and not dropped:
        target = mv.targets.setdefault(connector, TargetState())
        journal = journal_of(target.ref_dns)  # shared with the object the step was given (engine.shared)
        for gone in registered - wanted:
            pop_entry(target.ref_dns, gone, journal)
        for new in sorted(wanted - registered):
            dn = lookup(out_route(connector, new)) or ""
            set_entry(target.ref_dns, new, dn, journal)
            if dn:
                found = True
                target.replan = True
    out: list[RefRegister] = []
    refs: tuple[tuple[RegisterOp, set[str]], ...] = (
        ("unrefer", registered - wanted),
        ("refer", wanted - registered),
    )
    for op, ids in refs:
        out += registers(mv_id, op, connector, sorted(ids), ts_ms, direction="out")
    return out, found
