"""engine.staging (stage, stage_absent, apply_link) and engine.inbound (route, on_link)."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from engine.inbound import on_link, route
from engine.join import join_route
from engine.staging import Staged, apply_link, changed_attributes, stage, stage_absent
from schemas.messages import CSLink, JoinIndexUpdate, JoinRequest, MVContribution, MVDisconnect
from schemas.state import ConnectorState

from .helpers import cs_object, demo_rules, hr_attrs, record

ROUTE = "person|employeeId=E1"
MV = "mv-1"


# --------------------------------------------------------------------------- stage
def test_add_creates_hologram_from_record() -> None:
    rec = record(after=hr_attrs(), version=3, run_id="run-1", dn=None, locator="hr.csv:2")
    staged = stage(None, rec)
    assert staged.pending == "add"
    assert staged.before is None
    assert staged.after is not None
    assert staged.after.attributes == hr_attrs()
    assert staged.after.version == 3
    assert staged.after.event_id == "hr:E1:3"
    assert staged.after.last_run == "run-1"
    assert staged.after.locator == "hr.csv:2"
    assert staged.after.state == ConnectorState.DISCONNECTOR
    assert staged.changed == frozenset(hr_attrs())
    assert not staged.skipped


def test_add_drops_empty_attributes() -> None:
    after = hr_attrs()
    after["email"] = []
    staged = stage(None, record(after=after))
    assert staged.after is not None
    assert "email" not in staged.after.attributes
    assert "email" not in staged.changed


def test_update_reports_changed_attribute_names_only() -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    staged = stage(current, record(op="u", after=hr_attrs(title="Lead", location="Paris"), version=2))
    assert staged.pending == "update"
    assert staged.changed == {"title", "location"}
    assert staged.after is not None
    assert staged.after.attributes["title"] == ["Lead"]
    assert staged.after.version == 2
    # the join decision survives an update
    assert staged.after.mv_id == MV
    assert staged.after.state == ConnectorState.CONNECTOR
    assert staged.after.join_route == ROUTE
    assert staged.before is current


def test_update_removing_an_attribute_counts_as_change() -> None:
    current = cs_object(version=1)
    staged = stage(current, record(op="u", after=hr_attrs(email=None), version=2))
    assert staged.pending == "update"
    assert staged.changed == {"email"}
    assert staged.after is not None
    assert "email" not in staged.after.attributes


def test_multivalued_reorder_is_not_a_change() -> None:
    current = cs_object(attributes={"employee_id": ["E1"], "groups": ["a", "b"]}, version=1)
    staged = stage(current, record(after={"employee_id": ["E1"], "groups": ["b", "a"]}, version=2))
    assert staged.pending == "none"
    assert staged.changed == frozenset()


def test_rename_when_dn_changes() -> None:
    current = cs_object(connector="ldap", object_type="person", dn="uid=a,ou=people,dc=example,dc=org")
    rec = record(
        connector="ldap",
        object_type="person",
        after=hr_attrs(),
        version=2,
        dn="uid=a,ou=moved,dc=example,dc=org",
    )
    staged = stage(current, rec)
    assert staged.pending == "rename"
    assert staged.after is not None
    assert staged.after.dn == "uid=a,ou=moved,dc=example,dc=org"
    assert staged.changed == frozenset()


def test_dn_case_or_spacing_change_is_not_a_rename() -> None:
    current = cs_object(connector="ldap", object_type="person", dn="uid=a,ou=people,dc=example,dc=org")
    rec = record(
        connector="ldap",
        object_type="person",
        after=hr_attrs(),
        version=2,
        dn="UID=a, OU=People,DC=example,dc=org",
    )
    staged = stage(current, rec)
    assert staged.pending == "none"


def test_record_without_dn_keeps_the_known_dn() -> None:
    current = cs_object(dn="uid=a,dc=example,dc=org")
    staged = stage(current, record(after=hr_attrs(title="X"), version=2, dn=None))
    assert staged.pending == "update"
    assert staged.after is not None
    assert staged.after.dn == "uid=a,dc=example,dc=org"


def test_delete_removes_the_object() -> None:
    current = cs_object(version=1)
    staged = stage(current, record(op="d", version=2))
    assert staged.pending == "delete"
    assert staged.after is None
    assert staged.before is current
    assert staged.changed == frozenset(current.attributes)


def test_delete_of_unknown_object_is_none() -> None:
    staged = stage(None, record(op="d", version=2))
    assert staged.pending == "none"
    assert staged.before is None
    assert staged.after is None


def test_object_type_change_is_delete_add() -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    staged = stage(current, record(object_type="contractor", after={"employee_id": ["E1"]}, version=2))
    assert staged.pending == "delete-add"
    assert staged.before is current
    assert staged.after is not None
    assert staged.after.object_type == "contractor"
    assert staged.after.mv_id is None
    assert staged.after.state == ConnectorState.DISCONNECTOR
    assert staged.after.attributes == {"employee_id": ["E1"]}
    assert staged.changed == frozenset(hr_attrs())


def test_unchanged_is_none_but_version_and_run_advance() -> None:
    current = cs_object(version=1, last_run="run-1")
    staged = stage(current, record(after=hr_attrs(), version=5, run_id="run-2"))
    assert staged.pending == "none"
    assert staged.after is not None
    assert staged.after.version == 5
    assert staged.after.last_run == "run-2"
    assert staged.after.event_id == "hr:E1:5"
    assert staged.changed == frozenset()
    assert not staged.skipped


def test_delta_without_run_keeps_last_run() -> None:
    current = cs_object(version=1, last_run="run-1")
    staged = stage(current, record(op="u", after=hr_attrs(title="X"), version=2, run_id=None))
    assert staged.after is not None
    assert staged.after.last_run == "run-1"


def test_stale_record_changes_nothing() -> None:
    current = cs_object(version=5)
    staged = stage(current, record(after=hr_attrs(title="Old"), version=4))
    assert staged.pending == "stale"
    assert staged.skipped
    assert staged.after is current
    assert staged.after.attributes == hr_attrs()


def test_stale_delete_changes_nothing() -> None:
    current = cs_object(version=5)
    staged = stage(current, record(op="d", version=4))
    assert staged.pending == "stale"
    assert staged.after is current


def test_duplicate_event_changes_nothing() -> None:
    current = cs_object(version=2)
    dup = record(after=hr_attrs(title="Other"), version=2, event_id=current.event_id)
    staged = stage(current, dup)
    assert staged.pending == "duplicate"
    assert staged.skipped
    assert staged.after is current


def test_same_version_new_event_is_applied() -> None:
    current = cs_object(version=2)
    staged = stage(current, record(after=hr_attrs(title="Other"), version=2, event_id="another"))
    assert staged.pending == "update"


def test_delta_changes_overlay_on_hologram() -> None:
    current = cs_object(version=1)
    # The delta carries only the changed attributes; everything else stays as in the hologram.
    rec = record(op="u", after={"title": ["Lead"]}, changes=["title", "email"], version=2)
    staged = stage(current, rec)
    assert staged.pending == "update"
    assert staged.after is not None
    expected = hr_attrs(title="Lead", email=None)
    assert staged.after.attributes == expected
    assert staged.changed == {"title", "email"}


def test_full_image_without_changes_replaces_hologram() -> None:
    current = cs_object(version=1)
    staged = stage(current, record(op="u", after={"employee_id": ["E1"]}, version=2))
    assert staged.after is not None
    assert staged.after.attributes == {"employee_id": ["E1"]}


def test_changes_on_create_are_ignored() -> None:
    staged = stage(None, record(op="c", after={"title": ["Lead"]}, changes=["title"]))
    assert staged.pending == "add"
    assert staged.after is not None
    assert staged.after.attributes == {"title": ["Lead"]}


def test_changed_attributes() -> None:
    assert changed_attributes({"a": ["1"], "b": ["x", "y"]}, {"a": ["1"], "b": ["y", "x"]}) == frozenset()
    assert changed_attributes({"a": ["1"]}, {"a": ["2"], "c": []}) == {"a"}
    assert changed_attributes({"a": ["1"]}, {}) == {"a"}


# --------------------------------------------------------------------------- stage_absent
def test_absent_from_run_is_deleted() -> None:
    current = cs_object(version=3, last_run="run-1")
    staged = stage_absent(current, "run-2", version=10)
    assert staged is not None
    assert staged.pending == "delete"
    assert staged.after is None
    assert staged.before is current


def test_seen_in_run_is_kept() -> None:
    assert stage_absent(cs_object(version=3, last_run="run-2"), "run-2", version=10) is None


def test_changed_after_run_started_is_kept() -> None:
    assert stage_absent(cs_object(version=11, last_run="run-1"), "run-2", version=10) is None


def test_never_in_a_run_and_older_is_deleted() -> None:
    staged = stage_absent(cs_object(version=10, last_run=None), "run-2", version=10)
    assert staged is not None and staged.pending == "delete"


# --------------------------------------------------------------------------- apply_link
@pytest.mark.parametrize("outcome", ["joined", "projected"])
def test_link_connects(outcome: str) -> None:
    cs = apply_link(cs_object(join_route=ROUTE), MV, outcome)
    assert cs.mv_id == MV
    assert cs.state == ConnectorState.CONNECTOR
    assert cs.join_route == ROUTE


def test_link_keeps_explicit_connector() -> None:
    cs = apply_link(cs_object(state=ConnectorState.EXPLICIT_CONNECTOR), MV, "joined")
    assert cs.state == ConnectorState.EXPLICIT_CONNECTOR
    assert cs.mv_id == MV


def test_link_ambiguous_keeps_route() -> None:
    cs = apply_link(cs_object(join_route=ROUTE), None, "ambiguous")
    assert cs.mv_id is None
    assert cs.join_route == ROUTE
    assert cs.state == ConnectorState.DISCONNECTOR


def test_link_unlinked_clears_route() -> None:
    cs = apply_link(cs_object(join_route=ROUTE, mv_id=MV, state=ConnectorState.CONNECTOR), None, "unlinked")
    assert cs.mv_id is None
    assert cs.join_route is None
    assert cs.state == ConnectorState.DISCONNECTOR


def test_link_explicitly_disconnected_is_explicit_disconnector() -> None:
    cs = apply_link(
        cs_object(join_route=ROUTE, mv_id=MV, state=ConnectorState.CONNECTOR), None, "explicitly-disconnected"
    )
    assert cs.mv_id is None
    assert cs.join_route is None
    assert cs.state == ConnectorState.EXPLICIT_DISCONNECTOR


def test_link_disconnected_is_a_normal_disconnector() -> None:
    cs = apply_link(
        cs_object(join_route=ROUTE, mv_id=MV, state=ConnectorState.CONNECTOR), None, "disconnected"
    )
    assert (cs.mv_id, cs.join_route, cs.state) == (None, None, ConnectorState.DISCONNECTOR)
    # its next change goes through the join rules again
    after, outputs = route(demo_rules(), stage(cs, record(after=hr_attrs(title="CTO"), version=2)), 9_000)
    assert after is not None and [type(o) for o in outputs] == [JoinRequest]


def test_apply_link_does_not_mutate_input() -> None:
    before = cs_object(join_route=ROUTE)
    apply_link(before, MV, "joined")
    assert before.mv_id is None
    assert before.state == ConnectorState.DISCONNECTOR


# --------------------------------------------------------------------------- inbound.route
RULES = demo_rules()


def _staged_add(attrs: dict[str, list[str]] | None = None, **kw: object) -> Staged:
    return stage(None, record(after=attrs if attrs is not None else hr_attrs(), **kw))  # type: ignore[arg-type]


def test_connector_filter_makes_filtered_disconnector() -> None:
    cs, outputs = route(RULES, _staged_add(hr_attrs(department="Contractors")), ts_ms=7)
    assert cs is not None
    assert cs.state == ConnectorState.FILTERED_DISCONNECTOR
    assert cs.mv_id is None
    assert cs.join_route is None
    assert outputs == []


def test_connector_filter_disconnects_connected_object() -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    staged = stage(current, record(after=hr_attrs(department="contractors"), version=2))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None
    assert cs.state == ConnectorState.FILTERED_DISCONNECTOR
    assert cs.mv_id is None and cs.join_route is None
    assert len(outputs) == 1
    out = outputs[0]
    assert isinstance(out, MVDisconnect)
    assert (out.mv_id, out.connector, out.anchor, out.reason) == (MV, "hr", "E1", "filtered")
    assert out.cs_version == 2
    assert out.ts_ms == 7


def test_connector_filter_withdraws_waiting_disconnector() -> None:
    # an hr disconnector waiting on its route (its JoinRequest not answered yet) becomes filtered
    current = cs_object(join_route=ROUTE)
    staged = stage(current, record(after=hr_attrs(department="Contractors"), version=2))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.state == ConnectorState.FILTERED_DISCONNECTOR
    assert outputs == [JoinIndexUpdate(route=ROUTE, connector="hr", anchor="E1", ts_ms=7)]


def test_explicit_connector_ignores_connector_filter() -> None:
    current = cs_object(version=1, state=ConnectorState.EXPLICIT_CONNECTOR, mv_id=MV, join_route=ROUTE)
    staged = stage(current, record(after=hr_attrs(department="Contractors"), version=2))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.state == ConnectorState.EXPLICIT_CONNECTOR
    assert len(outputs) == 1 and isinstance(outputs[0], MVContribution)


def test_filtered_disconnector_leaving_filter_joins_again() -> None:
    current = cs_object(
        version=1, state=ConnectorState.FILTERED_DISCONNECTOR, attributes=hr_attrs(department="Contractors")
    )
    staged = stage(current, record(after=hr_attrs(), version=2))
    assert staged.pending == "update"
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.state == ConnectorState.DISCONNECTOR
    assert [type(o) for o in outputs] == [JoinRequest]


def test_disconnector_with_join_value_requests_join() -> None:
    cs, outputs = route(RULES, _staged_add(version=4), ts_ms=7)
    assert cs is not None
    assert cs.join_route == ROUTE
    assert cs.state == ConnectorState.DISCONNECTOR
    assert len(outputs) == 1
    req = outputs[0]
    assert isinstance(req, JoinRequest)
    assert req.route == ROUTE
    assert req.mv_type == "person"
    assert (req.connector, req.anchor, req.cs_version, req.event_id) == ("hr", "E1", 4, "hr:E1:4")
    assert req.project is True
    assert req.flows["displayName"] == ["Gabriel White"]
    assert req.flows["employeeId"] == ["E1"]
    assert req.image is None  # hr is not an export target
    assert req.ts_ms == 7


def test_route_is_stable_and_normalized() -> None:
    rule = RULES.inbound_rule("hr", "employee")
    assert rule is not None
    a = join_route(rule, cs_object(attributes=hr_attrs(employee_id="E1")))
    b = join_route(rule, cs_object(attributes=hr_attrs(employee_id="  E1 ")))
    assert a == b == ROUTE
    ldap = RULES.inbound_rule("ldap", "person")
    assert ldap is not None
    assert join_route(ldap, cs_object(connector="ldap", attributes={"employeeNumber": ["E1"]})) == ROUTE


def test_route_without_join_value() -> None:
    hr = RULES.inbound_rule("hr", "employee")
    ldap = RULES.inbound_rule("ldap", "person")
    assert hr is not None and ldap is not None
    # a projecting object without a join value projects on its own route
    assert join_route(hr, cs_object(attributes=hr_attrs(employee_id=None))) == "person|cs|hr|E1"
    # a non-projecting one can do nothing
    assert join_route(ldap, cs_object(connector="ldap", attributes={"cn": ["x"]})) is None


def test_non_projecting_object_without_join_value_emits_nothing() -> None:
    staged = stage(
        None, record(connector="ldap", object_type="person", after={"cn": ["x"]}, dn="cn=x,dc=org")
    )
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.join_route is None
    assert outputs == []


def test_export_target_sends_image() -> None:
    attrs = {"employeeNumber": ["E1"], "cn": ["Gabriel White (gwhite)"]}
    staged = stage(None, record(connector="ldap", object_type="person", after=attrs, dn="cn=x,dc=org"))
    _cs, outputs = route(RULES, staged, ts_ms=7)
    assert len(outputs) == 1
    req = outputs[0]
    assert isinstance(req, JoinRequest)
    assert req.project is False
    assert req.image == attrs
    assert req.dn == "cn=x,dc=org"
    assert req.flows == {}


def test_pinned_route_is_reused() -> None:
    pinned = "person|employeeId=OLD"
    current = cs_object(version=1, join_route=pinned, attributes=hr_attrs(employee_id="OLD"))
    staged = stage(current, record(after=hr_attrs(employee_id="E1", title="X"), version=2))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.join_route == pinned
    assert len(outputs) == 1 and isinstance(outputs[0], JoinRequest)
    assert outputs[0].route == pinned


def test_connected_object_contributes() -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    staged = stage(current, record(after=hr_attrs(title="Lead"), version=2))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.mv_id == MV
    assert len(outputs) == 1
    out = outputs[0]
    assert isinstance(out, MVContribution)
    assert (out.mv_id, out.connector, out.anchor, out.cs_version) == (MV, "hr", "E1", 2)
    assert out.flows["title"] == ["Lead"]
    assert out.route == ROUTE
    assert out.projected is False


def test_deleted_connected_object_disconnects() -> None:
    current = cs_object(version=3, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    cs, outputs = route(RULES, stage(current, record(op="d", version=4)), ts_ms=7)
    assert cs is None
    assert len(outputs) == 1
    out = outputs[0]
    assert isinstance(out, MVDisconnect)
    assert (out.mv_id, out.connector, out.anchor, out.reason) == (MV, "hr", "E1", "deleted")


def test_deleted_waiting_disconnector_withdraws_from_index() -> None:
    current = cs_object(version=3, join_route=ROUTE)
    cs, outputs = route(RULES, stage(current, record(op="d", version=4)), ts_ms=7)
    assert cs is None
    assert outputs == [JoinIndexUpdate(route=ROUTE, mv_id=None, connector="hr", anchor="E1", ts_ms=7)]


def test_deleted_unrouted_disconnector_emits_nothing() -> None:
    cs, outputs = route(RULES, stage(cs_object(version=3), record(op="d", version=4)), ts_ms=7)
    assert cs is None and outputs == []


def test_delete_add_leaves_then_routes_again() -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    # the new object type has no inbound rule: it only leaves
    staged = stage(current, record(object_type="contractor", after=hr_attrs(), version=2))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None
    assert cs.mv_id is None and cs.join_route is None
    assert cs.state == ConnectorState.DISCONNECTOR
    assert len(outputs) == 1 and isinstance(outputs[0], MVDisconnect)
    assert outputs[0].reason == "deleted"


def test_unchanged_emits_nothing() -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    staged = stage(current, record(after=hr_attrs(), version=2))
    assert staged.pending == "none"
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert outputs == []
    assert cs is staged.after
    assert cs is not None and cs.version == 2


def test_unchanged_connected_target_object_still_contributes() -> None:
    # the import of an unchanged target object is what confirms the exports made since the last one
    attrs = {"employeeNumber": ["E1"], "cn": ["x"]}
    current = cs_object(
        connector="ldap",
        object_type="person",
        attributes=attrs,
        state=ConnectorState.CONNECTOR,
        mv_id=MV,
        join_route=ROUTE,
        dn="cn=x,dc=org",
    )
    staged = stage(current, record(connector="ldap", object_type="person", after=attrs, version=2))
    assert staged.pending == "none"
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and cs.version == 2
    assert len(outputs) == 1
    out = outputs[0]
    assert isinstance(out, MVContribution)
    assert out.connector == "ldap" and out.image == attrs and out.dn == "cn=x,dc=org" and out.cs_version == 2


def test_unchanged_target_disconnector_emits_nothing() -> None:
    attrs = {"employeeNumber": ["E1"]}
    current = cs_object(connector="ldap", object_type="person", attributes=attrs, join_route=ROUTE)
    staged = stage(current, record(connector="ldap", object_type="person", after=attrs, version=2))
    assert staged.pending == "none"
    assert route(RULES, staged, ts_ms=7)[1] == []


@pytest.mark.parametrize("pending", ["stale", "duplicate"])
def test_skipped_emits_nothing(pending: str) -> None:
    current = cs_object(version=1, state=ConnectorState.CONNECTOR, mv_id=MV)
    cs, outputs = route(RULES, Staged(pending, current, current), ts_ms=7)  # type: ignore[arg-type]
    assert cs is current and outputs == []


def test_explicit_disconnector_stays_out() -> None:
    current = cs_object(version=1, state=ConnectorState.EXPLICIT_DISCONNECTOR)
    cs, outputs = route(RULES, stage(current, record(after=hr_attrs(title="X"), version=2)), ts_ms=7)
    assert cs is not None and cs.state == ConnectorState.EXPLICIT_DISCONNECTOR
    assert outputs == []


def test_object_without_inbound_rule_is_only_stored() -> None:
    staged = stage(None, record(object_type="group", after={"cn": ["g"]}))
    cs, outputs = route(RULES, staged, ts_ms=7)
    assert cs is not None and outputs == []


def test_on_link_unlinked_joins_again() -> None:
    cs = cs_object(version=2, state=ConnectorState.CONNECTOR, mv_id=MV, join_route=ROUTE)
    new, outputs = on_link(
        RULES, cs, CSLink(connector="hr", anchor="E1", mv_id=None, outcome="unlinked", ts_ms=9)
    )
    assert new.mv_id is None
    assert len(outputs) == 1 and isinstance(outputs[0], JoinRequest)
    assert outputs[0].route == ROUTE and outputs[0].ts_ms == 9


def test_on_link_joined_emits_nothing() -> None:
    cs = cs_object(version=2, join_route=ROUTE)
    new, outputs = on_link(
        RULES, cs, CSLink(connector="hr", anchor="E1", mv_id=MV, outcome="joined", ts_ms=9)
    )
    assert new.mv_id == MV and new.state == ConnectorState.CONNECTOR
    assert outputs == []


# --------------------------------------------------------------------------- tombstones
def test_a_record_older_than_the_delete_does_not_bring_the_object_back() -> None:
    from engine.staging import tombstone

    gone = cs_object(version=5)
    tomb = tombstone(gone, 6, "hr:E1:6", 9_000)
    assert tomb.attributes == {} and tomb.version == 6 and tomb.deleted_ts_ms == 9_000
    assert stage(None, record(version=4), tomb).pending == "stale"
    assert stage(None, record(op="d", version=6), tomb).pending == "duplicate"
    back = stage(None, record(version=7), tomb)
    assert back.pending == "add" and back.after is not None and back.after.version == 7
    # without a tombstone the same old record is an add (what happened before tombstones existed)
    assert stage(None, record(version=4)).pending == "add"


def test_a_rename_clears_the_transient_mark_of_the_old_dn() -> None:
    current = replace(cs_object(dn="cn=a,o=x"), transient=True)
    staged = stage(current, record(version=2, dn="cn=b,o=x"))
    assert staged.pending == "rename" and staged.after is not None and not staged.after.transient
    same = stage(current, record(version=3, dn="CN=A,O=X", after=hr_attrs(title="CTO")))
    assert same.after is not None and same.after.transient  # same DN: still transient
