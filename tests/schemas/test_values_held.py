"""schemas.state.values_held: the weight of a decoded state object, by the values it holds."""

from __future__ import annotations

from schemas.state import ConnectorLink, CSObject, JoinEntry, LedgerEntry, MVObject, TargetState, values_held


def test_a_connector_space_object_weighs_one_plus_its_values() -> None:
    cs = CSObject(
        connector="dir", anchor="g", object_type="group", attributes={"member": ["a", "b"], "cn": ["g"]}
    )
    assert values_held(cs) == 4


def test_a_metaverse_object_counts_every_copy_of_its_members() -> None:
    members = [f"m{i}" for i in range(5)]
    link = ConnectorLink(
        anchor="g",
        flows={"member": members},
        image={"member": members},
        refs={"member": dict.fromkeys(members, "")},
    )
    target = TargetState(
        ref_dns=dict.fromkeys(members, "cn=x"),
        ledger={"member": LedgerEntry(values=members[:2], removed=["m9"], seq=1)},
    )
    mv = MVObject(
        mv_id="g",
        object_type="group",
        attributes={"member": members},
        links={"dir": link},
        targets={"dir": target},
    )
    # the object, its values, the link's flows, image and references, the target's DNs and ledger
    assert values_held(mv) == 1 + 5 + 5 + 5 + 5 + 5 + 3


def test_other_state_weighs_one() -> None:
    assert values_held(JoinEntry()) == 1
    assert values_held(None) == 1
