"""engine.inbound.on_operator (``idsync join`` / ``disjoin`` / ``release``) and the metaverse's answer to
an explicit join of a missing object."""

from __future__ import annotations

from engine.inbound import on_operator, route
from engine.metaverse import metaverse_step
from engine.staging import stage
from schemas.messages import CSLink, JoinIndexUpdate, JoinRequest, MVContribution, MVDisconnect, OperatorLink
from schemas.state import ConnectorState
from schemas.wire import ErrorRecord

from .helpers import cs_object, demo_rules, hr_attrs, hr_contribution, of_type, record

RULES = demo_rules()
ROUTE = "person|employeeId=E1"


def op(action: str, mv_id: str | None = None, anchor: str = "E1", connector: str = "hr") -> OperatorLink:
    return OperatorLink(
        request_id="req-1", connector=connector, anchor=anchor, action=action, mv_id=mv_id, ts_ms=7_000
    )


def joined(mv_id: str = "mv-1") -> object:
    return cs_object(state=ConnectorState.CONNECTOR, mv_id=mv_id, join_route=ROUTE)


def test_disjoin_leaves_the_metaverse_object_and_becomes_an_explicit_disconnector() -> None:
    cs, outputs = on_operator(RULES, joined(), op("disjoin"))  # type: ignore[arg-type]
    assert cs is not None and cs.state == ConnectorState.EXPLICIT_DISCONNECTOR
    assert cs.mv_id is None and cs.join_route is None
    [leave] = of_type(outputs, MVDisconnect)
    assert (leave.mv_id, leave.anchor, leave.reason) == ("mv-1", "E1", "explicit")


def test_an_explicit_disconnector_is_never_joined_by_the_rules() -> None:
    cs, _ = on_operator(RULES, joined(), op("disjoin"))  # type: ignore[arg-type]
    assert cs is not None
    # a later import of the object changes values but sends no join request or contribution
    staged = stage(cs, record(after=hr_attrs(title="CTO"), version=2))
    after, outputs = route(RULES, staged, 8_000)
    assert after is not None and after.state == ConnectorState.EXPLICIT_DISCONNECTOR
    assert outputs == []
    assert on_operator(RULES, after, op("disjoin")) == (after, [])  # repeated: nothing more


def test_release_of_an_explicit_disconnector_joins_by_the_rules_again() -> None:
    cs, _ = on_operator(RULES, joined(), op("disjoin"))  # type: ignore[arg-type]
    released, outputs = on_operator(RULES, cs, op("release"))
    assert released is not None and released.state == ConnectorState.DISCONNECTOR
    [request] = of_type(outputs, JoinRequest)
    assert request.route == ROUTE and request.anchor == "E1"


def test_join_moves_the_object_to_the_named_metaverse_object_explicitly() -> None:
    cs, outputs = on_operator(RULES, joined("mv-1"), op("join", "mv-2"))  # type: ignore[arg-type]
    assert cs is not None and cs.state == ConnectorState.EXPLICIT_CONNECTOR and cs.mv_id == "mv-2"
    [leave] = of_type(outputs, MVDisconnect)
    assert leave.mv_id == "mv-1"
    [contribution] = of_type(outputs, MVContribution)
    assert contribution.mv_id == "mv-2" and contribution.explicit and contribution.route is None
    assert contribution.flows["employeeId"] == ["E1"]
    assert on_operator(RULES, cs, op("join", "mv-2")) == (cs, [])  # repeated: nothing more


def test_join_of_a_waiting_disconnector_withdraws_it_from_its_route() -> None:
    waiting = cs_object(join_route=ROUTE)
    cs, outputs = on_operator(RULES, waiting, op("join", "mv-2"))
    assert cs is not None and cs.mv_id == "mv-2" and cs.join_route is None
    assert of_type(outputs, JoinIndexUpdate) == [
        JoinIndexUpdate(route=ROUTE, connector="hr", anchor="E1", ts_ms=7_000)
    ]
    assert [c.mv_id for c in of_type(outputs, MVContribution)] == ["mv-2"]


def test_an_explicit_connector_ignores_the_connector_filter() -> None:
    cs, _ = on_operator(RULES, cs_object(), op("join", "mv-2"))
    assert cs is not None
    staged = stage(cs, record(after=hr_attrs(department="Contractors"), version=2))
    after, outputs = route(RULES, staged, 8_000)
    assert after is not None and after.state == ConnectorState.EXPLICIT_CONNECTOR
    assert of_type(outputs, MVDisconnect) == []
    [contribution] = of_type(outputs, MVContribution)
    assert contribution.mv_id == "mv-2" and contribution.flows["department"] == ["Contractors"]


def test_release_of_a_filtered_explicit_connector_lets_the_filter_disconnect_it() -> None:
    cs, _ = on_operator(RULES, cs_object(attributes=hr_attrs(department="Contractors")), op("join", "mv-2"))
    released, outputs = on_operator(RULES, cs, op("release"))
    assert released is not None and released.state == ConnectorState.FILTERED_DISCONNECTOR
    [leave] = of_type(outputs, MVDisconnect)
    assert (leave.mv_id, leave.reason) == ("mv-2", "filtered")


def test_a_missing_object_or_rule_is_a_per_object_error() -> None:
    cs, outputs = on_operator(RULES, None, op("disjoin", anchor="nobody"))
    assert cs is None
    [err] = of_type(outputs, ErrorRecord)
    assert err.error_type == "cs-object-not-found" and err.anchor == "nobody" and "req-1" in err.message
    ldap = cs_object(connector="ldap", object_type="group", attributes={"cn": ["g"]})
    same, outputs = on_operator(RULES, ldap, op("join", "mv-2", connector="ldap"))
    assert same is ldap
    [err] = of_type(outputs, ErrorRecord)
    assert err.error_type == "explicit-join-without-rule" and err.algorithm_step == "join"


def test_explicit_join_to_a_missing_metaverse_object_is_refused_with_an_error() -> None:
    _cs, outputs = on_operator(RULES, cs_object(), op("join", "mv-missing"))
    [contribution] = of_type(outputs, MVContribution)
    mv, answers = metaverse_step(RULES, None, contribution)
    assert mv is None  # never created by an explicit join
    [link] = of_type(answers, CSLink)
    assert (link.outcome, link.mv_id) == ("unlinked", None)
    [err] = of_type(answers, ErrorRecord)
    assert err.error_type == "explicit-join-target-missing" and err.mv_id == "mv-missing"


def test_explicit_join_adds_the_link_to_an_existing_metaverse_object() -> None:
    mv, _ = metaverse_step(RULES, None, hr_contribution(RULES, "mv-2", projected=True))
    assert mv is not None
    other = cs_object(anchor="E9", attributes=hr_attrs(employee_id="E9"))
    _cs, outputs = on_operator(RULES, other, op("join", "mv-2", anchor="E9"))
    [contribution] = of_type(outputs, MVContribution)
    after, answers = metaverse_step(RULES, mv, contribution)
    assert after is not None
    # the metaverse already has an hr object (E1): a second one of that connector is refused
    [err] = of_type(answers, ErrorRecord)
    assert err.error_type == "ambiguous-join" and set(after.links) == {"hr"}


def test_explicit_join_links_an_object_the_rules_would_not_join() -> None:
    mv, _ = metaverse_step(RULES, None, hr_contribution(RULES, "mv-2", projected=True))
    assert mv is not None
    # a badge whose join value matches nobody: the rules leave it a disconnector
    badge = cs_object(
        anchor="B7",
        connector="badge",
        object_type="badge",
        attributes={"badge_id": ["B7"], "employee": ["E404"], "site": ["Leeds"]},
    )
    cs, outputs = on_operator(RULES, badge, op("join", "mv-2", anchor="B7", connector="badge"))
    assert cs is not None and cs.state == ConnectorState.EXPLICIT_CONNECTOR
    [contribution] = of_type(outputs, MVContribution)
    after, answers = metaverse_step(RULES, mv, contribution)
    assert after is not None and after.links["badge"].anchor == "B7"
    assert after.attributes["location"] == ["London"]  # hr ranks first; badge's value is not taken
    assert of_type(answers, ErrorRecord) == []
    assert of_type(answers, CSLink) == []
