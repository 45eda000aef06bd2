"""engine.join: the join index decides projection, join and ambiguity per route."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.join import join_step, member_key, mv_id_for
from schemas.codec import pack, unpack
from schemas.messages import CSLink, JoinIndexUpdate, JoinRequest, MVContribution
from schemas.state import JoinEntry
from schemas.wire import ErrorRecord

ROUTE = "person|employeeId=E1"


def req(
    connector: str,
    anchor: str,
    *,
    project: bool,
    route: str = ROUTE,
    version: int = 1,
    ts_ms: int = 1_000,
) -> JoinRequest:
    return JoinRequest(
        route=route,
        mv_type="person",
        connector=connector,
        anchor=anchor,
        dn=None,
        cs_version=version,
        event_id=f"{connector}:{anchor}:{version}",
        project=project,
        flows={"employeeId": ["E1"], "source": [connector]},
        image=None,
        ts_ms=ts_ms,
    )


def contributions(outputs: list[object]) -> list[MVContribution]:
    return [o for o in outputs if isinstance(o, MVContribution)]


def links(outputs: list[object]) -> list[CSLink]:
    return [o for o in outputs if isinstance(o, CSLink)]


def test_mv_id_is_deterministic() -> None:
    assert mv_id_for(ROUTE, 0) == mv_id_for(ROUTE, 0)
    assert mv_id_for(ROUTE, 0) != mv_id_for(ROUTE, 1)
    assert mv_id_for(ROUTE, 0) != mv_id_for("person|employeeId=E2", 0)


def test_projection_allocates_deterministic_mv_id() -> None:
    entry, outputs = join_step(None, req("hr", "E1", project=True, version=3, ts_ms=42))
    assert entry is not None
    expected = mv_id_for(ROUTE, 0)
    assert entry.mv_id == expected
    assert entry.members == [member_key("hr", "E1")]
    assert entry.generation == 0
    [contrib] = contributions(outputs)
    assert contrib.mv_id == expected
    assert contrib.projected is True
    assert contrib.route == ROUTE
    assert (contrib.connector, contrib.anchor, contrib.cs_version, contrib.ts_ms) == ("hr", "E1", 3, 42)
    assert contrib.flows == {"employeeId": ["E1"], "source": ["hr"]}
    assert contrib.joining == []
    assert links(outputs) == [
        CSLink(connector="hr", anchor="E1", mv_id=expected, outcome="projected", ts_ms=42, cs_version=3)
    ]
    # a replay of the same imports into a fresh index rebuilds the same id
    again, _ = join_step(None, req("hr", "E1", project=True, version=3, ts_ms=99))
    assert again is not None and again.mv_id == expected


def test_join_step_does_not_mutate_input_entry() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    assert entry is not None
    snapshot = unpack(pack(entry), JoinEntry)
    join_step(entry, req("ldap", "L1", project=False))
    join_step(entry, JoinIndexUpdate(route=ROUTE, mv_id=entry.mv_id, mv_deleted=True, ts_ms=1))
    assert entry == snapshot


def test_second_connector_joins_existing() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    assert entry is not None
    mv_id = entry.mv_id
    entry, outputs = join_step(entry, req("ldap", "L1", project=False))
    assert entry is not None
    assert entry.mv_id == mv_id
    assert entry.members == ["hr|E1", "ldap|L1"]
    [contrib] = contributions(outputs)
    assert contrib.mv_id == mv_id and contrib.projected is False and contrib.connector == "ldap"
    assert [link.outcome for link in links(outputs)] == ["joined"]


def test_projecting_object_of_other_connector_joins_instead_of_projecting() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    entry, outputs = join_step(entry, req("crm", "C1", project=True))
    assert entry is not None
    [contrib] = contributions(outputs)
    assert contrib.mv_id == mv_id_for(ROUTE, 0)
    assert contrib.projected is False
    assert [link.outcome for link in links(outputs)] == ["joined"]


def test_same_connector_same_route_is_ambiguous() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    assert entry is not None
    mv_id = entry.mv_id
    entry, outputs = join_step(entry, req("hr", "E1-dup", project=True, ts_ms=5))
    assert entry is not None
    assert entry.mv_id == mv_id
    assert entry.members == ["hr|E1"]
    assert contributions(outputs) == []
    assert links(outputs) == [
        CSLink(connector="hr", anchor="E1-dup", mv_id=None, outcome="ambiguous", ts_ms=5)
    ]
    [err] = [o for o in outputs if isinstance(o, ErrorRecord)]
    assert err.error_type == "ambiguous-join"
    assert err.connector == "hr" and err.anchor == "E1-dup" and err.mv_id == mv_id
    assert "hr|E1" in err.message


def test_rejoin_of_existing_member_is_idempotent() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    entry, outputs = join_step(entry, req("hr", "E1", project=True, version=2))
    assert entry is not None
    assert entry.members == ["hr|E1"]
    [contrib] = contributions(outputs)
    assert contrib.mv_id == mv_id_for(ROUTE, 0) and contrib.cs_version == 2
    assert not [o for o in outputs if isinstance(o, ErrorRecord)]


def test_non_projecting_disconnector_waits() -> None:
    entry, outputs = join_step(None, req("ldap", "L1", project=False))
    assert entry is not None
    assert outputs == []
    assert entry.mv_id is None
    assert entry.members == []
    assert set(entry.waiting) == {"ldap|L1"}


def test_waiting_disconnector_joins_when_projection_arrives() -> None:
    entry, _ = join_step(None, req("ldap", "L1", project=False, version=7))
    entry, outputs = join_step(entry, req("hr", "E1", project=True))
    assert entry is not None
    mv_id = mv_id_for(ROUTE, 0)
    assert entry.mv_id == mv_id
    assert entry.waiting == {}
    assert sorted(entry.members) == ["hr|E1", "ldap|L1"]
    contribs = contributions(outputs)
    assert [(c.connector, c.projected, c.mv_id) for c in contribs] == [
        ("hr", True, mv_id),
        ("ldap", False, mv_id),
    ]
    # the waiting object's latest request is what is replayed
    assert contribs[1].cs_version == 7
    # the projection tells the metaverse step who joins right behind it
    assert contribs[0].joining == ["ldap"]
    assert contribs[1].joining == []
    assert sorted((link.connector, link.outcome) for link in links(outputs)) == [
        ("hr", "projected"),
        ("ldap", "joined"),
    ]


def test_waiting_request_is_replaced_by_the_latest() -> None:
    entry, _ = join_step(None, req("ldap", "L1", project=False, version=1))
    entry, _ = join_step(entry, req("ldap", "L1", project=False, version=2))
    assert entry is not None
    assert entry.waiting["ldap|L1"].cs_version == 2


def test_both_arrival_orders_give_the_same_result() -> None:
    a, out_a = join_step(None, req("hr", "E1", project=True))
    a, out_a2 = join_step(a, req("ldap", "L1", project=False))
    b, out_b = join_step(None, req("ldap", "L1", project=False))
    b, out_b2 = join_step(b, req("hr", "E1", project=True))
    assert a is not None and b is not None
    assert a.mv_id == b.mv_id
    assert sorted(a.members) == sorted(b.members)
    pairs_a = {(c.connector, c.mv_id) for c in contributions(out_a + out_a2)}
    pairs_b = {(c.connector, c.mv_id) for c in contributions(out_b + out_b2)}
    assert pairs_a == pairs_b


def test_waiting_disconnector_of_projecting_connector_is_ambiguous() -> None:
    entry, _ = join_step(None, req("ldap", "L1", project=False))
    entry, _ = join_step(entry, req("ldap", "L2", project=False))
    entry, outputs = join_step(entry, req("hr", "E1", project=True))
    assert entry is not None
    ldap_members = [m for m in entry.members if m.startswith("ldap|")]
    assert ldap_members == ["ldap|L1"]
    assert [(link.anchor, link.outcome) for link in links(outputs) if link.connector == "ldap"] == [
        ("L1", "joined"),
        ("L2", "ambiguous"),
    ]


def test_withdrawn_waiting_disconnector_is_not_joined() -> None:
    entry, _ = join_step(None, req("ldap", "L1", project=False))
    entry, outputs = join_step(entry, JoinIndexUpdate(route=ROUTE, connector="ldap", anchor="L1", ts_ms=2))
    assert entry is not None and entry.waiting == {} and outputs == []
    entry, outputs = join_step(entry, req("hr", "E1", project=True))
    assert entry is not None
    assert [c.connector for c in contributions(outputs)] == ["hr"]


def test_member_leaving_frees_its_connector_slot() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    entry, _ = join_step(entry, req("ldap", "L1", project=False))
    assert entry is not None
    entry, _ = join_step(
        entry, JoinIndexUpdate(route=ROUTE, mv_id=entry.mv_id, connector="ldap", anchor="L1", ts_ms=3)
    )
    assert entry is not None and entry.members == ["hr|E1"]
    entry, outputs = join_step(entry, req("ldap", "L2", project=False))
    assert [link.outcome for link in links(outputs)] == ["joined"]


def test_mv_deleted_bumps_generation_and_new_projection_gets_new_id() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    assert entry is not None
    first = entry.mv_id
    entry, outputs = join_step(entry, JoinIndexUpdate(route=ROUTE, mv_id=first, mv_deleted=True, ts_ms=5))
    assert outputs == []
    assert entry is not None
    assert entry.mv_id is None and entry.members == [] and entry.generation == 1
    entry, outputs = join_step(entry, req("hr", "E1", project=True, version=2))
    assert entry is not None
    assert entry.mv_id == mv_id_for(ROUTE, 1)
    assert entry.mv_id != first
    [contrib] = contributions(outputs)
    assert contrib.mv_id == entry.mv_id and contrib.projected


def test_mv_deleted_for_another_mv_id_is_ignored() -> None:
    entry, _ = join_step(None, req("hr", "E1", project=True))
    assert entry is not None
    entry2, _ = join_step(
        entry, JoinIndexUpdate(route=ROUTE, mv_id="some-older-mv", mv_deleted=True, ts_ms=5)
    )
    assert entry2 == entry


# --------------------------------------------------------------------------- property
CONNECTORS = {"hr": True, "crm": True, "ldap": False, "badge": False}
REQUESTS = [
    req(connector, anchor, project=project)
    for connector, project in CONNECTORS.items()
    for anchor in (f"{connector}-1", f"{connector}-2")
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=20))
def test_any_arrival_order_gives_one_mv_and_one_member_per_connector(arrivals: list[JoinRequest]) -> None:
    entry: JoinEntry | None = None
    produced: set[str] = set()
    linked: dict[str, set[str]] = {}
    for msg in arrivals:
        entry, outputs = join_step(entry, msg)
        assert entry is not None
        for out in outputs:
            if isinstance(out, MVContribution):
                produced.add(out.mv_id)
            if isinstance(out, CSLink) and out.outcome in ("joined", "projected"):
                linked.setdefault(out.connector, set()).add(out.anchor)
        connectors = [m.split("|", 1)[0] for m in entry.members]
        assert len(connectors) == len(set(connectors)), entry.members
    assert entry is not None
    assert len(produced) <= 1
    # each connector had at most one object linked, over the whole sequence
    assert all(len(anchors) == 1 for anchors in linked.values()), linked
    if any(r.project for r in arrivals):
        assert produced == {mv_id_for(ROUTE, 0)}
        assert entry.mv_id == mv_id_for(ROUTE, 0)
        # every connector that asked is a member, through exactly one of its objects
        assert {m.split("|", 1)[0] for m in entry.members} == {r.connector for r in arrivals}
    else:
        assert produced == set() and entry.mv_id is None
        assert set(entry.waiting) == {member_key(r.connector, r.anchor) for r in arrivals}
