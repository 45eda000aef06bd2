"""Deletion rules with a grace period: marked with a due time, deleted by a later event (explicit now_ms)."""

from __future__ import annotations

from msgspec.structs import replace

from engine.deletion import due_deletions
from engine.join import mv_id_for
from engine.metaverse import expire, metaverse_step
from engine.rules import Rules
from schemas.messages import CSLink, JoinIndexUpdate
from schemas.state import MVObject
from schemas.wire import MVChange, PendingExport

from .helpers import badge_contribution, demo_rules, disconnect, hr_contribution, of_type

MV_ID = mv_id_for("person|employeeId=E1", 0)
GRACE_S = 60
DISCONNECT_AT = 9_000
DUE = DISCONNECT_AT + GRACE_S * 1000


def grace_rules(rule: str = "source-disconnects") -> Rules:
    return demo_rules(
        metaverse={"person": {"deletion": {"rule": rule, "sources": ["hr"], "grace_period_s": GRACE_S}}}
    )


def marked(rules: Rules) -> MVObject:
    """hr projected (and was provisioned), then left: the object waits for its grace period."""
    mv, _ = metaverse_step(rules, None, hr_contribution(rules, MV_ID, projected=True))
    mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1", ts_ms=DISCONNECT_AT))
    assert mv is not None and not mv.deleted
    assert mv.delete_due_ms == DUE
    # no value changes meanwhile: the departed source's values stay, no export, no index update; the change
    # feed learns only that hr is no longer connected
    [change] = of_type(outputs, MVChange)
    assert change.op == "update" and change.changed == [] and change.connectors == []
    assert change.attributes == mv.attributes
    assert of_type(outputs, PendingExport) == []
    assert [u for u in of_type(outputs, JoinIndexUpdate) if u.mv_deleted] == []
    assert mv.attributes["sn"] == ["White"]
    return mv


def test_due_deletions_is_pure_over_state_and_now() -> None:
    mv = marked(grace_rules())
    other = MVObject(mv_id="early", object_type="person", delete_due_ms=DUE - 5)
    assert due_deletions([mv, other, None], DUE - 6) == []
    assert due_deletions([mv, other, None], DUE - 1) == ["early"]
    assert due_deletions([mv, other], DUE) == ["early", MV_ID]
    assert due_deletions([replace(mv, deleted=True)], DUE) == []


def test_expire_deletes_at_or_after_the_due_time_only() -> None:
    rules = grace_rules()
    mv = marked(rules)
    assert expire(rules, mv, DUE - 1) == (mv, [])
    gone, outputs = expire(rules, mv, DUE)
    [change] = of_type(outputs, MVChange)
    assert change.op == "delete" and change.mv_id == MV_ID
    [deprovision] = of_type(outputs, PendingExport)  # the demo disables (moves) the LDAP account
    assert deprovision.connector == "ldap"
    assert [u.route for u in of_type(outputs, JoinIndexUpdate) if u.mv_deleted] == ["person|employeeId=E1"]
    assert gone is None  # no link left and nothing to confirm (disable, not delete): dropped
    assert mv.deleted is False and mv.delete_due_ms == DUE  # the input is not mutated


def test_any_later_event_past_the_due_time_deletes_first() -> None:
    rules = grace_rules()
    mv = marked(rules)
    late = badge_contribution(MV_ID, {"mail": ["b@x.org"]}, ts_ms=DUE + 10)
    gone, outputs = metaverse_step(rules, mv, late, now_ms=DUE + 10)
    assert [c.op for c in of_type(outputs, MVChange)] == ["delete"]
    # the contribution then finds a deleted object: it joins again (unlinked)
    assert [lk.outcome for lk in of_type(outputs, CSLink) if lk.connector == "badge"] == ["unlinked"]
    assert gone is None


def test_event_before_the_due_time_does_not_delete() -> None:
    rules = grace_rules()
    mv = marked(rules)
    mv2, outputs = metaverse_step(rules, mv, badge_contribution(MV_ID, {"mail": ["b@x.org"]}), now_ms=DUE - 1)
    assert mv2 is not None and not mv2.deleted and mv2.delete_due_ms == DUE
    assert "delete" not in [c.op for c in of_type(outputs, MVChange)]


def test_reconnecting_source_cancels_the_deletion() -> None:
    rules = grace_rules()
    mv = marked(rules)
    back = hr_contribution(rules, MV_ID, version=2, ts_ms=DUE - 100)
    mv, outputs = metaverse_step(rules, mv, back, now_ms=DUE - 100)
    assert mv is not None and mv.delete_due_ms is None and mv.retained == {}
    # same values as before it left: no value changed, hr is connected again
    [change] = of_type(outputs, MVChange)
    assert change.changed == [] and change.connectors == ["hr"]
    assert expire(rules, mv, DUE + 1) == (mv, [])
    assert due_deletions([mv], DUE + 1) == []


def test_non_source_joining_does_not_cancel_source_disconnects() -> None:
    rules = grace_rules()
    mv = marked(rules)
    mv, _ = metaverse_step(rules, mv, badge_contribution(MV_ID, {"mail": ["b@x.org"]}), now_ms=DUE - 1)
    assert mv is not None and mv.delete_due_ms == DUE


def test_last_connector_rule_with_grace() -> None:
    rules = grace_rules("last-connector")
    mv, _ = metaverse_step(rules, None, hr_contribution(rules, MV_ID, projected=True))
    mv, _ = metaverse_step(rules, mv, badge_contribution(MV_ID, {"mail": ["b@x.org"]}))
    mv, _ = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1", ts_ms=DISCONNECT_AT))
    assert mv is not None and mv.delete_due_ms is None  # badge is still there
    mv, _ = metaverse_step(rules, mv, disconnect(MV_ID, "badge", "B1", ts_ms=DISCONNECT_AT + 1))
    assert mv is not None and mv.delete_due_ms == DUE + 1
    # badge comes back: any non-target connector rescues it
    mv, _ = metaverse_step(rules, mv, badge_contribution(MV_ID, {"mail": ["b@x.org"]}, version=2, ts_ms=DUE))
    assert mv is not None and mv.delete_due_ms is None


def test_without_grace_the_rule_deletes_at_once() -> None:
    rules = demo_rules()
    mv, _ = metaverse_step(rules, None, hr_contribution(rules, MV_ID, projected=True))
    _mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1"))
    assert [c.op for c in of_type(outputs, MVChange)] == ["delete"]
