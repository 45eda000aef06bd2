"""Outbound sync: turn the difference between what a target should hold and what it holds into
pending exports, and record export results."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from typing import Literal

from msgspec.structs import replace

from engine.confirmation import DELETED_KEY, DN_KEY, casefold_keys, export_id
from engine.provisioning import Desired, desired, moved_dn
from engine.rules import ExportShape
from engine.values import dn_key, dn_keys, same_values, split_dn
from schemas.config import OutboundRuleConfig
from schemas.messages import CSLink, ExportResult
from schemas.records import Attrs
from schemas.state import LedgerEntry, MVObject, TargetState
from schemas.wire import AttrChange, ErrorRecord, PendingExport

OutboundOutput = PendingExport | ErrorRecord | CSLink
#: Values held back from removal (``TargetState.held_back``) a settled target may hold per attribute.
HELD_BACK_KEYS = 4096
ExportOp = Literal["add", "update", "rename", "delete"]
_PLAIN = ExportShape()


def _view(target: TargetState, image: Attrs | None) -> Attrs:
    """What the target holds as far as we know: the last import overlaid with unconfirmed exports."""
    view = casefold_keys(image or {})
    for attr, entry in target.ledger.items():
        if attr in (DN_KEY, DELETED_KEY):
            continue
        if entry.op == "delta":
            view[attr.casefold()] = overlay(view.get(attr.casefold(), []), entry)
        else:
            view[attr.casefold()] = entry.values
    return view


def _identity(value: str) -> str:
    return value


def value_key(dn_valued: bool) -> Callable[[str], str]:
    """How values of an attribute compare: as DNs for reference attributes, exactly otherwise."""
    return dn_key if dn_valued else _identity


def value_keys(values: list[str], dn_valued: bool) -> list[str]:
    """``value_key`` of each value, in order."""
    return dn_keys(values) if dn_valued else values


def overlay(have: list[str], entry: LedgerEntry) -> list[str]:
    """Values after a value-level (delta) ledger entry is applied to ``have``."""
    removed = set(value_keys(entry.removed, entry.dn_valued))
    have_keys = value_keys(have, entry.dn_valued)
    kept = [v for v, k in zip(have, have_keys, strict=True) if k not in removed]
    present = {k for k in have_keys if k not in removed}
    added = zip(entry.values, value_keys(entry.values, entry.dn_valued), strict=True)
    return kept + [v for v, k in added if k not in present]


def _delta_entry(
    prev: LedgerEntry | None,
    added: list[str],
    removed: list[str],
    dn_valued: bool,
    seq: int,
    exact: bool = False,
) -> LedgerEntry:
    """The ledger entry after a value-level change, merged with an unconfirmed one before it.

    ``exact``: the removed values are in the entry as they are written and no added value is (the
    planner knows it, ``engine.membership``): an unconfirmed whole value set is changed in place of
    its sorted list, without comparing every value."""
    key = value_key(dn_valued)
    if exact and prev is not None and prev.op != "delta":
        values = list(prev.values)
        for value in removed:
            at = bisect_left(values, value)
            if at == len(values) or values[at] != value:
                break  # not where a sorted list has it: compared value by value below
            del values[at]
        else:
            for value in added:
                insort(values, value)
            return LedgerEntry(values=values, dn_valued=dn_valued, seq=seq)
    if prev is not None and prev.op != "delta":
        # An unconfirmed whole value set (the add): it stays one, with the change applied.
        delta = LedgerEntry(op="delta", values=added, removed=removed, dn_valued=dn_valued, seq=0)
        values = overlay(prev.values, delta)
        return LedgerEntry(values=sorted(values), dn_valued=dn_valued, seq=seq)
    old_added = list(prev.values) if prev is not None else []
    old_removed = list(prev.removed) if prev is not None else []
    add_keys, rem_keys = {key(v) for v in added}, {key(v) for v in removed}
    all_added = [v for v in old_added if key(v) not in rem_keys] + added
    all_removed = [v for v in old_removed if key(v) not in add_keys] + removed
    return LedgerEntry(
        op="delta", values=sorted(all_added), removed=sorted(all_removed), dn_valued=dn_valued, seq=seq
    )


def _emit(
    mv: MVObject,
    rule: OutboundRuleConfig,
    target: TargetState,
    op: ExportOp,
    dn: str,
    attributes: dict[str, AttrChange],
    old: Attrs,
    ts_ms: int,
    new_dn: str | None = None,
    dn_valued: frozenset[str] = frozenset(),
    exact: bool = False,
) -> PendingExport:
    target.seq += 1
    seq = target.seq
    for attr, change in attributes.items():
        if change.op == "replace":
            # In order (a set of values either way): a large group's stored in chunks (engine.chunks).
            target.ledger[attr] = LedgerEntry(
                values=sorted(change.values), seq=seq, dn_valued=attr in dn_valued
            )
        else:
            added = change.values if change.op == "add" else []
            removed = change.values if change.op == "delete" else []
            prev = target.ledger.get(attr)
            target.ledger[attr] = _delta_entry(prev, added, removed, attr in dn_valued, seq, exact)
    if op in ("add", "rename"):
        target.pending_dn = new_dn or dn
        target.ledger[DN_KEY] = LedgerEntry(values=[new_dn or dn], seq=seq)
    if op == "delete":
        target.ledger = {DELETED_KEY: LedgerEntry(values=[], seq=seq)}
    return PendingExport(
        export_id=export_id(mv.mv_id, rule.connector, seq),
        seq=target.seq,
        connector=rule.connector,
        mv_id=mv.mv_id,
        op=op,
        object_type=rule.object_type,
        anchor=target.anchor,
        dn=dn,
        new_dn=new_dn,
        attributes=attributes,
        old=old,
        ts_ms=ts_ms,
    )


def _provision(
    mv: MVObject, rule: OutboundRuleConfig, target: TargetState, want: Desired, ts_ms: int
) -> list[OutboundOutput]:
    if want.dn is None:
        return [
            ErrorRecord(
                step_id="metaverse.outbound",
                error_type="provisioning-missing-dn-attribute",
                algorithm_step="provisioning",
                connector=rule.connector,
                mv_id=mv.mv_id,
                message=(
                    f"cannot provision into {rule.connector}: DN template {rule.dn!r} has an empty attribute"
                ),
                ts_ms=ts_ms,
            )
        ]
    attrs = {k: AttrChange(op="replace", values=v) for k, v in sorted(want.attributes.items()) if v}
    if any(not _carried(attrs, name) for name in rule.requires):
        return []  # not yet (``OutboundRuleConfig.requires``): still "none", planned again at every change
    target.status = "pending-add"
    target.dn = want.dn
    target.disabled = False
    return [_emit(mv, rule, target, "add", want.dn, attrs, {}, ts_ms)]


def _carried(attrs: dict[str, AttrChange], name: str) -> bool:
    """Whether an add's attributes give target attribute ``name`` a value (names compare as LDAP's do)."""
    lowered = name.lower()
    return any(k.lower() == lowered and change.values for k, change in attrs.items())


def _update(
    mv: MVObject,
    rule: OutboundRuleConfig,
    target: TargetState,
    want: Desired,
    image: Attrs | None,
    ts_ms: int,
    shape: ExportShape = _PLAIN,
) -> list[OutboundOutput]:
    view = _view(target, image)
    changes: dict[str, AttrChange] = {}
    adds: dict[str, AttrChange] = {}
    old: Attrs = {}
    for attr, values in sorted(want.attributes.items()):
        have = view.get(attr.casefold(), [])
        dn_valued = attr in shape.dn_valued
        have_keys = value_keys(have, dn_valued)
        if attr in shape.value_level:
            # Membership: only the values that changed go out (a group is never rewritten whole).
            held = set(have_keys)
            wanted = dict(zip(value_keys(values, dn_valued), values, strict=True))
            added = [v for k, v in wanted.items() if k not in held]
            removed = [v for v, k in zip(have, have_keys, strict=True) if k not in wanted]
            if attr in want.adds_only:
                if removed:
                    target.held_back[attr] = sorted(value_keys(removed, dn_valued))
                removed = []
            if removed:
                changes[attr] = AttrChange(op="delete", values=removed)
            if added:
                adds[attr] = AttrChange(op="add", values=added)
        elif sorted(have_keys) != sorted(value_keys(values, dn_valued)):
            changes[attr] = AttrChange(op="replace", values=values)
            old[attr] = have
    current_dn = target.pending_dn or target.dn or want.dn
    new_dn = want.dn
    if target.disabled and rule.deprovision.disable is not None:
        # Back in scope: undo what disabling set.
        for attr in rule.deprovision.disable.set:
            if attr not in want.attributes and view.get(attr.casefold()):
                changes[attr] = AttrChange(op="replace", values=[])
                old[attr] = view.get(attr.casefold(), [])
        target.disabled = False
    if current_dn is None:
        return []
    return emit_update(mv, rule, target, current_dn, new_dn, changes, adds, old, ts_ms, shape)


def emit_update(
    mv: MVObject,
    rule: OutboundRuleConfig,
    target: TargetState,
    current_dn: str,
    new_dn: str | None,
    changes: dict[str, AttrChange],
    adds: dict[str, AttrChange],
    old: Attrs,
    ts_ms: int,
    shape: ExportShape = _PLAIN,
    exact: bool = False,
) -> list[OutboundOutput]:
    """The exports of an update: ``changes`` (replaced values, removed ones) and ``adds`` (added values),
    renaming to ``new_dn`` if it is another DN. ``exact``: as for ``_delta_entry``."""
    dns = shape.dn_valued
    out: list[OutboundOutput] = []
    renamed = new_dn is not None and dn_key(new_dn) != dn_key(current_dn)
    if renamed:
        out.append(_emit(mv, rule, target, "rename", current_dn, changes, old, ts_ms, new_dn, dns, exact))
        current_dn = new_dn or current_dn
    elif adds and not any(c.op == "delete" and a in adds for a, c in changes.items()):
        # No value of an attribute is both added and removed: one update carries everything.
        changes.update(adds)
        adds = {}
    if changes and not renamed:
        out.append(
            _emit(mv, rule, target, "update", current_dn, changes, old, ts_ms, dn_valued=dns, exact=exact)
        )
    if adds:
        # An attribute has one change per export: its added values follow its removed ones.
        out.append(_emit(mv, rule, target, "update", current_dn, adds, {}, ts_ms, dn_valued=dns, exact=exact))
    return out


def _deprovision(
    mv: MVObject, rule: OutboundRuleConfig, target: TargetState, image: Attrs | None, ts_ms: int
) -> list[OutboundOutput]:
    dn = target.pending_dn or target.dn
    if dn is None:
        target.status = "none"
        return []
    action = rule.deprovision.action
    if action == "delete":
        target.status = "pending-delete"
        return [_emit(mv, rule, target, "delete", dn, {}, {}, ts_ms)]
    if action in ("disconnect", "explicit-disconnect"):
        target.status = "disconnected"
        target.ledger = {}
        link = mv.links.pop(rule.connector, None)
        if link is None:
            return []
        outcome: Literal["disconnected", "explicitly-disconnected"] = (
            "disconnected" if action == "disconnect" else "explicitly-disconnected"
        )
        return [
            CSLink(connector=rule.connector, anchor=link.anchor, mv_id=None, outcome=outcome, ts_ms=ts_ms)
        ]
    disable = rule.deprovision.disable
    if target.disabled or disable is None:
        return []
    target.disabled = True
    view = _view(target, image)
    changes = {
        attr: AttrChange(op="replace", values=values)
        for attr, values in sorted(disable.set.items())
        if not same_values(view.get(attr.casefold()), values)
    }
    old = {attr: view.get(attr.casefold(), []) for attr in changes}
    if disable.move_to and dn_key(",".join(split_dn(dn)[1:])) != dn_key(disable.move_to):
        return [
            _emit(mv, rule, target, "rename", dn, changes, old, ts_ms, new_dn=moved_dn(dn, disable.move_to))
        ]
    if changes:
        return [_emit(mv, rule, target, "update", dn, changes, old, ts_ms)]
    return []


def plan_exports(
    mv: MVObject, rule: OutboundRuleConfig, ts_ms: int, shape: ExportShape = _PLAIN, mark: str | None = None
) -> list[OutboundOutput]:
    """Outbound sync of one metaverse object against one outbound rule. Mutates ``mv.targets``.

    ``shape``: reference attributes (exported as the targets' DNs) and value-level attributes.
    ``mark``: the rule's mark (``Rules.rule_marks``), recorded as ``TargetState.settled_by`` when the
    plan leaves the target holding all the rule wants (None: never recorded)."""
    target = mv.targets.setdefault(rule.connector, TargetState())
    target.replan = False
    target.settled_by = None
    target.waiting = {}
    target.held_back = {}
    if target.status in ("disconnected", "joining"):
        return []
    link = mv.links.get(rule.connector)
    image = link.image if link is not None else None
    want = desired(rule, mv, shape.references, shape.value_level)
    if want.in_scope:
        errors: list[OutboundOutput] = [
            ErrorRecord(
                step_id="metaverse.outbound",
                error_type=issue.error_type,
                algorithm_step="export-flow",
                connector=rule.connector,
                mv_id=mv.mv_id,
                message=f"export to {rule.connector}: {issue.message}",
                ts_ms=ts_ms,
            )
            for issue in want.issues
        ]
        if target.status in ("none", "pending-delete"):
            out = errors + _provision(mv, rule, target, want, ts_ms)
        else:
            out = errors + _update(mv, rule, target, want, image, ts_ms, shape)
        failed = any(isinstance(o, ErrorRecord) for o in out)
        held, target.held_back = target.held_back, {}
        few = all(len(keys) <= HELD_BACK_KEYS for keys in held.values())
        if not failed and (target.pending_dn or target.dn) is not None and few:
            # Every value the rule wants is exported (or was): the target holds what the rule wants, and
            # while references wait, the values held back from removal besides.
            target.settled_by = mark
            target.waiting = dict(want.waiting)
            target.held_back = held
        return out
    if target.status in ("pending-add", "exists"):
        return _deprovision(mv, rule, target, image, ts_ms)
    return []


#: Target states in which a plan changes only when what the rule reads changes, or the target does.
_SETTLED = frozenset({"exists", "pending-add", "joining", "pending-delete", "disconnected"})


def unaffected(
    mv: MVObject, rule: OutboundRuleConfig, reads: frozenset[str] | None, cause: str, changed: frozenset[str]
) -> bool:
    """Whether planning ``rule`` again would find nothing to export: nothing it reads changed, the change
    did not come from its target (a new image to compare and confirm), and the target is settled (not
    waiting to be provisioned, no failed export to make again)."""
    if reads is None or cause == rule.connector or changed & reads:
        return False
    target = mv.targets.get(rule.connector)
    return target is not None and target.status in _SETTLED and not target.replan


def record_result(target: TargetState, result: ExportResult) -> None:
    """Record what an export worker did. Mutates ``target`` (not its ledger entries: they are replaced)."""
    if result.status == "failed":
        target.error = f"{result.error_type}: {result.message}"
        target.replan = True
        target.settled_by = None
        for attr, entry in list(target.ledger.items()):
            if entry.seq == result.seq:
                del target.ledger[attr]
        if result.op == "add":
            # Not created: provisioning is tried again at the object's next change — unless an import has
            # shown the object in the target meanwhile (joined: it exists, the next plan updates it; a
            # second add would plan values against nothing while the image holds others).
            if target.status == "pending-add":
                target.status = "none"
            target.pending_dn = None
        elif result.op == "rename":
            target.pending_dn = None
        return
    target.error = None
    for attr, entry in list(target.ledger.items()):
        if entry.seq == result.seq:
            target.ledger[attr] = replace(entry, applied=True, applied_ts_ms=result.ts_ms)
    if result.anchor is not None:
        target.anchor = result.anchor
    if result.op == "add":
        target.status = "exists" if target.status == "pending-add" else target.status
    if result.op in ("add", "rename") and result.dn is not None:
        target.dn = result.dn
