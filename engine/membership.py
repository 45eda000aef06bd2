"""A change of a few members of a large group, synced from those members alone.

A group's members are a reference attribute: the source's member DNs, resolved by the reference table to
mv_ids (``ConnectorLink.refs``), make the link's flow value (the sorted set of those mv_ids), which
precedence makes the metaverse value, which an outbound rule exports value by value as the members' DNs
in the target. The general sync (``engine.metaverse._ref_sync``) computes each of these whole: the
flow value from every answer, the target's registrations from every member, the plan from every member
translated and compared with every value the target holds — O(members) for one member added.

``member_sync`` does the same work from the answers that changed, when it can prove the result is the
one the general sync gives:

- the answers: ``track_answer`` remembers, per stale attribute, each answered key's value before the
  first answer since the last sync (``ConnectorLink.stale_keys``; beyond ``TRACKED_KEYS`` keys the
  attribute is computed whole). With the flow value's values each held by one key (as many values as
  keys), the values that leave are those the changed keys held and hold no more, the values that come are
  those they hold now and the flow value did not;
- precedence: the link is the attribute's winner before and after (ranked precedence, the link's value
  not empty before or after, not initial-only, nothing retained), so the metaverse value changes as the
  flow value does;
- registrations: the target's registrations are the attribute's members before (``ref_dns``, as many),
  so the members that came are registered and those that left unregistered, as the general sync would;
- plans: a rule that must be planned exports the attribute by one direct flow it reads nowhere else
  (``Rules.member_exports``) into a target that its last plan left holding all the rule wants
  (``TargetState.settled_by``, this rule's mark; no failed export since, no import that showed other
  values). What the target holds is then what the rule wanted before; what it wants now differs by the
  members that came (their DNs in the target, each known: else the general plan holds back removals
  and is made whole) and those that left (their DNs as the target holds them, found as they are written:
  else made whole). The DN, the scope and the other flows read nothing that changed.

Where any of this does not hold, it returns None before it changes anything, and the general sync runs.
It assumes what the DN claims ensure: two metaverse objects do not have one DN in a target.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from engine.chunks import Touched, attribute_path, flow_path, ledger_path, ref_dns_path
from engine.confirmation import casefold_keys
from engine.export import HELD_BACK_KEYS, OutboundOutput, emit_update, unaffected
from engine.references import Lookup, out_route, registers
from engine.rules import Rules
from engine.shared import journal_of, pop_entry, set_entry
from engine.values import dn_key, dn_keys, render
from schemas.config import OutboundRuleConfig
from schemas.messages import RefRegister
from schemas.state import ConnectorLink, MVObject, TargetState
from schemas.wire import AttrChange, MVChange

__all__ = ["TRACKED_KEYS", "ByValue", "by_value_always", "member_sync", "track_answer"]

_V = TypeVar("_V")

#: Answered keys remembered per stale attribute; past them the attribute's flow value is computed whole.
TRACKED_KEYS = 256

#: Whether a metaverse object's member change may go on ``mv.changes`` by value (mv_id -> yes), where
#: the attribute is large enough (``pipeline.mv_changes_by_value_from``). The metaverse stage says no for
#: an object it has not published whole since it took the object's partition.
ByValue = Callable[[str], bool]


def by_value_always(_mv_id: str) -> bool:
    return True


#: Target states planned by updates (what ``engine.export.plan_exports`` does with an object in scope).
_UPDATED = frozenset({"exists", "pending-add"})


def track_answer(link: ConnectorLink, attr: str, key: str, before: str | None) -> None:
    """Remember that ``key`` of reference attribute ``attr`` is answered, and the value it had before
    (None: none) if this is its first answer since the attribute's flow value was computed. Call it
    before the answer changes ``link.refs`` and ``link.stale_refs``."""
    keys = link.stale_keys.get(attr)
    if attr not in link.stale_refs:
        link.stale_keys[attr] = {key: before or ""}
    elif keys is not None and key not in keys:
        if len(keys) >= TRACKED_KEYS:
            del link.stale_keys[attr]  # computed whole
        else:
            keys[key] = before or ""


def _flow_delta(
    refs: dict[str, str], before: list[str], keys: dict[str, str]
) -> tuple[set[str], set[str]] | None:
    """(values that come, values that leave) of a flow value ``before`` (the sorted set of the values the
    keys held) now that ``keys`` (key -> value before) changed; None unless each value was one key's."""
    held_before = len(refs)
    olds: set[str] = set()
    news: set[str] = set()
    for key, old in keys.items():
        new = refs.get(key)
        if old:
            olds.add(old)
            held_before += 1
        if new is not None:
            news.add(new)
            held_before -= 1
    if held_before != len(before):
        return None  # two keys held one value: the whole set decides whether it stays
    # Each value before was one key's: the unchanged keys hold ``before`` less ``olds``.
    came = {v for v in news if not _holds(before, v)}
    return came, olds - news


def _same(values: list[str] | None, other: list[str]) -> bool:
    """Equal lists; the same list at once (a member sync leaves the attribute and its flow one list)."""
    return values is other or values == other


def _holds(values: list[str], value: str) -> bool:
    at = bisect_left(values, value)
    return at < len(values) and values[at] == value


def _held_as_written(
    mv: MVObject, connector: str, target: TargetState, attr: str, dns: list[str]
) -> list[str] | None:
    """``dns`` in the order the target's view of ``attr`` (its image overlaid with the ledger, as
    ``engine.export`` builds it) holds them, each found as it is written there; None if one is not."""
    entry = target.ledger.get(attr)
    if entry is not None and entry.op != "delta":
        # The whole value set, in order (``engine.export._emit`` sorts it).
        return sorted(dns) if all(_holds(entry.values, d) for d in dns) else None
    link = mv.links.get(connector)
    # The connector's last imported image, its names folded as ``engine.export._view`` folds them.
    image = casefold_keys((link.image or {}) if link is not None else {}).get(attr.casefold(), [])
    gone = set(dn_keys(entry.removed)) if entry is not None else set()
    placed: list[tuple[int, int, str]] = []
    imaged: set[str] | None = None  # the image's DN keys, once a DN is looked for in the ledger
    for dn in dns:
        if dn in image and dn_key(dn) not in gone:
            placed.append((0, image.index(dn), dn))
            continue
        if entry is None or dn not in entry.values:
            return None
        if imaged is None:
            imaged = set(dn_keys(image)) - gone
        if dn_key(dn) in imaged:
            return None  # the view holds the image's value, written another way (another case)
        placed.append((1, entry.values.index(dn), dn))
    return [dn for _part, _at, dn in sorted(placed)]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the general plan of one rule does with a change of some members (``_member_plan``)."""

    #: The target attribute.
    attr: str
    #: Values it exports added and removed.
    added: list[str]
    removed: list[str]
    #: The attribute's references waiting, and the keys of the values held back from removal, after it.
    waiting: int
    held_back: list[str]


def _member_plan(
    mv: MVObject,
    connector: str,
    target: TargetState,
    attr: str,
    target_attr: str,
    found: dict[str, str],
    removed: list[str],
) -> _Plan | None:
    """The general plan's exports for members that came (``found``: mv_id -> their DN in the target, ""
    while they are not there) and members that left (``removed``), for a target settled by the rule.

    Settled means: every value the rule wanted is held, and while some of the attribute's references
    waited (``TargetState.waiting``) the values the rule no longer wanted were held back from removal
    (``TargetState.held_back``: their keys). So a member that came with a DN is added unless its DN is
    one held back; one that left is removed, or held back while references still wait. The change that
    makes the last waiting reference go is decided whole: the general plan then removes every value held
    back."""
    waiting = target.waiting.get(attr, 0)
    held_back = set(target.held_back.get(target_attr, ()))
    if held_back and not waiting:
        return None  # not what a settled target holds
    new_dns = list(found.values())
    old_dns = [target.ref_dns[m] for m in removed]
    after = waiting + sum(1 for dn in new_dns if not dn) - sum(1 for dn in old_dns if not dn)
    if after < 0 or (waiting and not after):
        return None
    added: list[str] = []
    for dn in new_dns:
        if not dn:
            continue
        key = dn_key(dn)
        if key in held_back:
            held_back.discard(key)  # held back, wanted again: nothing to export
        else:
            added.append(dn)
    known = [dn for dn in old_dns if dn]
    if after:
        # A reference still waits, so the general plan removes nothing: each is held back.
        held_back.update(dn_key(dn) for dn in known)
        if len(held_back) > HELD_BACK_KEYS:
            return None
        return _Plan(target_attr, added, [], after, sorted(held_back))
    gone = _held_as_written(mv, connector, target, target_attr, known) if known else []
    if gone is None:
        return None
    return _Plan(target_attr, added, gone, after, [])


def _feed_record(
    rules: Rules,
    mv: MVObject,
    attr: str,
    added: list[str],
    removed: list[str],
    cause: str,
    ts_ms: int,
    by_value: ByValue,
) -> MVChange:
    """The ``mv.changes`` record of a member change of ``mv`` (already applied): by value (version 2)
    where the attribute is large enough and ``by_value`` allows it, else the whole image."""
    values = mv.attributes[attr]
    least = rules.config.pipeline.mv_changes_by_value_from
    if least is None or len(values) < least or not by_value(mv.mv_id):
        return MVChange(
            op="update",
            mv_id=mv.mv_id,
            object_type=mv.object_type,
            attributes=mv.attributes,
            changed=[attr],
            connectors=mv.published_connectors,
            cause=cause,
            ts_ms=ts_ms,
        )
    return MVChange(
        version=2,
        op="update",
        mv_id=mv.mv_id,
        object_type=mv.object_type,
        attributes={name: v for name, v in mv.attributes.items() if name != attr},
        changed=[attr],
        connectors=mv.published_connectors,
        cause=cause,
        ts_ms=ts_ms,
        added={attr: added} if added else None,
        removed={attr: removed} if removed else None,
        counts={attr: len(values)},
    )


def _without(counts: dict[str, _V], key: str) -> dict[str, _V]:
    return {k: v for k, v in counts.items() if k != key}


def member_sync(
    rules: Rules,
    mv: MVObject,
    ts_ms: int,
    lookup: Lookup,
    touched: Touched | None = None,
    by_value: ByValue = by_value_always,
) -> list[OutboundOutput | MVChange | RefRegister] | None:
    """Sync a metaverse object whose only stale answers change a few values of one reference attribute,
    from those values alone; None (nothing changed) when the general sync must do it. ``touched``: the
    values and keys it changed in the object's containers are added to it (``engine.chunks``).

    Its ``mv.changes`` record gives the attribute by value (version 2: the values added and removed) from
    ``pipeline.mv_changes_by_value_from`` values on, where ``by_value`` allows it for the object; else
    the whole image, as the general sync's."""
    stale = [(c, link) for c, link in mv.links.items() if link.stale_refs]
    if len(stale) != 1 or len(stale[0][1].stale_refs) != 1 or mv.ref_sync is None:
        return None
    connector, link = stale[0]
    attr = link.stale_refs[0]
    keys = link.stale_keys.get(attr)
    before = link.flows.get(attr)
    if keys is None or not before:
        return None
    delta = _flow_delta(link.refs.get(attr, {}), before, keys)
    if delta is None:
        return None
    came, left = delta
    if (not came and not left) or len(before) + len(came) - len(left) <= 0:
        return None
    mv_type = mv.object_type
    info = rules.contributors.get(mv_type, {}).get(connector)
    if (
        attr in rules.equal.get(mv_type, frozenset())
        or attr in mv.retained
        or mv.contributors.get(attr) != connector
        or (info is not None and attr in info.initial_only)
        or attr in rules.join_attributes.get(mv_type, frozenset())
        or mv_type in rules.snapshot_types
        or not _same(mv.attributes.get(attr), before)
    ):
        return None
    cause = mv.ref_sync
    changed = frozenset({attr})
    added, removed = sorted(came), sorted(left)

    # Registrations: the members that came and left, where their DNs in a target are needed.
    registrations: list[tuple[str, list[tuple[str, str]]]] = []
    for target_name in rules.xref_targets:
        exported = rules.export_references.get((target_name, mv_type), frozenset())
        if attr not in exported:
            continue
        target = mv.targets.get(target_name)
        ref_dns = target.ref_dns if target is not None else {}
        if (
            exported != {attr}
            or len(ref_dns) != len(before)
            or any(m in ref_dns for m in added)
            or any(m not in ref_dns for m in removed)
        ):
            return None
        registrations.append((target_name, [(m, lookup(out_route(target_name, m)) or "") for m in added]))
    found = {name: dict(new) for name, new in registrations}

    # Plans: each rule to plan exports the attribute member by member into a settled target.
    plans: list[tuple[OutboundRuleConfig, TargetState, str, _Plan]] = []
    reads = rules.outbound_reads.get(mv_type, ())
    members = rules.member_exports.get(mv_type, ())
    marks = rules.rule_marks.get(mv_type, ())
    for rule, read, member, mark in zip(rules.outbound.get(mv_type, []), reads, members, marks, strict=True):
        if unaffected(mv, rule, read, cause, changed):
            continue
        target_attr = member.get(attr)
        target = mv.targets.get(rule.connector)
        if (
            target_attr is None
            or target is None
            or target.settled_by != mark
            or target.replan
            or target.disabled
            or target.status not in _UPDATED
            or rule.connector not in found
        ):
            return None
        plan = _member_plan(mv, rule.connector, target, attr, target_attr, found[rule.connector], removed)
        if plan is None:
            return None
        want_dn = render(rule.dn, mv.attributes, escape=True)
        current_dn = target.pending_dn or target.dn or want_dn
        if current_dn is None or (want_dn is not None and dn_key(want_dn) != dn_key(current_dn)):
            return None
        plans.append((rule, target, current_dn, plan))

    # It holds: change the object as the general sync would.
    values = list(before)
    for value in left:
        del values[bisect_left(values, value)]
    for value in came:
        insort(values, value)
    link.flows[attr] = values
    link.stale_refs = []
    link.stale_keys = {}
    mv.ref_sync = None
    attrs = dict(mv.attributes)
    attrs[attr] = values  # one list for the flow and the attribute: both replaced, never changed in place
    if touched is not None:
        touched.add(flow_path(connector, attr), came | left)
        touched.add(attribute_path(attr), came | left)
    mv.attributes = attrs
    mv.version += 1
    connectors = sorted(mv.links)
    mv.published_connectors = connectors
    outputs: list[OutboundOutput | MVChange | RefRegister] = [
        _feed_record(rules, mv, attr, added, removed, cause, ts_ms, by_value)
    ]
    for target_name, new in registrations:
        target = mv.targets.setdefault(target_name, TargetState())
        journal = journal_of(target.ref_dns)  # shared with the object the step was given (engine.shared)
        for member_id in removed:
            pop_entry(target.ref_dns, member_id, journal)
        for member_id, dn in new:
            set_entry(target.ref_dns, member_id, dn, journal)
        if touched is not None:
            touched.add(ref_dns_path(target_name), [*removed, *added])
        outputs += registers(mv.mv_id, "unrefer", target_name, removed, ts_ms, direction="out")
        outputs += registers(mv.mv_id, "refer", target_name, added, ts_ms, direction="out")
    for rule, target, current_dn, plan in plans:
        target.replan = False
        target.waiting = (
            {**target.waiting, attr: plan.waiting} if plan.waiting else _without(target.waiting, attr)
        )
        target.held_back = (
            {**target.held_back, plan.attr: plan.held_back}
            if plan.held_back
            else _without(target.held_back, plan.attr)
        )
        changes = {plan.attr: AttrChange(op="delete", values=plan.removed)} if plan.removed else {}
        adds = {plan.attr: AttrChange(op="add", values=plan.added)} if plan.added else {}
        shape = rules.export_shape(rule.connector, mv_type)
        prev = target.ledger.get(plan.attr)
        outputs += emit_update(
            mv, rule, target, current_dn, None, changes, adds, {}, ts_ms, shape, exact=True
        )
        if touched is not None and (changes or adds):
            path = ledger_path(rule.connector, plan.attr)
            if prev is not None and prev.op != "delta" and all(_holds(prev.values, v) for v in plan.removed):
                # A whole value set changed in place (engine.export._delta_entry with ``exact``).
                touched.add(path, [*plan.removed, *plan.added])
            else:
                touched.unknown(path)
    return outputs
