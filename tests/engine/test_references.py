"""Reference attributes (engine.references): DNs in the connector space become mv_ids in the metaverse
whatever the arrival order, and DNs of the target on export (second pass when not created yet)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from pydantic import ValidationError

from engine.inbound import on_link_gone
from engine.metaverse import metaverse_step, metaverse_steps
from engine.references import (
    REGISTER_KEYS,
    in_route,
    no_table,
    ref_step,
    reference_keys,
    register_routes,
    registered,
    registers,
    registration_keys,
    registration_prefix,
    resolution,
    staging_updates,
)
from engine.rules import compile_rules
from engine.staging import tombstone
from engine.values import dn_key
from schemas.config import IdsyncConfig
from schemas.messages import (
    CSLink,
    MVDisconnect,
    RefRegister,
    RefResolved,
    RefSync,
    RefUpdate,
    RefValue,
)
from schemas.state import ConnectorState, CSObject
from schemas.wire import AttrChange, PendingExport

from .helpers import applied
from .refsim import Sim, group_dn, ref_config_dict, ref_rules, user_dn

RULES = ref_rules()
RULES_T = ref_rules(targets=True)


def user(sim: Sim, uid: str, manager: str | None = None, *, dn: str | None = None) -> None:
    attrs = {"employeeNumber": [f"E-{uid}"], "uid": [uid]}
    if manager is not None:
        attrs["manager"] = [manager]
    sim.upsert(uid, "user", dn or user_dn(uid), attrs)


def group(sim: Sim, cn: str, members: list[str]) -> None:
    attrs = {"cn": [cn]}
    if members:
        attrs["member"] = members
    sim.upsert(cn, "group", group_dn(cn), attrs)


def expected(sim: Sim) -> dict[str, dict[str, list[str]]]:
    """The sequential reference model: each reference names the mv_id of the live, joined object whose
    DN it holds; a DN nobody holds gives no value."""
    by_dn = {dn_key(cs.dn): cs.mv_id for cs in sim.cs.values() if cs.dn and cs.mv_id}
    out: dict[str, dict[str, list[str]]] = {}
    for cs in sim.wholes():
        assert cs.mv_id is not None, cs
        attr, source = ("manager", "manager") if cs.object_type == "user" else ("member", "member")
        ids = sorted({by_dn[dn_key(d)] for d in cs.attributes.get(source, []) if by_dn.get(dn_key(d))})
        out[cs.mv_id] = {attr: ids} if ids else {}
    return out


def expected_registrations(sim: Sim) -> list[str]:
    """The inbound registrations the metaverse must hold: each joined object's reference keys, for its
    metaverse object, attribute and anchor — no more (a leaked one would answer a later change of that
    DN into the wrong object), no fewer."""
    out: list[str] = []
    for cs in sim.wholes():
        if cs.mv_id is None:
            continue
        for attr, keys in reference_keys(sim.rules, cs).items():
            out += registration_keys(
                RefRegister(
                    mv_id=cs.mv_id,
                    op="refer",
                    connector=cs.connector,
                    keys=sorted(keys),
                    attribute=attr,
                    anchor=cs.anchor,
                    ts_ms=0,
                )
            )
    return sorted(out)


def inbound_registrations(sim: Sim) -> list[str]:
    return [k for k in sim.referrer_keys() if k.startswith("ref|")]


def actual(sim: Sim) -> dict[str, dict[str, list[str]]]:
    return {
        m.mv_id: {a: sorted(v) for a, v in m.attributes.items() if a in ("manager", "member") and v}
        for m in sim.live()
    }


# --------------------------------------------------------------------------- arrival order
def test_a_report_before_its_manager_gets_the_manager_once_it_arrives() -> None:
    sim = Sim(RULES)
    user(sim, "ann", manager=user_dn("bob"))
    sim.run()
    report = sim.mv_of("ann")
    assert "manager" not in report.attributes or report.attributes["manager"] == []
    # The DN waits as a placeholder registration in the reference index, never in the metaverse.
    assert any(k.startswith(f"ref|ad|{dn_key(user_dn('bob'))}\x00") for k in sim.referrer_keys())
    user(sim, "bob")
    sim.run()
    assert sim.mv_of("ann").attributes["manager"] == [sim.mv_of("bob").mv_id]


def test_a_manager_before_its_report() -> None:
    sim = Sim(RULES)
    user(sim, "bob")
    sim.run()
    user(sim, "ann", manager=user_dn("bob"))
    sim.run()
    assert sim.mv_of("ann").attributes["manager"] == [sim.mv_of("bob").mv_id]


def test_dn_is_matched_case_and_space_insensitively() -> None:
    sim = Sim(RULES)
    user(sim, "ann", manager="UID=bob, OU=People, DC=example, DC=org")
    user(sim, "bob")
    sim.run()
    assert sim.mv_of("ann").attributes["manager"] == [sim.mv_of("bob").mv_id]


def test_deleting_the_manager_removes_the_reference_and_a_new_one_restores_it() -> None:
    sim = Sim(RULES)
    user(sim, "ann", manager=user_dn("bob"))
    user(sim, "bob")
    sim.run()
    old = sim.mv_of("bob").mv_id
    sim.delete("bob", "user")
    sim.run()
    assert old not in sim.mv  # last connector gone: the metaverse object is deleted
    assert sim.mv_of("ann").attributes.get("manager", []) == []
    # Someone else gets that DN: the placeholder resolves to the new object.
    user(sim, "bob2", dn=user_dn("bob"))
    sim.run()
    assert sim.mv_of("ann").attributes["manager"] == [sim.mv_of("bob2").mv_id]


def test_renaming_the_manager_drops_the_stale_dn_until_the_report_names_the_new_one() -> None:
    sim = Sim(RULES)
    user(sim, "ann", manager=user_dn("bob"))
    user(sim, "bob")
    sim.run()
    bob = sim.mv_of("bob").mv_id
    user(sim, "bob", dn=f"uid=bob,ou=staff,{'dc=example,dc=org'}")
    sim.run()
    assert sim.mv_of("ann").attributes.get("manager", []) == []
    user(sim, "ann", manager=f"uid=bob,ou=staff,{'dc=example,dc=org'}")
    sim.run()
    assert sim.mv_of("ann").attributes["manager"] == [bob]


def test_a_changed_manager_replaces_the_reference() -> None:
    sim = Sim(RULES)
    for uid in ("bob", "cat"):
        user(sim, uid)
    user(sim, "ann", manager=user_dn("bob"))
    sim.run()
    user(sim, "ann", manager=user_dn("cat"))
    sim.run()
    assert sim.mv_of("ann").attributes["manager"] == [sim.mv_of("cat").mv_id]
    user(sim, "ann")  # no manager any more
    sim.run()
    assert sim.mv_of("ann").attributes.get("manager", []) == []


def test_group_members_resolve_one_by_one_and_leave() -> None:
    sim = Sim(RULES)
    group(sim, "staff", [user_dn(u) for u in ("a", "b", "c")])
    user(sim, "a")
    sim.run()
    assert sim.mv_of("staff").attributes["member"] == [sim.mv_of("a").mv_id]
    user(sim, "b")
    user(sim, "c")
    sim.run()
    assert sorted(sim.mv_of("staff").attributes["member"]) == sorted(sim.mv_of(u).mv_id for u in "abc")
    group(sim, "staff", [user_dn("a"), user_dn("c")])
    sim.delete("c", "user")
    sim.run()
    assert sim.mv_of("staff").attributes["member"] == [sim.mv_of("a").mv_id]


def test_the_metaverse_never_holds_a_dn_and_nothing_leaks_when_all_is_deleted() -> None:
    sim = Sim(RULES)
    group(sim, "staff", [user_dn("a"), user_dn("zz")])
    user(sim, "a", manager=user_dn("b"))
    user(sim, "b", manager=user_dn("nobody"))
    sim.run()
    for m in sim.live():
        for attr in ("manager", "member"):
            for v in m.attributes.get(attr, []):
                assert v in sim.mv and "=" not in v
    for anchor, kind in (("a", "user"), ("b", "user"), ("staff", "group")):
        sim.delete(anchor, kind)
    sim.run()
    assert sim.live() == []
    assert not [k for k in sim.join if k.startswith("ref|")], sim.join.keys()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 7),
    data=st.data(),
    seed=st.integers(0, 10_000),
    split=st.sampled_from([None, 2]),
)
def test_any_arrival_and_delivery_order_gives_the_sequential_model(
    n: int, data: st.DataObject, seed: int, split: int | None
) -> None:
    """Imports in a shuffled order, messages delivered in any interleaving that keeps each key's order
    (as Kafka does), renames and deletes included: the metaverse equals the sequential model. With
    ``split``, staging holds a group's members apart from two on (engine.staging.split_object), so
    member changes go by value, and groups move between held and whole as they grow and shrink."""
    sim = Sim(RULES, seed=seed, hold=True, split=split)
    uids = [f"u{i}" for i in range(n)]
    dn_choice = st.sampled_from([user_dn(u) for u in [*uids, "ghost"]])
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.just("user"), st.sampled_from(uids), st.one_of(st.none(), dn_choice), st.booleans()
                ),
                st.tuples(
                    st.just("group"),
                    st.sampled_from(["g1", "g2"]),
                    st.lists(dn_choice, max_size=4),
                    st.just(False),
                ),
                st.tuples(st.just("delete"), st.sampled_from([*uids, "g1"]), st.none(), st.just(False)),
                # A value-level membership change (change record version 2): one DN added or removed.
                st.tuples(st.just("member"), st.sampled_from(["g1", "g2"]), dn_choice, st.booleans()),
            ),
            min_size=1,
            max_size=25,
        )
    )
    alive: set[str] = set()
    #: The groups' members by DN key, as the changes say they are (a value-level change to a group not
    #: staged creates it with the values it adds).
    model: dict[str, set[str]] = {}
    for kind, anchor, value, moved in ops:
        if kind == "user":
            user(sim, anchor, manager=value, dn=f"uid={anchor},ou=moved,dc=example,dc=org" if moved else None)
            alive.add(anchor)
        elif kind == "group":
            group(sim, anchor, list(value or []))
            model[anchor] = {dn_key(d) for d in value or []}
            alive.add(anchor)
        elif kind == "member":
            # moved: removed; the DN in another spelling, as a directory may log it.
            dn = str(value).upper() if moved else str(value)
            sim.modify(
                anchor,
                "group",
                group_dn(anchor),
                {} if moved else {"member": [dn]},
                {"member": [dn]} if moved else {},
            )
            members = model.setdefault(anchor, set())
            if anchor not in alive:
                members.clear()  # not staged: the change is an add of the values it gives
            (members.discard if moved else members.add)(dn_key(dn))
            alive.add(anchor)
        elif anchor in alive:
            sim.delete(anchor, "group" if anchor.startswith("g") else "user")
            alive.discard(anchor)
        # Let part of the pipeline run between imports: arrivals interleave with processing.
        for _ in range(sim.rng.randrange(0, 30)):
            keys = sim.pending()
            if keys:
                sim.step(sim.rng.choice(keys))
    sim.run()
    assert {cs.anchor for cs in sim.cs.values()} == alive
    for g in ("g1", "g2"):
        if g in alive:
            whole = sim.whole(f"ad|{g}")
            assert whole is not None
            assert set(map(dn_key, whole.attributes.get("member", []))) == model[g]
    assert actual(sim) == expected(sim)
    assert inbound_registrations(sim) == expected_registrations(sim)
    assert not sim.errors, sim.errors


def test_an_object_deleted_while_its_projection_is_in_flight_leaves_no_metaverse_object() -> None:
    """Found by the property test above: the join answers after staging deleted the object; staging
    must then disconnect it from what it projected (engine.inbound.on_link_gone)."""
    sim = Sim(RULES)
    user(sim, "ann")
    sim.step(("import", "ann"))  # staged: the join request is on its way
    sim.delete("ann", "user")
    sim.step(("import", "ann"))  # deleted before the join answered
    sim.run(shuffle=False)
    assert sim.cs == {} and sim.live() == []


def test_a_join_answer_for_an_object_staging_never_held_leaves_nothing() -> None:
    """After a crash a stage's input is delivered again from its last saved state, and the links topic
    can bring the join's answer before the import record that caused it. Only a deleted object (its
    tombstone) leaves its metaverse object; one not staged yet must not, or the deletion rule deletes a
    live person and deprovisions them (found by tests/integration/test_export_crash.py)."""
    link = CSLink(connector="hr", anchor="E1", mv_id="M1", outcome="projected", ts_ms=5)
    assert on_link_gone(link, None) == []
    deleted = tombstone(CSObject(connector="hr", anchor="E1", object_type="user"), 3, "ev-3", 4)
    [leave] = on_link_gone(link, deleted)
    assert isinstance(leave, MVDisconnect)
    assert (leave.mv_id, leave.connector, leave.anchor, leave.reason) == ("M1", "hr", "E1", "deleted")
    # Answering the version the delete came after (or a link that does not say): it leaves too.
    assert on_link_gone(replace(link, cs_version=2), deleted) == [leave]
    # Answering a version newer than the delete: a later life, whose record is still to come.
    assert on_link_gone(replace(link, cs_version=4), deleted) == []


def test_a_replayed_answer_for_a_later_life_of_a_deleted_object_waits_for_its_record() -> None:
    """A crash delivers staging's input again from its last saved state. There the object is deleted (its
    tombstone); created again and projected after it, the new life's answer can arrive before its import
    record is staged again. Staging must wait for that record, not take the answer for one given while a
    delete was in flight: disconnecting would leave the new metaverse object without its source, and the
    deletion rule would delete it (and deprovision a live person's accounts)."""
    sim = Sim(RULES)
    user(sim, "ann")
    sim.run(shuffle=False)
    first = sim.mv_of("ann").mv_id
    sim.delete("ann", "user")
    sim.run(shuffle=False)
    assert sim.live() == [] and "ad|ann" in sim.tombs
    checkpoint = (dict(sim.cs), dict(sim.tombs), dict(sim.held))  # staging's last saved state
    user(sim, "ann")  # created again
    record = sim.queues[("import", "ann")][0]
    sim.step(("import", "ann"))
    route = sim.cs["ad|ann"].join_route
    assert route is not None
    sim.step(("join", route))
    link = sim.queues[("links", "ann")][0]
    assert isinstance(link, CSLink) and link.outcome == "projected" and link.cs_version == 3
    sim.run(shuffle=False)
    again = sim.mv_of("ann").mv_id
    assert again != first
    # The crash: staging's state as saved; its input since then delivered again, the answer first.
    sim.cs, sim.tombs, sim.held = checkpoint
    sim.put("links", "ann", link)
    sim.put("import", "ann", record)
    sim.step(("links", "ann"))
    sim.run(shuffle=False)
    assert [mv.mv_id for mv in sim.live()] == [again]
    assert sim.mv_of("ann").mv_id == again and set(sim.mv[again].links) == {"ad"}
    assert not sim.errors, sim.errors


# --------------------------------------------------------------------------- the pieces
def test_the_index_publishes_a_dns_value_to_the_table_only_when_it_changes() -> None:
    route = "ref|ad|uid=bob,ou=people,dc=example,dc=org"
    key = route.split("|", 2)[2]
    own = RefUpdate(route=route, op="own", connector="ad", key=key, owner="bob", value="M2", ts_ms=2)
    step = ref_step(None, own)
    assert step.entry is not None and step.entry.ref_value == "M2"
    assert step.value == RefValue(route=route, value="M2", ts_ms=2)
    # The same claim again (a replay) publishes nothing; nor does a stale disown by another object.
    assert ref_step(step.entry, own).value is None
    stale = RefUpdate(route=route, op="disown", connector="ad", key=key, owner="someone-else", ts_ms=3)
    assert ref_step(step.entry, stale).value is None
    # Joined elsewhere: the new mv_id; gone: no value (the route's entry is dropped).
    moved = ref_step(step.entry, replace(own, value="M3", ts_ms=4))
    assert moved.value is not None and moved.value.value == "M3"
    gone = ref_step(moved.entry, replace(own, op="disown", value=None, ts_ms=5))
    assert gone.entry is None and gone.value == RefValue(route=route, value=None, ts_ms=5)


def test_a_registration_reads_the_table_when_made_and_a_leaving_one_is_answered_none() -> None:
    route = "ref|ad|uid=bob,ou=people,dc=example,dc=org"
    key = route.split("|", 2)[2]
    other = "uid=carol,ou=people,dc=example,dc=org"
    refer = RefRegister(
        mv_id="M1", op="refer", connector="ad", keys=[key, other], attribute="manager", anchor="ann", ts_ms=1
    )
    assert register_routes(refer) == [route, f"ref|ad|{other}"]
    regs = registration_keys(refer)
    assert regs[0].startswith(registration_prefix(route)) and len(regs) == 2
    assert registered(refer, no_table) == []  # placeholders: nothing to tell yet
    [answer] = registered(refer, {route: "M2"}.get)  # only the key the table knows is answered
    assert (answer.mv_id, answer.key, answer.attribute, answer.anchor, answer.value) == (
        "M1",
        key,
        "manager",
        "ann",
        "M2",
    )
    leave = registered(replace(refer, op="unrefer"), {route: "M2"}.get)
    assert [(a.key, a.value) for a in leave] == [(key, None), (other, None)]
    # What the table says to a registration when it changes: the registration key holds all of it.
    again = resolution(regs[0], "M3", 9)
    assert (again.mv_id, again.direction, again.connector, again.key) == ("M1", "in", "ad", key)
    assert (again.attribute, again.anchor, again.value) == ("manager", "ann", "M3")
    out = RefRegister(mv_id="M1", op="refer", direction="out", connector="ldap", keys=["M2"], ts_ms=1)
    answer_out = resolution(registration_keys(out)[0], "uid=bob", 9)
    assert (answer_out.direction, answer_out.key, answer_out.attribute, answer_out.anchor) == (
        "out",
        "M2",
        None,
        None,
    )
    assert registered(replace(out, op="unrefer"), no_table) == []  # its own step forgets it


def test_a_large_group_registers_its_members_a_bounded_number_of_keys_per_message() -> None:
    keys = [f"uid=u{i:05d},ou=people" for i in range(2 * REGISTER_KEYS + 1)]
    msgs = registers("G", "refer", "hr", keys, 5, attribute="member", anchor="g")
    assert [len(m.keys) for m in msgs] == [REGISTER_KEYS, REGISTER_KEYS, 1]
    assert [k for m in msgs for k in m.keys] == keys
    assert {(m.mv_id, m.op, m.attribute, m.anchor) for m in msgs} == {("G", "refer", "member", "g")}
    assert registers("G", "refer", "hr", [], 5) == []


def test_a_new_hire_whose_manager_is_in_the_target_is_added_with_the_manager() -> None:
    """bob exists in the target, so the table has his DN there: ann's join carries her manager's DN, the
    metaverse registers it with the projection and resolves it from the table, and registers bob in the
    target before planning — her add carries the manager: one export, no second pass."""
    sim = Sim(ref_rules(targets=True))
    user(sim, "bob")
    sim.run()
    seen: set[str] = set()
    apply_all(sim, seen)
    sim.run()
    bob = sim.mv_of("bob").mv_id
    assert sim.table[f"xref|ldap|{bob}"] == "uid=bob,ou=people,dc=target,dc=org"
    user(sim, "ann", manager=user_dn("bob"))
    sim.run()
    ann = sim.mv_of("ann").mv_id
    exports = [e for e in apply_all(sim, seen) if e.mv_id == ann]
    assert [e.op for e in exports] == ["add"]
    assert exports[0].attributes["manager"].values == ["uid=bob,ou=people,dc=target,dc=org"]
    # Staging registered nothing more when the join answered: the metaverse holds the one registration.
    assert [k for k in inbound_registrations(sim) if f"\x00{ann}\x00" in k] == [
        f"ref|ad|{dn_key(user_dn('bob'))}\x00{ann}\x00manager\x00ann"
    ]
    assert sim.mv[ann].targets["ldap"].ref_dns == {bob: "uid=bob,ou=people,dc=target,dc=org"}
    sim.run()
    assert apply_all(sim, seen) == []


def test_an_ordinary_update_sends_nothing_to_the_index() -> None:
    cs = CSObject(
        connector="ad",
        anchor="ann",
        object_type="user",
        dn=user_dn("ann"),
        attributes={"uid": ["ann"], "manager": [user_dn("bob")]},
        mv_id="M1",
        state=ConnectorState.CONNECTOR,
    )
    changed = replace(cs, attributes={**cs.attributes, "uid": ["ann2"]}, version=2)
    assert staging_updates(RULES, cs, changed, 5) == []
    moved = replace(changed, dn=user_dn("ann3"))
    ops = [(u.op, u.route) for u in staging_updates(RULES, changed, moved, 6)]
    assert ops == [
        ("disown", f"ref|ad|{dn_key(user_dn('ann'))}"),
        ("own", f"ref|ad|{dn_key(user_dn('ann3'))}"),
    ]


def test_a_new_object_claims_its_dn_once_with_the_mv_id_its_join_gave_it() -> None:
    """Where DNs are referenced, a new object's claim waits for its join's answer: one claim, with the
    mv_id, instead of one at staging without it and another at the link. One deleted while its join is in
    flight never claimed; it disowns its DN all the same (a claim made at staging by an earlier release
    would otherwise stay in the index), which leaves the index as it was."""
    sim = Sim(RULES)
    user(sim, "bob")
    user(sim, "ann", manager=user_dn("bob"))
    sim.run(shuffle=False)
    assert sorted(((c.op, c.owner, c.value) for c in sim.claims), key=lambda c: c[1]) == [
        ("own", "ann", sim.mv_of("ann").mv_id),
        ("own", "bob", sim.mv_of("bob").mv_id),
    ]
    assert (
        actual(sim)
        == expected(sim)
        == {sim.mv_of("ann").mv_id: {"manager": [sim.mv_of("bob").mv_id]}, sim.mv_of("bob").mv_id: {}}
    )
    user(sim, "cy")
    sim.step(("import", "cy"))  # staged: its join request is on its way, no claim
    assert sim.cs["ad|cy"].join_route is not None and sim.cs["ad|cy"].mv_id is None
    sim.delete("cy", "user")
    sim.step(("import", "cy"))
    sim.run(shuffle=False)
    assert [(c.op, c.route) for c in sim.claims if c.owner == "cy"] == [
        ("disown", in_route("ad", user_dn("cy")))
    ]
    assert in_route("ad", user_dn("cy")) not in sim.join
    assert "ad|cy" not in sim.cs and len(sim.live()) == 2


def test_an_object_deleted_in_flight_leaves_the_claim_an_earlier_release_made_at_staging() -> None:
    """Before claims waited for the join, an object claimed its DN (no mv_id) when staged. Upgraded with
    its join in flight, or parked on its route (ambiguous), and then deleted or renamed, it disowns that
    DN: the claim does not stay behind to outrank a later holder."""
    pending = CSObject(
        connector="ad",
        anchor="cy",
        object_type="user",
        dn=user_dn("cy"),
        join_route="person|E-cy",
        version=3,
    )
    route = in_route("ad", user_dn("cy"))
    earlier = ref_step(
        None,
        RefUpdate(
            route=route, op="own", connector="ad", key=route.split("|", 2)[2], owner="cy", version=3, ts_ms=1
        ),
    )
    assert earlier.entry is not None and earlier.entry.ref_owner == "cy"
    for after in (None, replace(pending, dn=user_dn("cy2"), version=4)):
        [disown] = [u for u in staging_updates(RULES, pending, after, 5) if isinstance(u, RefUpdate)]
        assert (disown.op, disown.route, disown.owner) == ("disown", route, "cy")
        assert ref_step(earlier.entry, disown).entry is None
    # Its join answering is no move: the claim is taken over, with the mv_id, not disowned.
    linked = replace(pending, mv_id="M-cy", state=ConnectorState.CONNECTOR)
    [own] = staging_updates(RULES, pending, linked, 6)
    assert (own.op, own.route, own.value) == ("own", route, "M-cy")


def test_a_reference_flow_must_be_a_direct_source_flow() -> None:
    cfg = ref_config_dict()
    cfg["inbound"][0]["flows"][2] = {"mv": "manager", "expression": "cs.manager"}
    with pytest.raises(
        ValidationError, match=r"inbound\[0\]\.flows\[2\]: 'manager' is a reference attribute"
    ):
        IdsyncConfig.model_validate(cfg)


def test_several_managers_for_a_single_valued_reference_is_an_error_and_no_reference() -> None:
    sim = Sim(RULES)
    user(sim, "bob")
    sim.upsert(
        "ann",
        "user",
        user_dn("ann"),
        {"employeeNumber": ["E-ann"], "manager": [user_dn("bob"), user_dn("cat")]},
    )
    sim.run()
    assert [e.error_type for e in sim.errors] == ["flow-multi-values-to-single-value"]


# --------------------------------------------------------------------------- export translation
def apply_all(sim: Sim, seen: set[str]) -> list[PendingExport]:
    """Play the export worker: every new pending export is applied (the target DN as given)."""
    new = [e for e in sim.exports if e.export_id not in seen]
    for e in new:
        seen.add(e.export_id)
        sim.put(
            "mv",
            e.mv_id,
            applied(e, anchor=f"t-{e.mv_id}", ts_ms=sim.ts),
        )
    return new


def test_a_reference_to_an_object_not_yet_created_in_the_target_waits_for_a_second_pass() -> None:
    sim = Sim(ref_rules(targets=True))
    user(sim, "ann", manager=user_dn("bob"))
    user(sim, "bob")
    sim.run(shuffle=False)
    ann, bob = sim.mv_of("ann").mv_id, sim.mv_of("bob").mv_id
    adds = {e.mv_id: e for e in sim.exports if e.op == "add"}
    # bob does not exist in the target yet: ann is provisioned without a manager ...
    assert "manager" not in adds[ann].attributes
    seen: set[str] = set()
    apply_all(sim, seen)
    sim.run()
    # ... and, once bob's add is applied, exported again with bob's DN in the target (never an mv_id).
    [second] = apply_all(sim, seen)
    assert second.mv_id == ann and second.op == "update"
    assert second.attributes["manager"].values == ["uid=bob,ou=people,dc=target,dc=org"]
    sim.run()
    assert apply_all(sim, seen) == []
    assert sim.mv[ann].targets["ldap"].ref_dns == {bob: "uid=bob,ou=people,dc=target,dc=org"}


def test_a_known_target_dn_goes_with_the_add_and_a_removed_manager_is_deleted_in_the_target() -> None:
    sim = Sim(ref_rules(targets=True))
    user(sim, "bob")
    sim.run()
    seen: set[str] = set()
    apply_all(sim, seen)
    sim.run()
    user(sim, "ann", manager=user_dn("bob"))
    sim.run()
    exports = apply_all(sim, seen)
    sim.run()
    exports += apply_all(sim, seen)
    # bob's DN in the target is in the table: ann's add carries it.
    assert [e.op for e in exports] == ["add"]
    assert exports[0].attributes["manager"].values == ["uid=bob,ou=people,dc=target,dc=org"]
    sim.delete("bob", "user")
    sim.run()
    [removed] = [e for e in apply_all(sim, seen) if e.mv_id == sim.mv_of("ann").mv_id]
    assert removed.attributes["manager"].values == []


# --------------------------------------------------------------------------- large groups: value-level
def settled_group(members: list[str]) -> tuple[Sim, set[str]]:
    sim = Sim(ref_rules(targets=True))
    for uid in members:
        user(sim, uid)
    group(sim, "staff", [user_dn(u) for u in members])
    seen: set[str] = set()
    for _ in range(4):
        sim.run()
        apply_all(sim, seen)
    sim.run()
    assert apply_all(sim, seen) == []
    return sim, seen


def group_exports(sim: Sim, seen: set[str]) -> list[PendingExport]:
    staff = sim.mv_of("staff").mv_id
    return [e for e in apply_all(sim, seen) if e.mv_id == staff]


def test_one_member_added_or_removed_exports_exactly_that_value() -> None:
    sim, seen = settled_group(["a", "b", "c"])
    staff = sim.mv_of("staff")
    target_dns = sorted(staff.targets["ldap"].ref_dns.values())
    assert target_dns == [f"uid={u},ou=people,dc=target,dc=org" for u in "abc"]
    user(sim, "d")
    group(sim, "staff", [user_dn(u) for u in "abcd"])
    for _ in range(3):
        sim.run()
        exports = group_exports(sim, seen)
        if exports:
            break
    [add] = exports
    assert add.op == "update"
    assert {k: (c.op, c.values) for k, c in add.attributes.items()} == {
        "member": ("add", ["uid=d,ou=people,dc=target,dc=org"])
    }
    group(sim, "staff", [user_dn(u) for u in "acd"])
    sim.run()
    [remove] = group_exports(sim, seen)
    assert {k: (c.op, c.values) for k, c in remove.attributes.items()} == {
        "member": ("delete", ["uid=b,ou=people,dc=target,dc=org"])
    }


def test_held_answers_change_nothing_until_the_refsync_then_export_what_settling_at_once_does() -> None:
    """The metaverse stage holds a large group's member answers until its checkpoint (no RefSync sent,
    ``ref_sync`` kept set); the RefSync it then delivers gives the state and exports of syncing at once."""
    sim, seen = settled_group(["a", "b", "c"])
    for uid in "de":
        user(sim, uid)
    for _ in range(3):  # d and e exist in the target before they join the group
        sim.run()
        apply_all(sim, seen)
    group(sim, "staff", [user_dn(u) for u in "abde"])
    staff_id = sim.mv_of("staff").mv_id
    # Run everything but the group's own metaverse messages (its new image, d's and e's answers).
    while keys := [k for k in sim.pending() if k != ("mv", staff_id)]:
        sim.step(keys[0])
    answers = list(sim.queues[("mv", staff_id)])
    # d's and e's registrations: the table has their mv_ids already, so they are answered when applied.
    assert sum(len(m.keys) for m in answers if isinstance(m, RefRegister) and m.op == "refer") >= 2
    before = sim.mv[staff_id]
    table = sim.table.get

    held, [*outs] = metaverse_steps(RULES_T, before, answers, settle=lambda _mv: False, lookup=table)
    assert held is not None and held.ref_sync is not None
    flat = [o for each in outs for o in each]
    assert not [o for o in flat if isinstance(o, RefSync)]
    # d and e are not in the metaverse value, nor exported, before the RefSync.
    members = set(held.attributes.get("member", []))
    assert not members & {sim.mv_of(u).mv_id for u in "de"}
    assert not [o for o in flat if isinstance(o, PendingExport) and "uid=d" in str(o.attributes)]
    # The stage's checkpoint delivers it and settles what the sync registers too (streams.stages.metaverse).
    synced, [late] = metaverse_steps(
        RULES_T, held, [RefSync(mv_id=staff_id, ts_ms=answers[-1].ts_ms)], settle=True, lookup=table
    )

    at_once, outs_at_once = metaverse_steps(RULES_T, before, answers, settle=True, lookup=table)
    assert synced == at_once
    assert synced is not None and len(synced.attributes["member"]) == 4

    kinds = [type(o).__name__ for o in late]
    assert kinds == [type(o).__name__ for each in outs_at_once for o in each][-len(kinds) :]

    # The pipeline goes on from the held-then-synced group: the target gets c out, d and e in.
    sim.queues[("mv", staff_id)].clear()
    sim.mv[staff_id] = synced
    sim._emit([*flat, *late], metaverse=True)
    changes: list[tuple[str, str, list[str]]] = []
    for _ in range(4):
        sim.run()
        for e in group_exports(sim, seen):
            changes += [(c.op, k, sorted(c.values)) for k, c in e.attributes.items()]
    target = "uid={},ou=people,dc=target,dc=org"
    added = sorted(v for op, _attr, values in changes if op == "add" for v in values)
    assert added == [target.format(u) for u in "de"]
    assert [(op, v) for op, _attr, values in changes if op != "add" for v in values] == [
        ("delete", target.format("c"))
    ]
    assert sorted(sim.mv_of("staff").targets["ldap"].ref_dns.values()) == [target.format(u) for u in "abde"]


def test_members_compare_as_dns_and_a_swap_removes_then_adds_one_value_each() -> None:
    sim, seen = settled_group(["a", "b", "c", "d"])
    group(sim, "staff", [user_dn(u) for u in "abc"])
    sim.run()
    group_exports(sim, seen)
    group(sim, "staff", [user_dn(u) for u in "ac"] + [user_dn("b").upper()])  # same members, other case
    sim.run()
    assert group_exports(sim, seen) == []
    group(sim, "staff", [user_dn(u) for u in "ab"])
    user(sim, "c", dn=f"uid=c,ou=gone,{'dc=example,dc=org'}")  # c leaves under another DN
    sim.run()
    exports = group_exports(sim, seen)
    changes = [(c.op, c.values) for e in exports for c in e.attributes.values()]
    assert changes == [("delete", ["uid=c,ou=people,dc=target,dc=org"])]
    group(sim, "staff", [user_dn(u) for u in "ad"])
    sim.run()
    exports = group_exports(sim, seen)
    changes = [(c.op, c.values) for e in exports for c in e.attributes.values()]
    assert changes == [
        ("delete", ["uid=b,ou=people,dc=target,dc=org"]),
        ("add", ["uid=d,ou=people,dc=target,dc=org"]),
    ]
    assert [e.seq for e in exports] == [exports[0].seq, exports[0].seq + 1]


# --------------------------------------------------------------------------- property: export side
class Directory:
    """A target directory that applies pending exports as an LDAP server would (for the model test)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, dict[str, list[str]]]] = {}

    def apply(self, e: PendingExport) -> str:
        anchor = e.anchor or f"t-{e.mv_id}"
        if e.op == "delete":
            self.entries.pop(anchor, None)
            return anchor
        dn, attrs = self.entries.get(anchor, (e.dn, {}))
        dn = e.new_dn or e.dn if e.op in ("add", "rename") else dn
        for name, change in e.attributes.items():
            have = attrs.get(name, [])
            if change.op == "replace":
                attrs[name] = list(change.values)
            elif change.op == "add":
                attrs[name] = have + [v for v in change.values if v not in have]
            else:
                attrs[name] = [v for v in have if v not in change.values] if change.values else []
        self.entries[anchor] = (dn, attrs)
        return anchor


def drain_with_directory(sim: Sim, directory: Directory, seen: set[str]) -> None:
    """Run the pipeline and the export worker until nothing moves."""
    for _ in range(50):
        sim.run()
        new = [e for e in sim.exports if e.export_id not in seen]
        if not new:
            return
        for e in new:
            seen.add(e.export_id)
            anchor = directory.apply(e)
            sim.put(
                "mv",
                e.mv_id,
                applied(e, anchor=anchor, ts_ms=sim.ts),
            )
    raise AssertionError("exports did not settle")


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_the_target_ends_with_the_referenced_objects_dns_whatever_the_order(
    data: st.DataObject, seed: int
) -> None:
    sim = Sim(ref_rules(targets=True), seed=seed, hold=True)
    directory = Directory()
    seen: set[str] = set()
    uids = ["u0", "u1", "u2", "u3"]
    dn_choice = st.sampled_from([user_dn(u) for u in [*uids, "ghost"]])
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("user"), st.sampled_from(uids), st.one_of(st.none(), dn_choice)),
                st.tuples(st.just("group"), st.just("g1"), st.lists(dn_choice, min_size=1, max_size=4)),
                st.tuples(st.just("delete"), st.sampled_from(uids), st.none()),
                st.tuples(st.just("export"), st.just(""), st.none()),
            ),
            min_size=1,
            max_size=20,
        )
    )
    alive: set[str] = set()
    for kind, anchor, value in ops:
        if kind == "user":
            user(sim, anchor, manager=value)  # type: ignore[arg-type]
            alive.add(anchor)
        elif kind == "group":
            group(sim, anchor, list(value or []))  # type: ignore[arg-type]
        elif kind == "delete" and anchor in alive:
            sim.delete(anchor, "user")
            alive.discard(anchor)
        elif kind == "export":
            drain_with_directory(sim, directory, seen)
        for _ in range(sim.rng.randrange(0, 20)):
            keys = sim.pending()
            if keys:
                sim.step(sim.rng.choice(keys))
    drain_with_directory(sim, directory, seen)
    target_dn = {u: f"uid={u},ou=people,dc=target,dc=org" for u in alive}
    by_dn = {dn: attrs for dn, attrs in directory.entries.values()}
    for cs in sim.cs.values():
        named = {
            dn_key(d) for d in cs.attributes.get("manager" if cs.object_type == "user" else "member", [])
        }
        want = sorted(target_dn[u] for u in alive if dn_key(user_dn(u)) in named)
        if cs.object_type == "user":
            entry = by_dn[target_dn[cs.anchor]]
            assert sorted(entry.get("manager", [])) == want, (cs.anchor, entry)
        else:
            entry = by_dn.get("cn=g1,ou=groups,dc=target,dc=org")
            # A group none of whose members exists yet is not created (its add waits for a member).
            assert sorted(entry.get("member", [])) == want if entry is not None else not want, entry
    assert set(by_dn) >= set(target_dn.values())


def test_a_group_of_known_members_is_exported_in_a_few_changes() -> None:
    """A group whose members are in the metaverse and the target already: its registrations are answered
    from the table as they are applied, so the target gets its members in a few changes, not one modify
    per member."""
    members = [f"m{i}" for i in range(100)]
    sim = Sim(ref_rules(targets=True))
    for uid in members:
        user(sim, uid)
    seen: set[str] = set()
    for _ in range(3):
        sim.run()
        apply_all(sim, seen)
    group(sim, "staff", [user_dn(u) for u in members])
    for _ in range(3):
        sim.run()
        apply_all(sim, seen)
    staff = sim.mv_of("staff").mv_id
    group_exports = [e for e in sim.exports if e.mv_id == staff]
    assert len(group_exports) < 10, [
        (e.op, len(e.attributes.get("member", AttrChange(op="add", values=[])).values)) for e in group_exports
    ]
    exported = {v for e in group_exports if "member" in e.attributes for v in e.attributes["member"].values}
    assert exported == {f"uid={m},ou=people,dc=target,dc=org" for m in members}


def test_a_group_whose_members_arrive_after_it_exports_every_member() -> None:
    members = [f"m{i}" for i in range(30)]
    sim, _seen = settled_group(members)
    staff = sim.mv_of("staff").mv_id
    exported = {
        v
        for e in sim.exports
        if e.mv_id == staff and "member" in e.attributes
        for v in e.attributes["member"].values
    }
    assert exported == {f"uid={m},ou=people,dc=target,dc=org" for m in members}


@pytest.mark.parametrize("order", ["old-first", "new-first"])
def test_a_dn_claimed_by_two_objects_resolves_to_the_later_taker_whatever_the_order(order: str) -> None:
    """The directory deleted (or renamed away) entry A and created B with the same DN; A's delete has not
    reached the index yet. The DN resolves to B (it took the DN at a later source version) whichever
    claim arrives first, and A's late disown does not take the DN from B (MIM's transient object)."""
    route, key = "ref|ad|cn=x", "cn=x"
    old = RefUpdate(
        route=route, op="own", connector="ad", key=key, owner="A", value="MV-A", version=5, ts_ms=1
    )
    new = RefUpdate(
        route=route, op="own", connector="ad", key=key, owner="B", value="MV-B", version=11, ts_ms=2
    )
    entry = None
    for msg in [old, new] if order == "old-first" else [new, old]:
        entry = ref_step(entry, msg).entry
    assert entry is not None and (entry.ref_owner, entry.ref_value) == ("B", "MV-B")
    gone = RefUpdate(route=route, op="disown", connector="ad", key=key, owner="A", ts_ms=3)
    step = ref_step(entry, gone)
    assert step.entry is not None and (step.entry.ref_owner, step.entry.ref_value) == ("B", "MV-B")
    assert step.value is None  # nothing changed for the referrers
    # and when B goes too, the DN resolves to nothing (a placeholder again)
    step = ref_step(step.entry, replace(gone, owner="B"))
    assert step.entry is None
    assert step.value is not None and step.value.value is None


def test_the_claimant_that_loses_its_dn_is_told_it_is_transient_and_told_again_when_it_holds_it() -> None:
    from engine.staging import apply_dn_claim

    route, key = "ref|ad|cn=x", "cn=x"
    a = RefUpdate(route=route, op="own", connector="ad", key=key, owner="A", version=5, ts_ms=1)
    b = RefUpdate(route=route, op="own", connector="ad", key=key, owner="B", version=11, ts_ms=2)
    step = ref_step(None, a)
    assert step.claims == []  # the only claimant: nothing to say
    step = ref_step(step.entry, b)
    assert [(c.anchor, c.transient, c.dn_key) for c in step.claims] == [("A", True, key), ("B", False, key)]
    # the other order: A's claim arrives after B's, and A is transient from the start
    late = ref_step(ref_step(None, b).entry, a)
    assert [(c.anchor, c.transient) for c in late.claims] == [("A", True)]
    # B leaves first (say the directory deleted B and A's delete was a rename back): A holds the DN again
    gone_b = RefUpdate(route=route, op="disown", connector="ad", key=key, owner="B", ts_ms=3)
    back = ref_step(late.entry, gone_b)
    assert [(c.anchor, c.transient) for c in back.claims] == [("A", False)]

    # staging applies the word to the object while it still has that DN, and ignores it once it moved
    cs = CSObject(connector="ad", anchor="A", object_type="user", dn="CN=X", version=5)
    [lost, _won] = step.claims
    marked = apply_dn_claim(cs, lost)
    assert marked is not None and marked.transient
    assert apply_dn_claim(marked, lost) is None  # already so
    moved = replace(cs, dn="cn=elsewhere")
    assert apply_dn_claim(moved, lost) is None
    assert apply_dn_claim(None, lost) is None


def test_every_connector_with_dns_claims_them_but_only_referenced_ones_carry_the_mv_id() -> None:
    rules = ref_rules()
    plain = CSObject(connector="hr", anchor="E1", object_type="employee", dn="uid=e1,o=hr", mv_id="M1")
    [own] = staging_updates(rules, None, plain, 1)
    assert (own.op, own.route, own.owner, own.value) == ("own", "ref|hr|uid=e1,o=hr", "E1", None)
    # its join changes nothing the index needs to hear
    assert staging_updates(rules, replace(plain, mv_id=None), plain, 2) == []


def test_an_object_deleted_when_its_grace_period_ends_leaves_the_outbound_index() -> None:
    """A deletion that falls due while a reference answer is applied (metaverse_steps expires the object
    first) unregisters what the object referenced in the target, like any other deletion."""
    cfg = ref_config_dict(targets=True)
    cfg["metaverse"]["person"]["deletion"] = {
        "rule": "source-disconnects",
        "sources": ["ad"],
        "grace_period_s": 60,
    }
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    sim = Sim(rules)
    user(sim, "boss")
    user(sim, "ann", manager=user_dn("boss"))
    sim.run(shuffle=False)
    ann, boss = sim.mv_of("ann"), sim.mv_of("boss")
    assert boss.mv_id in ann.targets["ldap"].ref_dns  # ann exports a reference to boss: registered
    sim.delete("ann", "user")
    sim.run(shuffle=False)
    ann = sim.mv[ann.mv_id]
    assert ann.delete_due_ms is not None and not ann.deleted  # waiting for its grace period
    late = RefResolved(
        mv_id=ann.mv_id,
        direction="out",
        connector="ldap",
        key=boss.mv_id,
        value="uid=boss",
        ts_ms=ann.delete_due_ms,
    )
    gone, outputs = metaverse_step(rules, ann, late)
    assert gone is None or gone.deleted
    assert [(o.op, o.keys) for o in outputs if isinstance(o, RefRegister) and o.direction == "out"] == [
        ("unrefer", [boss.mv_id])
    ]


def test_a_member_change_registers_only_the_members_that_changed_by_normalized_dn() -> None:
    """A group's member change compares normalized DNs per attribute: a member respelled (case, spaces)
    is the same reference, blank values refer to nothing, and only the real change is (un)registered."""
    rules = ref_rules()
    base = CSObject(
        connector="ad",
        anchor="g",
        object_type="group",
        dn=group_dn("staff"),
        attributes={"cn": ["staff"], "member": [user_dn("a"), user_dn("b"), "", user_dn("c")]},
        version=1,
        state=ConnectorState.CONNECTOR,
        mv_id="mv-g",
    )
    respelled = replace(
        base,
        version=2,
        attributes={
            "cn": ["staff"],
            "member": ["UID=a, OU=People,dc=example,dc=org", user_dn("b"), "  ", user_dn("d")],
        },
    )
    ups = staging_updates(rules, base, respelled, 5)
    assert [(u.op, u.keys, u.mv_id, u.attribute) for u in ups if isinstance(u, RefRegister)] == [
        ("unrefer", [dn_key(user_dn("c"))], "mv-g", "member"),
        ("refer", [dn_key(user_dn("d"))], "mv-g", "member"),
    ]
    assert len(ups) == 2
    # Linked to another metaverse object: every reference moves, blank values still refer to nothing.
    moved = replace(respelled, version=3, mv_id="mv-h")
    ups = staging_updates(rules, respelled, moved, 6)
    keys = sorted(dn_key(user_dn(u)) for u in "abd")
    refs = [u for u in ups if isinstance(u, RefRegister)]
    # one message per referrer and attribute, with every key
    assert sorted((u.op, u.mv_id, u.keys) for u in refs) == [
        ("refer", "mv-h", keys),
        ("unrefer", "mv-g", keys),
    ]
    # and the group's own DN now answers with the new object
    assert [(u.op, u.value) for u in ups if u.op == "own"] == [("own", "mv-h")]


def test_a_target_dn_answer_is_exported_when_the_refsync_was_caused_by_another_connector() -> None:
    """An inbound answer that changes no flow value (a second DN of a member already there) sets the
    RefSync's cause to the source; a target-DN answer for another member arriving before that RefSync
    must still be exported: the target is planned again because its references changed."""
    sim, _seen = settled_group(["a"])
    user(sim, "b")
    group(sim, "staff", [user_dn(u) for u in "ab"])
    sim.run()  # b is provisioned (not applied): the group registered it and waits for its target DN
    staff = sim.mv_of("staff")
    b_id = sim.mv_of("b").mv_id
    assert staff.targets["ldap"].ref_dns[b_id] == ""
    a_id = sim.mv_of("a").mv_id
    anchor = staff.links["ad"].anchor
    ts = sim.ts + 1
    answers = [
        RefResolved(
            mv_id=staff.mv_id,
            connector="ad",
            key=dn_key("uid=a2,ou=people,dc=example,dc=org"),
            value=a_id,
            attribute="member",
            anchor=anchor,
            ts_ms=ts,
        ),
        RefResolved(
            mv_id=staff.mv_id,
            direction="out",
            connector="ldap",
            key=b_id,
            value="uid=b,ou=people,dc=target,dc=org",
            ts_ms=ts,
        ),
    ]
    synced, outs = metaverse_steps(RULES_T, staff, answers, settle=True)
    assert synced is not None and synced.attributes["member"] == staff.attributes["member"]
    exports = [o for each in outs for o in each if isinstance(o, PendingExport)]
    assert [(c.op, c.values) for e in exports for k, c in e.attributes.items() if k == "member"] == [
        ("add", ["uid=b,ou=people,dc=target,dc=org"])
    ]


@pytest.mark.timeout(30)
def test_settling_a_deleted_object_with_answers_pending_ends() -> None:
    """A deleted object (kept while its targets are deprovisioned) whose answers were pending is not synced
    when a batch settles; the settling ends and leaves its mark as it was."""
    sim = Sim(ref_rules(targets=True))
    user(sim, "bob")
    user(sim, "ann", manager=user_dn("bob"))
    sim.run()
    ann = replace(sim.mv_of("ann"), deleted=True, ref_sync="ad")
    answer = RefResolved(mv_id=ann.mv_id, direction="out", connector="ldap", key="x", value="uid=x", ts_ms=9)
    after, _outputs = metaverse_steps(RULES_T, ann, [answer], settle=True, lookup=sim.table.get)
    assert after is not None and after.deleted and after.ref_sync == "ad"


def requiring_member() -> Sim:
    """The reference pipeline with the target's groups requiring a member to be added (as an LDAP
    groupOfNames does: ``requires: [member]``)."""
    cfg = ref_config_dict(targets=True)
    [groups] = [r for r in cfg["outbound"] if r["mv_type"] == "group"]
    groups["requires"] = ["member"]
    return Sim(compile_rules(IdsyncConfig.model_validate(cfg)))


def test_a_group_that_requires_a_member_is_added_once_a_member_exists_in_the_target() -> None:
    sim = requiring_member()
    for uid in ("a", "b"):
        user(sim, uid)
    group(sim, "staff", [user_dn("a"), user_dn("b")])
    sim.run(shuffle=False)
    staff = sim.mv_of("staff").mv_id
    # No member exists in the target yet: the people are provisioned, the group is not (an add without
    # member would fail) and waits, unprovisioned.
    assert {e.mv_id for e in sim.exports if e.op == "add"} == {sim.mv_of("a").mv_id, sim.mv_of("b").mv_id}
    assert sim.mv[staff].targets["ldap"].status == "none"
    seen: set[str] = set()
    apply_all(sim, seen)
    sim.run()
    # Once a member's add is applied, the group is added with the members known by then (the others follow
    # value by value as their answers arrive): never an add without member.
    exports = [e for e in apply_all(sim, seen) if e.mv_id == staff]
    assert exports[0].op == "add" and exports[0].attributes["member"].values
    assert all(e.op == "update" and e.attributes["member"].op == "add" for e in exports[1:])
    exported = {v for e in exports for v in e.attributes["member"].values}
    assert exported == {f"uid={u},ou=people,dc=target,dc=org" for u in ("a", "b")}
    assert sim.mv[staff].targets["ldap"].status == "pending-add"
    sim.run()
    assert apply_all(sim, seen) == []


def test_a_group_that_requires_a_member_and_has_none_is_never_added() -> None:
    sim = requiring_member()
    group(sim, "empty", [])
    user(sim, "a")
    group(sim, "ghosts", [user_dn("nobody")])  # a member not in the source: never in the target either
    seen: set[str] = set()
    for _ in range(3):
        sim.run()
        apply_all(sim, seen)
    added = {e.mv_id for e in sim.exports if e.op == "add"}
    assert added == {sim.mv_of("a").mv_id}
    assert sim.mv[sim.mv_of("empty").mv_id].targets["ldap"].status == "none"


def test_requiring_an_attribute_no_flow_exports_fails_at_load_naming_it() -> None:
    cfg = ref_config_dict(targets=True)
    cfg["outbound"][1]["requires"] = ["uniqueMember"]
    with pytest.raises(ValidationError, match="requires uniqueMember, which no flow of the rule exports"):
        IdsyncConfig.model_validate(cfg)
