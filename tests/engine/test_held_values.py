"""A large group's members held apart from the connector-space object, one state key per member
(``engine.staging``: ``split_object``, ``hydrate``, ``stage_by_value``): a member added or removed by a
value-level change record reads and writes its own key, and gives what staging the whole object gives."""

from __future__ import annotations

from collections.abc import Collection

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from engine.inbound import route, routes_by_value
from engine.references import staging_updates
from engine.rules import compile_rules
from engine.staging import HeldAttrs, apply_held, hydrate, split_object, stage, stage_by_value
from engine.values import dn_key
from schemas.config import IdsyncConfig
from schemas.state import CSObject
from schemas.wire import Source

from .refsim import Sim, group_dn, ref_config_dict, ref_rules, user_dn
from .test_value_changes import member_change, staff

RULES = ref_rules()
MIN = 4


class Held:
    def __init__(self, held: HeldAttrs) -> None:
        self.held = held
        self.looked_up: list[str] = []

    def lookup(self, attribute: str, keys: Collection[str]) -> dict[str, str]:
        self.looked_up += keys
        mine = self.held.get(attribute, {})
        return {k: mine[k] for k in keys if k in mine}

    def values(self, attribute: str) -> dict[str, str]:
        raise AssertionError("a change by value does not read the group whole")


def member_keys(cs: CSObject) -> set[str]:
    return {dn_key(v) for v in cs.attributes.get("member", [])}


def test_splittable_attributes_are_multi_valued_references_nothing_else_reads() -> None:
    assert RULES.splittable("ad", "group") == {"member"}
    assert RULES.splittable("ad", "user") == frozenset()  # manager: single-valued
    cfg = ref_config_dict()
    group_rule = cfg["inbound"][1]
    group_rule["flows"].append({"mv": "size", "expression": "size(cs.member)"})
    cfg["metaverse"]["group"]["attributes"]["size"] = {}
    assert compile_rules(IdsyncConfig.model_validate(cfg)).splittable("ad", "group") == frozenset()
    cfg = ref_config_dict(targets=True)
    cfg["inbound"].append({**cfg["inbound"][1], "connector": "ldap"})
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    assert rules.splittable("ad", "group") == {"member"}
    assert rules.splittable("ldap", "group") == frozenset()  # a target: its imports carry whole images
    cfg = ref_config_dict()
    cfg["inbound"][1]["flows"].append({"mv": "owner", "source": "member"})
    cfg["metaverse"]["group"]["attributes"]["owner"] = {"reference": True}  # single-valued
    assert compile_rules(IdsyncConfig.model_validate(cfg)).splittable("ad", "group") == frozenset()


def test_a_group_is_held_apart_from_its_size_on_and_back_inside_below_half_of_it() -> None:
    members = [user_dn(f"u{i}") for i in range(MIN)]
    stored, writes = split_object(staff(members[:3]), {}, {"member"}, MIN)
    assert stored == staff(members[:3]) and writes == {}
    stored, writes = split_object(staff([*members, members[0].upper()]), {}, {"member"}, MIN)
    assert stored is not None and "member" not in stored.attributes and stored.split == {"member": MIN}
    held = apply_held({}, writes)
    assert held == {"member": {dn_key(m): m for m in members}}  # one key per DN, the first spelling
    assert hydrate(stored, held) == staff(members)  # the values in their order, the second spelling gone
    # The same group in a whole image again: nothing to write; one member spelled anew: that value alone.
    assert split_object(staff(members), held, {"member"}, MIN)[1] == {}
    respelled = [members[0].upper(), *members[1:]]
    assert split_object(staff(respelled), held, {"member"}, MIN)[1] == {
        "member": {dn_key(members[0]): members[0].upper()}
    }
    # Down to half: still held; below it, back inside the object and the keys forgotten.
    whole = hydrate(stored, held)
    stored, writes = split_object(staff(members[:2]), held, {"member"}, MIN)
    assert stored is not None and stored.split == {"member": 2}
    held = apply_held(held, writes)
    assert set(held["member"]) == {dn_key(m) for m in members[:2]}
    stored, writes = split_object(staff(members[:1]), held, {"member"}, MIN)
    assert stored == staff(members[:1]) and apply_held(held, writes) == {}
    # Gone: every held value is forgotten.
    assert split_object(None, {"member": {"k": "v"}}, {"member"}, MIN) == (None, {"member": {"k": None}})
    assert whole.split == {}


def test_one_member_added_reads_and_writes_its_key_alone() -> None:
    members = [user_dn(f"u{i}") for i in range(6)]
    stored, writes = split_object(staff(members), {}, {"member"}, MIN)
    assert stored is not None
    held = Held(apply_held({}, writes))
    newcomer = user_dn("new")
    result = stage_by_value(stored, member_change([newcomer]), {"member"}, held, MIN)
    assert result is not None
    staged, writes = result
    assert staged.pending == "update" and staged.changed == {"member"}
    assert staged.values == {"member": ([newcomer], [])}
    assert writes == {"member": {dn_key(newcomer): newcomer}}
    assert held.looked_up == [dn_key(newcomer)]
    assert staged.after is not None and staged.after.split == {"member": 7} and staged.after.version == 2
    assert routes_by_value(RULES, staged)
    cs, outputs = route(RULES, staged, 10)
    assert cs is staged.after and outputs == []  # the registration carries the change
    (register,) = staging_updates(RULES, staged.before, cs, 10, values=staged.values)
    assert register.op == "refer" and register.keys == [dn_key(newcomer)] and register.mv_id == "G1"


def test_a_change_that_needs_the_whole_group_is_not_staged_by_value() -> None:
    members = [user_dn(f"u{i}") for i in range(6)]
    stored, writes = split_object(staff(members), {}, {"member"}, MIN)
    assert stored is not None
    held = Held(apply_held({}, writes))
    whole_members = member_change(after={"member": members[:3]}, changes=["member"])
    assert stage_by_value(stored, whole_members, {"member"}, held, MIN) is None
    assert (
        stage_by_value(stored, member_change(removed=members[:5]), {"member"}, held, MIN) is None
    )  # below half
    renamed = member_change([user_dn("x")])
    renamed = replace(renamed, source=Source(connector="ad", dn="cn=other", version=2, event_id="r", ts_ms=5))
    assert stage_by_value(stored, renamed, {"member"}, held, MIN) is None
    # Old or repeated: skipped by value, as stage skips it.
    stale = stage_by_value(stored, member_change([user_dn("x")], seq=0), {"member"}, held, MIN)
    assert stale is not None and stale[0].pending == "stale" and stale[1] == {}
    repeated = member_change([user_dn("x")], seq=3)
    repeated = replace(repeated, source=replace(repeated.source, event_id="e0"))
    again = stage_by_value(stored, repeated, {"member"}, held, MIN)
    assert again is not None and again[0].pending == "duplicate"
    # Another attribute changed with it: the description flows, so the group is read whole.
    cfg = ref_config_dict()
    cfg["inbound"][1]["flows"].append({"mv": "description", "source": "description"})
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    both = member_change([user_dn("x")], after={"description": ["d"]}, changes=["description"])
    result = stage_by_value(stored, both, {"member"}, held, MIN)
    assert result is not None and not routes_by_value(rules, result[0])


dns = st.sampled_from([user_dn(f"u{i}") for i in range(8)]).flatmap(
    lambda dn: st.sampled_from([dn, dn.upper(), dn.replace(",", " , ")])
)


@settings(max_examples=300, deadline=None)
@given(
    members=st.lists(dns, min_size=MIN, max_size=10),
    added=st.lists(dns, max_size=4),
    removed=st.lists(dns, max_size=4),
    joined=st.booleans(),
    cn=st.one_of(st.none(), st.just(["renamed"])),
)
def test_by_value_gives_what_staging_the_whole_group_gives(
    members: list[str], added: list[str], removed: list[str], joined: bool, cn: list[str] | None
) -> None:
    removed = [r for r in removed if r not in added]
    whole = staff(members, "G1" if joined else None)
    stored, writes = split_object(whole, {}, {"member"}, MIN)
    assert stored is not None
    if not stored.split:
        return  # fewer than MIN distinct DNs: not held
    held = apply_held({}, writes)
    record = member_change(
        added or None, removed or None, after={"cn": cn} if cn else None, changes=["cn"] if cn else []
    )
    if not added and not removed:
        return
    result = stage_by_value(stored, record, {"member"}, Held(held), MIN)
    expected = stage(hydrate(stored, held), record, dn_valued={"member"})
    if result is None:
        return  # the whole group is read: stage gives the answer
    staged, writes = result
    assert (staged.pending, staged.changed) == (expected.pending, expected.changed)
    assert staged.after is not None and expected.after is not None
    after = hydrate(staged.after, apply_held(held, writes))
    assert member_keys(after) == member_keys(expected.after)
    assert {**after.attributes, "member": []} == {**expected.after.attributes, "member": []}
    assert after.version == expected.after.version and after.event_id == expected.after.event_id
    got = {
        a: ({dn_key(v) for v in g}, {dn_key(v) for v in lost})
        for a, (g, lost) in (staged.values or {}).items()
    }
    want = {
        a: ({dn_key(v) for v in g}, {dn_key(v) for v in lost})
        for a, (g, lost) in (expected.values or {}).items()
    }
    assert got == want
    if routes_by_value(RULES, staged):
        by_value = staging_updates(RULES, staged.before, staged.after, 10, values=staged.values)
        by_whole = staging_updates(RULES, expected.before, expected.after, 10, values=expected.values)
        assert by_value == by_whole


def test_member_changes_of_a_held_group_go_by_value_through_the_simulated_pipeline() -> None:
    sim = Sim(ref_rules(), split=MIN)
    for i in range(5):
        sim.upsert(f"u{i}", "user", user_dn(f"u{i}"), {"uid": [f"u{i}"], "employeeNumber": [str(i)]})
    sim.upsert(
        "staff", "group", group_dn("staff"), {"cn": ["staff"], "member": [user_dn(f"u{i}") for i in range(4)]}
    )
    sim.run()
    assert sim.cs["ad|staff"].split == {"member": 4} and "member" not in sim.cs["ad|staff"].attributes
    sim.modify("staff", "group", group_dn("staff"), {"member": [user_dn("u4")]}, {"member": [user_dn("u0")]})
    sim.run()
    sim.modify("staff", "group", group_dn("staff"), {}, {"member": [user_dn("u1").upper()]})
    sim.run()
    assert sim.by_value == 2
    group_mv = sim.mv_of("staff")
    want = sorted(sim.mv_of(u).mv_id for u in ("u2", "u3", "u4"))
    assert sorted(group_mv.attributes["member"]) == want
    assert sim.cs["ad|staff"].split == {"member": 3}
    assert "member" not in sim.cs["ad|staff"].attributes
    # Below half of the size it is held from: back inside the object, the held keys forgotten.
    sim.modify("staff", "group", group_dn("staff"), {}, {"member": [user_dn("u2"), user_dn("u3")]})
    sim.run()
    assert sim.cs["ad|staff"].split == {} and sim.cs["ad|staff"].attributes["member"] == [user_dn("u4")]
    assert "ad|staff" not in sim.held
    assert sim.mv_of("staff").attributes["member"] == [sim.mv_of("u4").mv_id]
    sim.delete("staff", "group")
    sim.run()
    assert sim.held == {}
