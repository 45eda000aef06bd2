"""engine.metaverse: precedence, provisioning, export confirmation, deprovisioning, deletion rule."""

from __future__ import annotations

from msgspec.structs import replace

from engine.join import join_step, mv_id_for
from engine.metaverse import metaverse_step
from engine.precedence import Contributor, resolve
from engine.provisioning import moved_dn
from schemas.messages import CSLink, ExportResult, JoinIndexUpdate, JoinRequest, MVContribution
from schemas.state import ConnectorLink, MVObject
from schemas.wire import AttrChange, ErrorRecord, ExportConfirmed, MVChange, PendingExport

from .helpers import (
    DISABLED,
    OBJECT_CLASSES,
    PEOPLE,
    applied,
    badge_contribution,
    demo_config_dict,
    demo_rules,
    disconnect,
    hr_attrs,
    hr_contribution,
    image_of,
    ldap_contribution,
    of_type,
)

RULES = demo_rules()
ROUTE = "person|employeeId=E1"
MV_ID = mv_id_for(ROUTE, 0)
DN = f"cn=Gabriel White (gwhite),{PEOPLE}"
DISABLED_DN = f"cn=Gabriel White (gwhite),{DISABLED}"


def provisioned() -> tuple[MVObject, PendingExport]:
    """hr projects the person: the metaverse object and its provisioning add."""
    mv, outputs = metaverse_step(RULES, None, hr_contribution(RULES, MV_ID, projected=True))
    assert mv is not None
    [add] = of_type(outputs, PendingExport)
    return mv, add


def settled() -> MVObject:
    """Provisioned, add applied, and the directory entry imported back (joined, everything confirmed)."""
    mv, add = provisioned()
    mv2, outputs = metaverse_step(RULES, mv, applied(add))
    assert mv2 is not None and outputs == []
    mv3, outputs = metaverse_step(RULES, mv2, ldap_contribution(MV_ID, image_of(add), DN))
    assert mv3 is not None
    # The join changes no value; the change feed still learns the new connector list.
    [change] = of_type(outputs, MVChange)
    assert change.changed == [] and change.connectors == ["hr", "ldap"]
    assert [type(o) for o in outputs if not isinstance(o, MVChange)] == [ExportConfirmed]
    return mv3


def step(mv: MVObject | None, msg: object) -> tuple[MVObject | None, list[object]]:
    new, outputs = metaverse_step(RULES, mv, msg)  # type: ignore[arg-type]
    return new, list(outputs)


# --------------------------------------------------------------------------- projection, provisioning
def test_projection_creates_mv_object_and_provisions() -> None:
    mv, outputs = step(None, hr_contribution(RULES, MV_ID, projected=True))
    assert mv is not None
    assert mv.mv_id == MV_ID and mv.object_type == "person" and not mv.deleted
    assert mv.attributes["displayName"] == ["Gabriel White"]
    assert mv.attributes["employeeId"] == ["E1"]
    assert set(mv.contributors.values()) == {"hr"}
    assert set(mv.links) == {"hr"} and mv.links["hr"].anchor == "E1"
    assert mv.routes == [ROUTE]
    assert mv.version == 1

    [change] = of_type(outputs, MVChange)
    assert change.op == "create"
    assert change.mv_id == MV_ID
    assert change.attributes == mv.attributes
    assert change.changed == sorted(mv.attributes)
    assert change.connectors == ["hr"]
    assert change.cause == "hr"

    [add] = of_type(outputs, PendingExport)
    assert add.op == "add"
    assert add.connector == "ldap" and add.object_type == "person" and add.mv_id == MV_ID
    assert add.seq == 1 and add.export_id == f"{MV_ID}:ldap:1"
    assert add.dn == DN and add.new_dn is None
    assert add.attributes == {
        "objectClass": AttrChange(op="replace", values=OBJECT_CLASSES),
        "cn": AttrChange(op="replace", values=["Gabriel White (gwhite)"]),
        "sn": AttrChange(op="replace", values=["White"]),
        "givenName": AttrChange(op="replace", values=["Gabriel"]),
        "displayName": AttrChange(op="replace", values=["Gabriel White"]),
        "mail": AttrChange(op="replace", values=["gabriel.white@example.org"]),
        "uid": AttrChange(op="replace", values=["gwhite"]),
        "employeeNumber": AttrChange(op="replace", values=["E1"]),
        "departmentNumber": AttrChange(op="replace", values=["Engineering"]),
        "title": AttrChange(op="replace", values=["Senior QA Engineer"]),
        "l": AttrChange(op="replace", values=["London"]),
    }
    assert mv.targets["ldap"].status == "pending-add"
    assert mv.targets["ldap"].pending_dn == DN
    assert of_type(outputs, ErrorRecord) == []


def test_dn_escapes_comma_in_value() -> None:
    _mv, outputs = step(None, hr_contribution(RULES, MV_ID, hr_attrs(last_name="White, Jr"), projected=True))
    [add] = of_type(outputs, PendingExport)
    assert add.dn == rf"cn=Gabriel White\, Jr (gwhite),{PEOPLE}"
    # the attribute values are not escaped
    assert add.attributes["cn"].values == ["Gabriel White, Jr (gwhite)"]
    assert add.attributes["sn"].values == ["White, Jr"]


def test_null_attribute_is_left_out_of_add() -> None:
    _mv, outputs = step(None, hr_contribution(RULES, MV_ID, hr_attrs(email=None), projected=True))
    [add] = of_type(outputs, PendingExport)
    assert "mail" not in add.attributes


def test_missing_dn_attribute_is_an_error_not_an_add() -> None:
    mv, outputs = step(None, hr_contribution(RULES, MV_ID, hr_attrs(uid=None), projected=True))
    assert mv is not None
    assert of_type(outputs, PendingExport) == []
    [err] = of_type(outputs, ErrorRecord)
    assert err.error_type == "provisioning-missing-dn-attribute" and err.connector == "ldap"


def test_out_of_scope_person_is_not_provisioned() -> None:
    mv, outputs = step(None, hr_contribution(RULES, MV_ID, hr_attrs(status="terminated"), projected=True))
    assert mv is not None
    assert [type(o) for o in outputs] == [MVChange]


def test_second_identical_contribution_gives_zero_exports() -> None:
    mv, _add = provisioned()
    again = hr_contribution(RULES, MV_ID, version=2)
    mv2, outputs = step(mv, again)
    assert outputs == []
    assert mv2 is not None and mv2.version == mv.version
    assert mv2.targets["ldap"].seq == 1


def test_second_identical_contribution_after_confirmation_gives_zero_exports() -> None:
    mv = settled()
    mv2, outputs = step(mv, hr_contribution(RULES, MV_ID, version=2))
    assert outputs == []
    mv3, outputs = step(mv2, ldap_contribution(MV_ID, image_of_settled(), DN, version=2))
    assert outputs == []
    assert mv3 is not None and mv3.targets["ldap"].seq == 1


def image_of_settled() -> dict[str, list[str]]:
    _mv, add = provisioned()
    return image_of(add)


def test_contribution_to_unknown_mv_is_unlinked() -> None:
    msg = hr_contribution(RULES, MV_ID)  # not projected, and the object is gone
    mv, outputs = step(None, msg)
    assert mv is None
    assert outputs == [
        CSLink(connector="hr", anchor="E1", mv_id=None, outcome="unlinked", ts_ms=msg.ts_ms),
        JoinIndexUpdate(route=ROUTE, mv_id=MV_ID, connector="hr", anchor="E1", ts_ms=msg.ts_ms),
    ]


def test_second_object_of_same_connector_is_ambiguous() -> None:
    mv, _ = provisioned()
    msg = hr_contribution(RULES, MV_ID, anchor="E1-dup", attrs=hr_attrs(title="Other"))
    mv2, outputs = step(mv, msg)
    assert mv2 is not None
    assert mv2.links["hr"].anchor == "E1"
    assert mv2.attributes == mv.attributes
    [link] = of_type(outputs, CSLink)
    assert link.outcome == "ambiguous" and link.anchor == "E1-dup"
    [err] = of_type(outputs, ErrorRecord)
    assert err.error_type == "ambiguous-join"
    assert of_type(outputs, PendingExport) == []


# --------------------------------------------------------------------------- precedence
def test_precedence_lower_rank_wins() -> None:
    mv, _ = provisioned()
    # badge is newer but ranks lower (50 vs 10)
    mv2, outputs = step(mv, badge_contribution(MV_ID, {"mail": ["badge@example.org"]}, ts_ms=50_000))
    assert mv2 is not None
    assert mv2.attributes["mail"] == ["gabriel.white@example.org"]
    assert mv2.contributors["mail"] == "hr"
    assert of_type(outputs, PendingExport) == []
    # No value changed; only the connector list (badge joined) is news for the change feed.
    [change] = of_type(outputs, MVChange)
    assert change.changed == [] and change.connectors == ["badge", "hr"]
    mv3, outputs = step(mv2, badge_contribution(MV_ID, {"mail": ["other@example.org"]}, ts_ms=60_000))
    assert mv3 is not None and mv3.attributes == mv2.attributes
    assert of_type(outputs, MVChange) == []


def test_null_from_higher_rank_falls_back_to_lower_rank() -> None:
    mv, _ = provisioned()
    mv, _ = step(mv, badge_contribution(MV_ID, {"mail": ["badge@example.org"], "location": ["Leeds"]}))
    assert mv is not None
    mv2, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(email=None), version=2))
    assert mv2 is not None
    assert mv2.links["hr"].flows["mail"] == []  # hr contributes a null
    assert mv2.attributes["mail"] == ["badge@example.org"]
    assert mv2.contributors["mail"] == "badge"
    assert mv2.attributes["location"] == ["London"]  # hr still wins where it has a value
    assert mv2.contributors["location"] == "hr"
    [change] = of_type(outputs, MVChange)
    assert change.op == "update" and change.changed == ["mail"]
    [export] = of_type(outputs, PendingExport)
    assert export.attributes["mail"].values == ["badge@example.org"]


def test_equal_ranks_latest_change_wins() -> None:
    links = {
        "a": ConnectorLink(anchor="1", flows={"x": ["old"]}, ts_ms=1),
        "b": ConnectorLink(anchor="2", flows={"x": ["new"]}, ts_ms=2),
    }
    contributors = {"a": Contributor(5, frozenset()), "b": Contributor(5, frozenset())}
    attrs, winners = resolve(links, contributors, {})
    assert attrs == {"x": ["new"]} and winners == {"x": "b"}
    links["a"] = ConnectorLink(anchor="1", flows={"x": ["newest"]}, ts_ms=3)
    attrs, winners = resolve(links, contributors, {})
    assert attrs == {"x": ["newest"]} and winners == {"x": "a"}


def test_initial_only_flow_does_not_overwrite() -> None:
    links = {"a": ConnectorLink(anchor="1", flows={"x": ["second"]}, ts_ms=1)}
    contributors = {"a": Contributor(5, frozenset({"x"}))}
    assert resolve(links, contributors, {})[0] == {"x": ["second"]}
    assert resolve(links, contributors, {"x": ["first"]})[0] == {"x": ["first"]}


def test_all_null_attribute_is_absent() -> None:
    links = {"a": ConnectorLink(anchor="1", flows={"x": []}, ts_ms=1)}
    attrs, winners = resolve(links, {"a": Contributor(1, frozenset())}, {"x": ["gone"]})
    assert attrs == {} and winners == {}


def test_stale_contribution_is_ignored() -> None:
    mv, _ = provisioned()
    mv, _ = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(title="Lead"), version=3))
    assert mv is not None and mv.attributes["title"] == ["Lead"]
    mv2, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(title="Intern"), version=2))
    assert outputs == []
    assert mv2 is not None
    assert mv2.attributes["title"] == ["Lead"]
    assert mv2.links["hr"].cs_version == 3


# --------------------------------------------------------------------------- export results, confirmation
def test_export_result_marks_ledger_applied() -> None:
    mv, add = provisioned()
    mv2, outputs = step(mv, applied(add, anchor="uuid-1", ts_ms=3_000))
    assert outputs == []
    assert mv2 is not None
    target = mv2.targets["ldap"]
    assert target.status == "exists"
    assert target.anchor == "uuid-1"
    assert target.dn == DN
    assert target.ledger and all(e.applied and e.applied_ts_ms == 3_000 for e in target.ledger.values())
    # the input object is not mutated
    assert mv.targets["ldap"].status == "pending-add"


def test_an_image_read_before_the_export_was_applied_does_not_fail_it() -> None:
    """An import ran while the export worker drained a backlog: it read the entry (old title) before the
    export (applied at 3,000) changed it, and its image arrived after the export's result."""
    mv, add = provisioned()
    mv, _ = step(mv, applied(add, ts_ms=3_000))
    image = image_of(add)
    image["title"] = ["Wrong"]
    read_early = replace(ldap_contribution(MV_ID, image, DN), source_ts_ms=2_000)
    mv2, outputs = step(mv, read_early)
    assert mv2 is not None
    assert of_type(outputs, ErrorRecord) == [] and of_type(outputs, PendingExport) == []
    assert mv2.targets["ldap"].ledger["title"].applied  # still waiting for an import that came after it
    # The next import, read after the export, decides: the value is not there.
    read_late = replace(ldap_contribution(MV_ID, image, DN, version=2, ts_ms=6_000), source_ts_ms=4_000)
    _, outputs = step(mv2, read_late)
    [err] = of_type(outputs, ErrorRecord)
    assert err.error_type == "exported-change-not-reimported"
    # An early image that does show the exported values confirms them all the same.
    _, outputs = step(mv, replace(ldap_contribution(MV_ID, image_of(add), DN), source_ts_ms=2_000))
    assert [o.export_id for o in of_type(outputs, ExportConfirmed)] == [add.export_id]


def test_import_equal_to_exported_values_confirms() -> None:
    mv, add = provisioned()
    mv, _ = step(mv, applied(add))
    # a directory answers attribute names in its own case
    image = {k.lower(): v for k, v in image_of(add).items()}
    mv2, outputs = step(mv, ldap_contribution(MV_ID, image, DN.upper()))
    confirmations = [o for o in outputs if not isinstance(o, MVChange)]
    confirmed = ExportConfirmed(connector="ldap", mv_id=MV_ID, export_id=add.export_id, ts_ms=5_000)
    assert confirmations == [confirmed]
    assert mv2 is not None
    target = mv2.targets["ldap"]
    assert target.ledger == {}
    assert target.pending_dn is None
    assert target.status == "exists"
    assert set(mv2.links) == {"hr", "ldap"}


def test_import_differing_from_export_is_reported_and_exported_again() -> None:
    mv, add = provisioned()
    mv, _ = step(mv, applied(add))
    image = image_of(add)
    image["title"] = ["Wrong"]
    mv2, outputs = step(mv, ldap_contribution(MV_ID, image, DN))
    assert mv2 is not None
    [err] = of_type(outputs, ErrorRecord)
    assert err.error_type == "exported-change-not-reimported"
    assert err.connector == "ldap" and err.mv_id == MV_ID
    assert "Senior QA Engineer" in err.message and "Wrong" in err.message
    [export] = of_type(outputs, PendingExport)
    assert export.op == "update"
    assert export.dn == DN
    assert export.attributes == {"title": AttrChange(op="replace", values=["Senior QA Engineer"])}
    assert export.old == {"title": ["Wrong"]}
    assert export.seq == 2
    assert set(mv2.targets["ldap"].ledger) == {"title"}


def test_import_before_export_applied_is_not_a_divergence() -> None:
    mv, _add = provisioned()
    mv2, outputs = step(mv, ldap_contribution(MV_ID, {"cn": ["something else"]}, DN))
    assert of_type(outputs, ErrorRecord) == []
    assert of_type(outputs, PendingExport) == []
    assert of_type(outputs, ExportConfirmed) == []
    assert mv2 is not None and mv2.targets["ldap"].ledger  # still waiting for the export


def failed_add(add: PendingExport, error_type: str, message: str) -> ExportResult:
    return ExportResult(
        mv_id=MV_ID,
        connector="ldap",
        export_id=add.export_id,
        seq=add.seq,
        status="failed",
        op="add",
        error_type=error_type,
        message=message,
        ts_ms=2_000,
    )


def test_failed_add_is_provisioned_again_at_next_change() -> None:
    mv, add = provisioned()
    mv, outputs = step(mv, failed_add(add, "cd-connection-failure", "down"))
    assert outputs == []
    assert mv is not None
    assert mv.targets["ldap"].status == "none"
    assert mv.targets["ldap"].error == "cd-connection-failure: down"
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(title="Lead"), version=2))
    [again] = of_type(outputs, PendingExport)
    assert again.op == "add" and again.seq == 2
    assert again.attributes["title"].values == ["Lead"]


def test_failed_add_of_an_object_an_import_has_joined_meanwhile_updates_it_instead() -> None:
    """The add failed (e.g. the entry was there already), but an import showed the object first: it exists,
    so the next change updates it against its image — a second add would leave the image's values that the
    metaverse no longer has (here mail) in place, and the plan after it would export them."""
    mv, add = provisioned()
    mv, _ = step(mv, ldap_contribution(MV_ID, image_of(add), DN))
    assert mv is not None and mv.targets["ldap"].status == "exists"
    mv, outputs = step(mv, failed_add(add, "cd-already-exists", "entry exists"))
    assert outputs == []
    assert mv is not None and mv.targets["ldap"].status == "exists"
    attrs = hr_attrs()
    del attrs["email"]
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, attrs, version=2))
    [update] = of_type(outputs, PendingExport)
    assert update.op == "update"
    assert update.attributes["mail"] == AttrChange(op="replace", values=[])
    # Nothing changed: nothing more to export (the plan is idempotent).
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, attrs, version=3))
    assert of_type(outputs, PendingExport) == []


def test_export_result_for_unknown_object_is_ignored() -> None:
    _mv, add = provisioned()
    assert step(None, applied(add)) == (None, [])


# --------------------------------------------------------------------------- rename, disable, re-enable
def test_surname_change_renames() -> None:
    mv = settled()
    mv2, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(last_name="Black"), version=2))
    assert mv2 is not None
    [change] = of_type(outputs, MVChange)
    assert change.op == "update" and change.changed == ["displayName", "sn"]
    [export] = of_type(outputs, PendingExport)
    assert export.op == "rename"
    assert export.dn == DN
    assert export.new_dn == f"cn=Gabriel Black (gwhite),{PEOPLE}"
    assert export.anchor == "uuid-1"
    assert export.attributes == {
        "cn": AttrChange(op="replace", values=["Gabriel Black (gwhite)"]),
        "displayName": AttrChange(op="replace", values=["Gabriel Black"]),
        "sn": AttrChange(op="replace", values=["Black"]),
    }
    assert export.old["sn"] == ["White"]
    assert mv2.targets["ldap"].pending_dn == export.new_dn


def test_rename_while_add_is_pending_starts_from_pending_dn() -> None:
    mv, _add = provisioned()
    _mv2, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(last_name="Black"), version=2))
    [export] = of_type(outputs, PendingExport)
    assert export.op == "rename"
    assert export.dn == DN
    assert export.new_dn == f"cn=Gabriel Black (gwhite),{PEOPLE}"


def test_confirmed_rename_then_unchanged_import_gives_nothing() -> None:
    mv = settled()
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(last_name="Black"), version=2))
    [rename] = of_type(outputs, PendingExport)
    mv, _ = step(mv, applied(rename))
    assert mv is not None and mv.targets["ldap"].dn == rename.new_dn
    image = image_of_settled()
    image.update(cn=["Gabriel Black (gwhite)"], displayName=["Gabriel Black"], sn=["Black"])
    assert rename.new_dn is not None
    mv, outputs = step(mv, ldap_contribution(MV_ID, image, rename.new_dn, version=2))
    assert outputs == [
        ExportConfirmed(connector="ldap", mv_id=MV_ID, export_id=rename.export_id, ts_ms=5_000)
    ]
    assert mv is not None and mv.targets["ldap"].pending_dn is None


def test_out_of_scope_is_disabled_and_back_in_scope_is_moved_back() -> None:
    mv = settled()
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(status="terminated"), version=2))
    assert mv is not None
    [disable] = of_type(outputs, PendingExport)
    assert disable.op == "rename"
    assert disable.dn == DN
    assert disable.new_dn == DISABLED_DN
    assert disable.attributes == {"employeeType": AttrChange(op="replace", values=["disabled"])}
    assert disable.old == {"employeeType": []}
    assert mv.targets["ldap"].disabled is True
    assert mv.targets["ldap"].status == "exists"  # disabled, not deleted

    # still out of scope: other changes do not reach the disabled account
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(status="terminated", title="X"), version=3))
    assert mv is not None
    assert of_type(outputs, PendingExport) == []

    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(status="active", title="X"), version=4))
    assert mv is not None
    [enable] = of_type(outputs, PendingExport)
    assert enable.op == "rename"
    assert enable.dn == DISABLED_DN
    assert enable.new_dn == DN
    assert enable.attributes["employeeType"] == AttrChange(op="replace", values=[])
    assert enable.attributes["title"] == AttrChange(op="replace", values=["X"])
    assert mv.targets["ldap"].disabled is False


def test_disable_confirmed_then_back_in_scope() -> None:
    mv = settled()
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(status="terminated"), version=2))
    [disable] = of_type(outputs, PendingExport)
    mv, _ = step(mv, applied(disable))
    image = image_of_settled()
    image["employeeType"] = ["disabled"]
    mv, outputs = step(mv, ldap_contribution(MV_ID, image, DISABLED_DN, version=2))
    assert outputs == [
        ExportConfirmed(connector="ldap", mv_id=MV_ID, export_id=disable.export_id, ts_ms=5_000)
    ]
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(status="active"), version=3))
    [enable] = of_type(outputs, PendingExport)
    assert enable.op == "rename"
    assert enable.dn == DISABLED_DN and enable.new_dn == DN
    assert enable.attributes == {"employeeType": AttrChange(op="replace", values=[])}
    assert enable.old == {"employeeType": ["disabled"]}


def test_moved_dn_keeps_escaped_trailing_space() -> None:
    assert moved_dn(r"uid=gw\ ,ou=people,dc=example,dc=org", DISABLED) == rf"uid=gw\ ,{DISABLED}"


# --------------------------------------------------------------------------- deletion rule
def test_source_disconnect_deletes_and_deprovisions() -> None:
    mv = settled()
    mv2, outputs = step(mv, disconnect(MV_ID, "hr", "E1", version=1, ts_ms=9_000))
    assert mv2 is None  # no link left, nothing to wait for: dropped from the table
    assert outputs[0] == JoinIndexUpdate(route=ROUTE, mv_id=MV_ID, connector="hr", anchor="E1", ts_ms=9_000)
    [change] = of_type(outputs, MVChange)
    assert change.op == "delete" and change.attributes == {} and change.connectors == []
    assert change.cause == "hr"
    assert change.changed == sorted(mv.attributes)
    [deprovision] = of_type(outputs, PendingExport)
    assert deprovision.op == "rename" and deprovision.new_dn == DISABLED_DN
    assert deprovision.attributes == {"employeeType": AttrChange(op="replace", values=["disabled"])}
    deleted = [o for o in of_type(outputs, JoinIndexUpdate) if o.mv_deleted]
    assert deleted == [JoinIndexUpdate(route=ROUTE, mv_id=MV_ID, mv_deleted=True, ts_ms=9_000)]
    assert of_type(outputs, CSLink) == [
        CSLink(connector="ldap", anchor="uuid-1", mv_id=None, outcome="unlinked", ts_ms=9_000)
    ]


def test_disconnect_of_non_source_keeps_object_and_reprovisions() -> None:
    mv = settled()
    mv2, outputs = step(mv, disconnect(MV_ID, "ldap", "uuid-1"))
    assert mv2 is not None and not mv2.deleted
    assert set(mv2.links) == {"hr"}
    [change] = of_type(outputs, MVChange)
    assert change.changed == [] and change.connectors == ["hr"]
    [add] = of_type(outputs, PendingExport)
    assert add.op == "add" and add.dn == DN and add.seq == 2
    assert of_type(outputs, JoinIndexUpdate) == [
        JoinIndexUpdate(route=ROUTE, mv_id=MV_ID, connector="ldap", anchor="uuid-1", ts_ms=9_000)
    ]


def test_stale_or_foreign_disconnect_is_ignored() -> None:
    mv = settled()
    mv, _ = step(mv, hr_contribution(RULES, MV_ID, version=3))
    assert step(mv, disconnect(MV_ID, "hr", "E1", version=2))[1] == []
    assert step(mv, disconnect(MV_ID, "hr", "someone-else", version=9))[1] == []
    assert step(None, disconnect(MV_ID)) == (None, [])


def test_delete_deprovisioning_keeps_tombstone_until_confirmed() -> None:
    cfg = demo_config_dict()
    cfg["outbound"][0]["deprovision"] = {"action": "delete"}
    rules = demo_rules(outbound=cfg["outbound"])
    mv, outputs = metaverse_step(rules, None, hr_contribution(rules, MV_ID, projected=True))
    [add] = of_type(outputs, PendingExport)
    mv, _ = metaverse_step(rules, mv, applied(add))
    mv, _ = metaverse_step(rules, mv, ldap_contribution(MV_ID, image_of(add), DN))
    mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1"))
    assert mv is not None and mv.deleted  # tombstone: the delete is not confirmed yet
    assert set(mv.links) == {"ldap"}
    [delete] = of_type(outputs, PendingExport)
    assert delete.op == "delete" and delete.dn == DN
    assert of_type(outputs, CSLink) == []
    # a late hr contribution to the tombstone joins again instead of reviving it
    mv, outputs = metaverse_step(rules, mv, hr_contribution(rules, MV_ID, version=2))
    assert mv is not None and mv.deleted
    assert [type(o) for o in outputs] == [CSLink, JoinIndexUpdate]
    mv, _ = metaverse_step(rules, mv, applied(delete))
    mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "ldap", "uuid-1"))
    assert mv is None
    assert ExportConfirmed(connector="ldap", mv_id=MV_ID, export_id=delete.export_id, ts_ms=9_000) in outputs


def test_last_connector_rule_ignores_export_targets() -> None:
    rules = demo_rules(metaverse={"person": {"deletion": {"rule": "last-connector"}}})
    mv, _ = metaverse_step(rules, None, hr_contribution(rules, MV_ID, projected=True))
    mv, _ = metaverse_step(rules, mv, badge_contribution(MV_ID, {"mail": ["b@example.org"]}))
    mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1"))
    assert mv is not None and not mv.deleted  # badge is still there
    mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "badge", "B1"))
    assert [o.op for o in of_type(outputs, MVChange)] == ["delete"]


# --------------------------------------------------------------------------- join index + metaverse together
def _ldap_request(dn: str) -> JoinRequest:
    image = {"employeeNumber": ["E1"], "cn": ["Gabriel White"], "uid": ["gwhite"]}
    return JoinRequest(
        route=ROUTE,
        mv_type="person",
        connector="ldap",
        anchor="uuid-legacy",
        dn=dn,
        cs_version=1,
        event_id="ldap:uuid-legacy:1",
        project=False,
        flows={},
        image=image,
        ts_ms=500,
    )


def _hr_request() -> JoinRequest:
    c = hr_contribution(RULES, MV_ID, projected=True)
    return JoinRequest(
        route=ROUTE,
        mv_type="person",
        connector="hr",
        anchor="E1",
        dn=None,
        cs_version=1,
        event_id=c.event_id,
        project=True,
        flows=c.flows,
        image=None,
        ts_ms=1_000,
    )


def _run_join_then_metaverse(requests: list[JoinRequest]) -> tuple[MVObject | None, list[object]]:
    entry = None
    contributions: list[MVContribution] = []
    for r in requests:
        entry, outputs = join_step(entry, r)
        contributions += [o for o in outputs if isinstance(o, MVContribution)]
    mv: MVObject | None = None
    produced: list[object] = []
    for c in contributions:
        mv, outputs = step(mv, c)
        produced += outputs
    return mv, produced


def test_projection_then_existing_entry_joins_and_is_updated() -> None:
    # hr first: provisioned; the existing entry (at the template DN) is then imported and joins.
    mv, outputs = _run_join_then_metaverse([_hr_request(), _ldap_request(DN)])
    assert mv is not None
    assert set(mv.links) == {"hr", "ldap"}
    assert mv.targets["ldap"].status == "exists"
    assert mv.targets["ldap"].anchor == "uuid-legacy"
    # nothing was joining when hr projected: provisioned once, the add then converts at the directory
    assert [e.op for e in of_type(outputs, PendingExport)] == ["add"]


def test_existing_entry_waiting_in_index_is_not_provisioned_again() -> None:
    # ldap first: the existing entry waits; hr projects and releases it in the same join decision.
    legacy_dn = "uid=gwhite,ou=legacy,dc=example,dc=org"
    entry, _ = join_step(None, _ldap_request(legacy_dn))
    entry, join_outputs = join_step(entry, _hr_request())
    contribs = [o for o in join_outputs if isinstance(o, MVContribution)]
    assert [(c.connector, c.projected, c.joining) for c in contribs] == [
        ("hr", True, ["ldap"]),
        ("ldap", False, []),
    ]
    mv, outputs = step(None, contribs[0])
    assert mv is not None
    assert mv.targets["ldap"].status == "joining"
    assert of_type(outputs, PendingExport) == []  # no add while the existing entry is joining
    mv, outputs = step(mv, contribs[1])
    assert mv is not None
    assert set(mv.links) == {"hr", "ldap"}
    target = mv.targets["ldap"]
    assert target.status == "exists" and target.anchor == "uuid-legacy"
    # the existing entry is brought to the template instead: moved to its DN and updated
    [export] = of_type(outputs, PendingExport)
    assert export.op == "rename"
    assert export.anchor == "uuid-legacy"
    assert export.dn == legacy_dn and export.new_dn == DN
    assert export.attributes["mail"].values == ["gabriel.white@example.org"]
    assert "uid" not in export.attributes  # already right


def test_joining_non_target_connector_does_not_block_provisioning() -> None:
    msg = replace(hr_contribution(RULES, MV_ID, projected=True), joining=["badge"])
    mv, outputs = step(None, msg)
    assert mv is not None
    [add] = of_type(outputs, PendingExport)
    assert add.op == "add"


# --------------------------------------------------------------------------- confirmation by the last import
def test_export_applied_already_shown_by_last_import_is_confirmed_at_once() -> None:
    mv = settled()
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(title="Lead"), version=2))
    [update] = of_type(outputs, PendingExport)
    assert update.op == "update" and update.attributes == {"title": AttrChange(op="replace", values=["Lead"])}
    # someone set the value in the directory before the export ran; the import shows it
    image = image_of_settled()
    image["title"] = ["Lead"]
    mv, outputs = step(mv, ldap_contribution(MV_ID, image, DN, version=2))
    assert outputs == []  # not applied yet: neither confirmed nor refuted, nothing exported again
    mv, outputs = step(mv, applied(update, ts_ms=6_000))
    assert outputs == [
        ExportConfirmed(connector="ldap", mv_id=MV_ID, export_id=update.export_id, ts_ms=6_000)
    ]
    assert mv is not None and mv.targets["ldap"].ledger == {}


def test_export_applied_not_shown_by_last_import_waits_for_next_import() -> None:
    mv = settled()
    mv, outputs = step(mv, hr_contribution(RULES, MV_ID, hr_attrs(title="Lead"), version=2))
    [update] = of_type(outputs, PendingExport)
    mv, outputs = step(mv, applied(update))
    assert outputs == []  # the last import is older than the export: no verdict yet
    assert mv is not None
    entry = mv.targets["ldap"].ledger["title"]
    assert entry.applied and entry.values == ["Lead"]
    image = image_of_settled()
    image["title"] = ["Lead"]
    mv, outputs = step(mv, ldap_contribution(MV_ID, image, DN, version=2))
    assert outputs == [
        ExportConfirmed(connector="ldap", mv_id=MV_ID, export_id=update.export_id, ts_ms=5_000)
    ]


def test_disconnect_actions_leave_the_target_object_as_a_disconnector_or_an_explicit_one() -> None:

    for action, outcome in (
        ("disconnect", "disconnected"),
        ("explicit-disconnect", "explicitly-disconnected"),
    ):
        cfg = demo_config_dict()
        cfg["outbound"][0]["deprovision"] = {"action": action}
        rules = demo_rules(outbound=cfg["outbound"])
        mv = settled()
        mv, outputs = metaverse_step(
            rules, mv, hr_contribution(rules, MV_ID, hr_attrs(status="terminated"), version=2)
        )
        assert mv is not None and "ldap" not in mv.links
        assert of_type(outputs, PendingExport) == []  # the directory entry is left alone
        [link] = of_type(outputs, CSLink)
        assert (link.connector, link.anchor, link.mv_id, link.outcome) == ("ldap", "uuid-1", None, outcome)
        assert mv.targets["ldap"].status == "disconnected"
