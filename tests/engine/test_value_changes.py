"""Value-level change records (``ChangeRecord`` version 2, ``added``/``removed``): a multi-valued
attribute changed value by value, as an LDAP modify, AD DirSync's incremental values or a SCIM PATCH
give it. Staging applies the values to the hologram, and the reference registrations come from the
changed values alone — the same registrations as comparing the whole member lists would give."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from pydantic import ValidationError

from engine.inbound import route
from engine.references import staging_updates
from engine.rules import compile_rules
from engine.staging import apply_values, stage
from schemas import records
from schemas.codec import decode_import, to_json
from schemas.config import IdsyncConfig
from schemas.messages import RefRegister
from schemas.state import ConnectorState, CSObject
from schemas.wire import ChangeRecord, Source

from .refsim import group_dn, ref_config_dict, ref_rules, user_dn

RULES = ref_rules()


def member_change(
    added: list[str] | None = None,
    removed: list[str] | None = None,
    *,
    after: dict[str, list[str]] | None = None,
    changes: list[str] | None = None,
    seq: int = 2,
) -> ChangeRecord:
    return ChangeRecord(
        version=2,
        op="u",
        anchor="staff",
        object_type="group",
        after=after,
        changes=changes if changes is not None else [],
        added={"member": added} if added is not None else None,
        removed={"member": removed} if removed is not None else None,
        source=Source(connector="ad", dn=group_dn("staff"), version=seq, event_id=f"e{seq}", ts_ms=5),
    )


def staff(members: list[str], mv_id: str | None = "G1") -> CSObject:
    return CSObject(
        connector="ad",
        anchor="staff",
        object_type="group",
        dn=group_dn("staff"),
        attributes={"cn": ["staff"], "member": members},
        version=1,
        event_id="e0",
        mv_id=mv_id,
        state=ConnectorState.CONNECTOR if mv_id else ConnectorState.DISCONNECTOR,
    )


# --------------------------------------------------------------------------- the contract
def test_value_changes_need_version_2_op_u_and_changes() -> None:
    src = {"connector": "ad", "version": 1, "event_id": "e", "ts_ms": 1}
    good = {"version": 2, "op": "u", "anchor": "a", "object_type": "group", "changes": [], "source": src}
    records.ChangeRecord.model_validate({**good, "added": {"member": ["x"]}})
    decode_import(to_json(ChangeRecord(**{**good, "source": Source(**src), "added": {"member": ["x"]}})))
    bad = [
        ({"version": 1}, "need version 2"),
        ({"op": "c"}, "for op 'u' only"),
        ({"changes": None}, "need changes"),
        ({"changes": ["member"]}, "given both whole"),
        ({"after": {"member": ["y"]}, "changes": ["member"]}, "given both whole"),
        ({"removed": {"member": ["x"]}}, "both added and removed"),
    ]
    for change, message in bad:
        raw = {**good, "added": {"member": ["x"]}, **change}
        with pytest.raises(ValidationError, match=message):
            records.ChangeRecord.model_validate(raw)
        with pytest.raises(Exception, match=message):  # the mirror refuses it alike, when decoded
            decode_import(json.dumps(raw).encode())


# --------------------------------------------------------------------------- the hologram
def test_apply_values_keeps_order_matches_dns_and_reports_what_changed() -> None:
    have = ["uid=a,ou=p", "UID=B, ou=p", "uid=c,ou=p"]
    values, gained, lost = apply_values(have, ["uid=b,ou=p", "uid=d,ou=p"], ["uid=B,OU=P", "uid=zz"], True)
    assert values == ["uid=a,ou=p", "uid=c,ou=p", "uid=b,ou=p", "uid=d,ou=p"]
    assert (gained, lost) == (["uid=b,ou=p", "uid=d,ou=p"], ["UID=B, ou=p"])
    # Not DN-valued: exact values; a value already there is not added twice, an absent one not removed.
    assert apply_values(["x", "y"], ["y", "Y", "Y"], ["z"], False) == (["x", "y", "Y"], ["Y"], [])


def test_a_member_change_stages_one_value_onto_the_hologram() -> None:
    current = staff([user_dn("a"), user_dn("b")])
    staged = stage(current, member_change([user_dn("c")], [user_dn("A").upper()]), dn_valued={"member"})
    assert staged.pending == "update"
    assert staged.after is not None
    assert staged.after.attributes == {"cn": ["staff"], "member": [user_dn("b"), user_dn("c")]}
    assert staged.changed == {"member"}
    assert staged.values == {"member": ([user_dn("c")], [user_dn("a")])}
    # Values that change nothing (added again, removed already): no update.
    again = stage(staged.after, member_change([user_dn("c")], [user_dn("a")], seq=3), dn_valued={"member"})
    assert (again.pending, again.values, again.changed) == ("none", {}, frozenset())
    # Whole attributes beside the values: both are applied.
    both = stage(
        current,
        member_change([user_dn("c")], after={"cn": ["crew"]}, changes=["cn"]),
        dn_valued={"member"},
    )
    assert both.after is not None and both.after.attributes["cn"] == ["crew"]
    assert both.changed == {"cn", "member"}
    # An object not staged yet: an add of what the record gives.
    new = stage(None, member_change([user_dn("c"), user_dn("c")], [user_dn("a")]), dn_valued={"member"})
    assert new.pending == "add" and new.after is not None
    assert new.after.attributes == {"member": [user_dn("c")]}
    # An older record is stale, value-level or not: its values are not applied.
    assert stage(staged.after, member_change([user_dn("z")], seq=1)).pending == "stale"


# --------------------------------------------------------------------------- the registrations
def _ops(updates: list[object]) -> Counter[tuple[str, str | None, str]]:
    """Registrations as (op, attribute, key), however they were split into messages."""
    out: Counter[tuple[str, str | None, str]] = Counter()
    for u in updates:
        if not isinstance(u, RefRegister):
            continue  # the object's claim on its own DN (RefUpdate), not a registration
        for key in u.keys:
            out[(u.op, u.attribute, key)] += 1
    return out


NAMES = st.sampled_from([f"u{i}" for i in range(12)])
SPELLINGS = st.sampled_from([str.lower, str.upper, lambda s: s.replace(",", ", ")])


@st.composite
def dns(draw: st.DrawFn) -> str:
    return draw(SPELLINGS)(user_dn(draw(NAMES)))


@settings(max_examples=300, deadline=None)
@given(
    members=st.lists(dns(), max_size=10),
    added=st.lists(dns(), max_size=4),
    removed=st.lists(dns(), max_size=4),
)
def test_value_registrations_are_those_of_comparing_the_whole_lists(
    members: list[str], added: list[str], removed: list[str]
) -> None:
    """Whatever the spellings, duplicates and values that change nothing: registering from the changed
    values gives what comparing the group's whole member lists before and after gives."""
    removed = [r for r in removed if r not in added]
    current = staff(members)
    staged = stage(current, member_change(added, removed), dn_valued={"member"})
    assert staged.values is not None and staged.after is not None
    by_values = staging_updates(RULES, current, staged.after, 7, values=staged.values)
    by_lists = staging_updates(RULES, current, staged.after, 7)
    assert _ops(by_values) == _ops(by_lists)


def test_the_values_are_not_enough_when_the_object_changes_metaverse_objects() -> None:
    """A change that also joins the object (another mv_id) registers everything, as before."""
    current = staff([user_dn("a")], mv_id=None)
    staged = stage(current, member_change([user_dn("b")]), dn_valued={"member"})
    assert staged.after is not None
    joined = replace(staged.after, mv_id="G1")
    assert _ops(staging_updates(RULES, current, joined, 7, values=staged.values)) == Counter(
        {("refer", "member", user_dn("a")): 1, ("refer", "member", user_dn("b")): 1}
    )


# --------------------------------------------------------------------------- the contribution
def test_a_member_change_sends_no_contribution_only_its_registrations() -> None:
    """The registrations carry a member change; a contribution would repeat the last one and cost the
    metaverse object a sync of all its members. Anything else that changes still contributes."""
    current = staff([user_dn("a")])
    staged = stage(current, member_change([user_dn("b")]), dn_valued={"member"})
    cs, outputs = route(RULES, staged, 7)
    assert cs is staged.after and outputs == []
    assert [u.op for u in staging_updates(RULES, current, cs, 7, values=staged.values)] == ["refer"]
    renamed = stage(current, member_change([user_dn("b")], after={"cn": ["crew"]}, changes=["cn"]))
    assert [type(o).__name__ for o in route(RULES, renamed, 7)[1]] == ["MVContribution"]
    # A connector filter that reads the members decides with them.
    filtered = ref_config_dict()
    filtered["inbound"][1]["filter"] = [[{"attribute": "member", "operator": "isnull"}]]
    rules = compile_rules(IdsyncConfig.model_validate(filtered))
    assert [type(o).__name__ for o in route(rules, staged, 7)[1]] == ["MVContribution"]
    # A target's objects contribute their image (it confirms exports).
    targeted = ref_config_dict(targets=True)
    targeted["outbound"].append({**targeted["outbound"][1], "connector": "ad"})
    rules = compile_rules(IdsyncConfig.model_validate(targeted))
    assert [type(o).__name__ for o in route(rules, staged, 7)[1]] == ["MVContribution"]
