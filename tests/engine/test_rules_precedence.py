"""Precedence (ranked, equal), authoritative nulls, recall, and the join keys the metaverse registers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from engine.join import mv_id_for
from engine.metaverse import metaverse_step
from engine.rules import Rules, compile_rules
from schemas.config import IdsyncConfig
from schemas.messages import JoinIndexUpdate, MVContribution
from schemas.state import MVObject
from schemas.wire import ErrorRecord, MVChange

from .helpers import badge_contribution, demo_config_dict, disconnect, hr_attrs, hr_contribution, of_type

MV_ID = mv_id_for("person|employeeId=E1", 0)
TIE = "ambiguous-import-flow-from-multiple-connectors"


def rules_with(attributes: dict[str, Any], deletion: str = "last-connector", **hr_rule: Any) -> Rules:
    cfg = demo_config_dict()
    cfg["metaverse"] = {
        "person": {"attributes": attributes, "deletion": {"rule": deletion, "sources": ["hr"]}}
    }
    cfg["outbound"] = []
    cfg["inbound"][0].update(hr_rule)
    return compile_rules(IdsyncConfig.model_validate(cfg))


def hr(
    rules: Rules, src_ts: int, version: int = 1, projected: bool = False, **attrs: str | None
) -> MVContribution:
    msg = hr_contribution(rules, MV_ID, hr_attrs(**attrs), version=version, projected=projected)
    return replace(msg, source_ts_ms=src_ts)


def badge(flows: dict[str, list[str]], src_ts: int, version: int = 1) -> MVContribution:
    msg = badge_contribution(MV_ID, flows, version=version, ts_ms=90_000 + version)
    return replace(msg, source_ts_ms=src_ts)


def apply(rules: Rules, mv: MVObject | None, *msgs: MVContribution) -> tuple[MVObject, list[object]]:
    outputs: list[object] = []
    for msg in msgs:
        mv, out = metaverse_step(rules, mv, msg)
        outputs += out
    assert mv is not None
    return mv, outputs


# --------------------------------------------------------------------------- equal precedence
EQUAL = {"title": {"precedence": "equal"}, "mail": {"precedence": "equal"}}


def test_equal_precedence_latest_source_change_wins_per_attribute() -> None:
    rules = rules_with(EQUAL)
    mv, _ = apply(rules, None, hr(rules, 100, projected=True))
    # badge ranks lower (50 vs 10) but changed mail and title later
    mv, _ = apply(rules, mv, badge({"mail": ["b@x.org"], "title": ["Badge title"]}, 200))
    assert mv.attributes["mail"] == ["b@x.org"] and mv.attributes["title"] == ["Badge title"]
    assert mv.contributors["mail"] == "badge"
    # hr changes the title only: its mail change is still older than badge's
    mv, _ = apply(rules, mv, hr(rules, 300, version=2, title="Lead"))
    assert mv.attributes["title"] == ["Lead"] and mv.contributors["title"] == "hr"
    assert mv.attributes["mail"] == ["b@x.org"]
    # ranked attributes keep ranked precedence
    mv, _ = apply(
        rules, mv, badge({"mail": ["b@x.org"], "title": ["Badge title"], "location": ["Leeds"]}, 400, 2)
    )
    assert mv.attributes["location"] == ["London"]


def test_equal_precedence_tie_is_deterministic_and_reported() -> None:
    rules = rules_with(EQUAL)
    first = hr(rules, 100, projected=True)
    b = badge({"mail": ["b@x.org"]}, 100)
    mv, outputs = apply(rules, None, first, b)
    assert mv.attributes["mail"] == ["b@x.org"]  # same time, different values: "badge" < "hr"
    [warning] = of_type(outputs, ErrorRecord)
    assert (warning.error_type, warning.algorithm_step, warning.mv_id) == (TIE, "import-flow", MV_ID)
    assert "mail" in warning.message and "badge and hr" in warning.message
    # the same values at the same time are no tie
    _mv, outputs = apply(rules, None, first, badge({"mail": ["gabriel.white@example.org"]}, 100))
    assert of_type(outputs, ErrorRecord) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["hr", "badge"]), st.integers(1, 4), st.sampled_from(["a", "b", "c"])),
        min_size=1,
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_equal_precedence_result_does_not_depend_on_arrival_order(
    changes: list[tuple[str, int, str]], rnd: Any
) -> None:
    rules = rules_with(EQUAL)
    versions = {"hr": 1, "badge": 0}
    msgs: list[MVContribution] = []
    for connector, ts, value in changes:
        versions[connector] += 1
        v = versions[connector]
        if connector == "hr":
            msgs.append(hr(rules, ts * 100 + v, version=v, title=value))
        else:
            msgs.append(badge({"title": [value]}, ts * 100 + v, version=v))
    start = hr(rules, 0, projected=True)

    def final(order: list[MVContribution]) -> tuple[Any, Any]:
        # processing time (ts_ms) follows the arrival order, as in the stage; source time does not
        arrived = [replace(m, ts_ms=10_000 + i) for i, m in enumerate(order)]
        mv, _ = apply(rules, None, start, *arrived)
        return mv.attributes.get("title"), mv.contributors.get("title")

    # each connector's own changes arrive in order; the two streams interleave at random
    def interleave() -> list[MVContribution]:
        streams = {c: [m for m in msgs if m.connector == c] for c in ("hr", "badge")}
        out: list[MVContribution] = []
        while any(streams.values()):
            c = rnd.choice([k for k, v in streams.items() if v])
            out.append(streams[c].pop(0))
        return out

    assert final(interleave()) == final(interleave()) == final(msgs)


# --------------------------------------------------------------------------- null handling
def test_authoritative_null_wins_over_lower_ranked_value() -> None:
    flows = demo_config_dict()["inbound"][0]["flows"]
    flows = [{**f, "authoritative_null": True} if f["mv"] == "mail" else f for f in flows]
    rules = rules_with({}, flows=flows)
    mv, _ = apply(rules, None, hr(rules, 1, projected=True), badge({"mail": ["b@x.org"]}, 2))
    mv, outputs = apply(rules, mv, hr(rules, 3, version=2, email=None))
    assert "mail" not in mv.attributes
    assert mv.contributors["mail"] == "hr"
    assert of_type(outputs, MVChange)[0].changed == ["mail"]


# --------------------------------------------------------------------------- recall
def test_recall_false_keeps_the_value_until_a_flow_changes_it() -> None:
    rules = rules_with({"location": {"recall": False}})
    mv, _ = apply(
        rules, None, hr(rules, 1, projected=True), badge({"location": ["Leeds"], "mail": ["b@x.org"]}, 2)
    )
    assert mv.attributes["location"] == ["London"]
    mv, _ = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1"))
    assert mv is not None and not mv.deleted  # badge is still there (last-connector rule)
    assert mv.attributes["location"] == ["London"]  # no recall: hr's value stays
    assert mv.contributors["location"] == "hr"
    assert mv.attributes["mail"] == ["b@x.org"]  # recall (default): hr's mail withdrawn, badge's shows
    # badge re-sends the same location: not a change, the retained value stays
    mv, _ = apply(rules, mv, badge({"location": ["Leeds"], "mail": ["b@x.org"]}, 3, version=2))
    assert mv.attributes["location"] == ["London"]
    # badge changes it: its flow overwrites the retained value
    mv, _ = apply(rules, mv, badge({"location": ["York"], "mail": ["b@x.org"]}, 4, version=3))
    assert mv.attributes["location"] == ["York"] and mv.retained == {}


def test_recall_true_withdraws_values() -> None:
    rules = rules_with({})
    mv, _ = apply(rules, None, hr(rules, 1, projected=True), badge({"location": ["Leeds"]}, 2))
    mv, _ = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1"))
    assert mv is not None
    assert mv.attributes == {"location": ["Leeds"]}


# --------------------------------------------------------------------------- join keys in the index
def grouped_rules(resolver: str | None = None) -> Rules:
    cfg = demo_config_dict()
    hr_rule = cfg["inbound"][0]
    hr_rule.pop("join")
    hr_rule["join_groups"] = [[{"cs": "employee_id", "mv": "employeeId"}], [{"cs": "email", "mv": "mail"}]]
    if resolver:
        hr_rule["resolver"] = resolver
    cfg["outbound"] = []
    return compile_rules(IdsyncConfig.model_validate(cfg))


def test_metaverse_registers_its_join_values_and_follows_changes() -> None:
    rules = grouped_rules()
    mail_route = "person|mail=gabriel.white@example.org"
    projected = replace(hr(rules, 1, projected=True), routes=[mail_route])
    mv, outputs = apply(rules, None, projected)
    # the projection's claims already registered both routes: nothing to send
    assert of_type(outputs, JoinIndexUpdate) == []
    assert mv.projected_route == "person|employeeId=E1" and mv.join_keys == [mail_route]
    mv, outputs = apply(rules, mv, hr(rules, 2, version=2, email="gw@example.org"))
    assert [(u.op, u.route) for u in of_type(outputs, JoinIndexUpdate)] == [
        ("register", "person|mail=gw@example.org"),
        ("unregister", mail_route),
    ]
    # deleted: every route that finds it is told
    _mv, outputs = metaverse_step(rules, mv, disconnect(MV_ID, "hr", "E1", version=2))
    gone = sorted(u.route for u in of_type(outputs, JoinIndexUpdate) if u.mv_deleted)
    assert gone == ["person|employeeId=E1", "person|mail=gw@example.org"]


def test_resolver_types_keep_candidate_attributes_fresh() -> None:
    rules = grouped_rules("tests.engine.hooks:same_department")
    mv, outputs = apply(rules, None, hr(rules, 1, projected=True))
    registered = of_type(outputs, JoinIndexUpdate)
    assert {u.route for u in registered} == {"person|employeeId=E1", "person|mail=gabriel.white@example.org"}
    assert all(
        u.op == "register" and (u.attributes or {}).get("department") == ["Engineering"] for u in registered
    )
    _mv, outputs = apply(rules, mv, hr(rules, 2, version=2, department="Operations"))
    refreshed = of_type(outputs, JoinIndexUpdate)
    assert len(refreshed) == 2 and all(
        (u.attributes or {})["department"] == ["Operations"] for u in refreshed
    )
