"""Join rules with ordered mapping groups, resolver hooks and projection claims (engine.join)."""

from __future__ import annotations

import random
from collections import defaultdict, deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from engine.inbound import route as inbound_route
from engine.join import candidates, join_routes, join_step, mv_id_for, mv_join_keys
from engine.metaverse import metaverse_step
from engine.rules import Rules, compile_rules
from engine.staging import apply_link, stage
from schemas.config import IdsyncConfig
from schemas.messages import CSLink, JoinIndexUpdate, JoinRequest, MVContribution, MVDisconnect
from schemas.state import JoinEntry, MVObject
from schemas.wire import ErrorRecord

from .helpers import cs_object, demo_config_dict, hr_attrs, record

BY_ID = "person|employeeId=E1"
BY_MAIL = "person|mail=g@example.org"
OTHER_MAIL = "person|mail=h@example.org"


def config(resolver: str | None = None, **rule: Any) -> IdsyncConfig:
    cfg = demo_config_dict()
    hr = cfg["inbound"][0]
    hr.pop("join")
    hr["join_groups"] = [
        [{"cs": "employee_id", "mv": "employeeId"}],
        [{"cs": "email", "mv": "mail", "normalize": ["trim", "lower"]}],
    ]
    hr.update(rule)
    if resolver is not None:
        hr["resolver"] = resolver
    return IdsyncConfig.model_validate(cfg)


def request(
    connector: str,
    anchor: str,
    routes: list[str],
    *,
    project: bool,
    version: int = 1,
    attrs: dict[str, list[str]] | None = None,
    object_type: str | None = None,
) -> JoinRequest:
    return JoinRequest(
        route=routes[0],
        routes=routes if len(routes) > 1 else [],
        mv_type="person",
        connector=connector,
        anchor=anchor,
        dn=None,
        cs_version=version,
        event_id=f"{connector}:{anchor}:{version}",
        project=project,
        flows={"source": [connector], "version": [str(version)]},
        ts_ms=1_000 * version,
        object_type=object_type,
        cs_attributes=attrs,
    )


def register(route: str, mv_id: str, attributes: dict[str, list[str]] | None = None) -> JoinIndexUpdate:
    """What the metaverse step sends when an object's attribute values give ``route``."""
    return JoinIndexUpdate(route=route, op="register", mv_id=mv_id, attributes=attributes, ts_ms=1)


class Network:
    """Join-index entries keyed by route, with a FIFO queue per route (a Kafka key keeps its order)."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules
        self.entries: dict[str, JoinEntry] = {}
        self.queues: dict[str, deque[JoinRequest | JoinIndexUpdate]] = defaultdict(deque)
        self.outputs: list[object] = []

    def send(self, *msgs: JoinRequest | JoinIndexUpdate) -> None:
        for msg in msgs:
            self.queues[msg.route].append(msg)

    def run(self, rnd: random.Random | None = None) -> list[object]:
        """Deliver until quiet (in route order, or a random route each time); returns the new outputs."""
        start = len(self.outputs)
        while True:
            ready = sorted(r for r, q in self.queues.items() if q)
            if not ready:
                return self.outputs[start:]
            route = rnd.choice(ready) if rnd is not None else ready[0]
            msg = self.queues[route].popleft()
            entry, outputs = join_step(self.entries.get(route), msg, self.rules)
            assert entry is not None
            self.entries[route] = entry
            for out in outputs:
                if isinstance(out, JoinRequest | JoinIndexUpdate):
                    self.send(out)
                else:
                    self.outputs.append(out)

    def links(self) -> list[CSLink]:
        return [o for o in self.outputs if isinstance(o, CSLink)]

    def errors(self) -> list[ErrorRecord]:
        return [o for o in self.outputs if isinstance(o, ErrorRecord)]

    def quiet(self) -> None:
        """No claims, parked projections or attempts left in flight."""
        for route, entry in self.entries.items():
            assert entry.claim is None, route
            assert entry.parked == [], route
            assert not [t for t in entry.tickets.values() if t.active], route


def linked(outputs: list[object]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for o in outputs:
        if isinstance(o, CSLink) and o.outcome in ("joined", "projected") and o.mv_id is not None:
            out[f"{o.connector}|{o.anchor}"].add(o.mv_id)
    return out


# --------------------------------------------------------------------------- config and routes
def test_join_shorthand_is_one_mapping_group() -> None:
    rules = compile_rules(IdsyncConfig.model_validate(demo_config_dict()))
    rule = rules.inbound_rule("hr", "employee")
    assert rule is not None
    assert [[c.mv for c in g] for g in rule.mapping_groups()] == [["employeeId"]]


def test_routes_follow_group_order_and_skip_groups_without_values() -> None:
    rule = config().inbound_rule("hr", "employee")
    assert rule is not None
    both = cs_object(attributes={"employee_id": ["E1"], "email": [" G@Example.org "]})
    assert join_routes(rule, both) == [BY_ID, BY_MAIL]
    mail_only = cs_object(attributes={"email": ["g@example.org"]})
    assert join_routes(rule, mail_only) == [BY_MAIL]
    nothing = cs_object(attributes={"cn": ["x"]})
    assert join_routes(rule, nothing) == ["person|cs|hr|E1"]
    assert join_routes(rule, nothing, project=False) == []


def test_metaverse_join_keys_cover_every_group_and_value() -> None:
    sigs = compile_rules(config()).join_signatures["person"]
    keys = mv_join_keys("person", sigs, {"employeeId": ["E1"], "mail": ["G@example.org", "h@example.org"]})
    assert keys == [BY_ID, BY_MAIL, OTHER_MAIL]
    assert mv_join_keys("person", sigs, {"cn": ["x"]}) == []


# --------------------------------------------------------------------------- search
def test_miss_in_first_group_falls_through_to_second() -> None:
    net = Network()
    net.send(register(BY_MAIL, "mv-mail"))
    net.run()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False))
    outputs = net.run()
    [contrib] = [o for o in outputs if isinstance(o, MVContribution)]
    assert (contrib.mv_id, contrib.route, contrib.projected) == ("mv-mail", BY_MAIL, False)
    assert contrib.routes == [BY_ID]  # the home route hears when the object goes
    assert [(lk.outcome, lk.mv_id) for lk in net.links()] == [("joined", "mv-mail")]
    home = net.entries[BY_ID]
    assert home.waiting == {} and home.tickets["ldap|L1"].linked == "mv-mail"
    net.quiet()


def test_first_group_with_a_match_decides() -> None:
    net = Network()
    net.send(register(BY_ID, "mv-id"), register(BY_MAIL, "mv-mail"))
    net.run()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False))
    net.run()
    assert [(lk.outcome, lk.mv_id) for lk in net.links()] == [("joined", "mv-id")]


def test_several_matches_in_a_group_is_ambiguous_and_stops() -> None:
    net = Network()
    net.send(register(BY_ID, "mv-a"), register(BY_ID, "mv-b"), register(BY_MAIL, "mv-c"))
    net.run()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=True))
    net.run()
    [link] = net.links()
    assert link.outcome == "ambiguous" and link.mv_id is None
    [err] = net.errors()
    assert (err.error_type, err.algorithm_step, err.connector, err.anchor) == (
        "ambiguous-join",
        "join",
        "ldap",
        "L1",
    )
    assert "mv-a" in err.message and "mv-b" in err.message
    assert not [o for o in net.outputs if isinstance(o, MVContribution)]  # no fall-through, no projection
    net.quiet()


def test_no_match_in_any_group_projects_at_home_and_claims_every_route() -> None:
    net = Network()
    net.send(request("hr", "E1", [BY_ID, BY_MAIL], project=True))
    outputs = net.run()
    mv_id = mv_id_for(BY_ID, 0)
    [contrib] = [o for o in outputs if isinstance(o, MVContribution)]
    assert (contrib.mv_id, contrib.projected, contrib.route, contrib.routes) == (
        mv_id,
        True,
        BY_ID,
        [BY_MAIL],
    )
    assert net.entries[BY_ID].mv_id == mv_id and net.entries[BY_ID].members == ["hr|E1"]
    # the second group's route finds the new object at once (no gap before the metaverse registers it)
    assert candidates(net.entries[BY_MAIL]) == [mv_id]
    net.quiet()


def test_non_projecting_object_waits_on_every_route_and_is_woken_by_any() -> None:
    net = Network()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False))
    assert net.run() == []
    assert set(net.entries[BY_ID].waiting) == {"ldap|L1"}
    assert set(net.entries[BY_MAIL].waiting) == {"ldap|L1"}
    net.send(register(BY_MAIL, "mv-1"))  # a metaverse object got this mail (invariant 3)
    net.run()
    assert [(lk.outcome, lk.mv_id) for lk in net.links()] == [("joined", "mv-1")]
    assert net.entries[BY_ID].waiting == {}
    net.quiet()


def test_single_group_waiter_joins_when_metaverse_registers_the_value() -> None:
    entry, outputs = join_step(None, request("ldap", "L1", [BY_ID], project=False))
    assert outputs == [] and entry is not None
    entry, outputs = join_step(entry, register(BY_ID, "mv-1"))
    assert [(o.outcome, o.mv_id) for o in outputs if isinstance(o, CSLink)] == [("joined", "mv-1")]
    assert entry is not None and entry.waiting == {}


def test_newer_request_during_an_attempt_runs_after_it() -> None:
    net = Network()
    net.send(register(BY_MAIL, "mv-1"))
    net.run()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False, version=1))
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False, version=2))
    net.run()
    contribs = [o for o in net.outputs if isinstance(o, MVContribution)]
    # one search, and the newer values are contributed to the object it joined
    assert [(c.mv_id, c.cs_version) for c in contribs] == [("mv-1", 1), ("mv-1", 2)]
    assert linked(net.outputs) == {"ldap|L1": {"mv-1"}}
    net.quiet()


def test_withdrawn_object_forgets_its_attempt_and_waiting() -> None:
    net = Network()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False))
    net.run()
    net.send(*(JoinIndexUpdate(route=r, connector="ldap", anchor="L1", ts_ms=5) for r in (BY_ID, BY_MAIL)))
    net.run()
    net.send(register(BY_MAIL, "mv-1"))
    net.run()
    assert net.links() == []


def test_deleted_metaverse_object_leaves_the_route_and_the_ticket() -> None:
    net = Network()
    net.send(register(BY_MAIL, "mv-1"))
    net.run()
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False))
    net.run()
    net.send(*(JoinIndexUpdate(route=r, mv_id="mv-1", mv_deleted=True, ts_ms=9) for r in (BY_ID, BY_MAIL)))
    net.run()
    assert candidates(net.entries[BY_MAIL]) == []
    assert net.entries[BY_ID].tickets["ldap|L1"].linked is None
    # staging routes it again (CSLink unlinked): a fresh attempt, nothing to join any more
    net.send(request("ldap", "L1", [BY_ID, BY_MAIL], project=False, version=2))
    net.run()
    assert set(net.entries[BY_MAIL].waiting) == {"ldap|L1"}


# --------------------------------------------------------------------------- claims (invariant 2)
def test_claimed_route_parks_a_second_projection_until_the_commit() -> None:
    net = Network()
    a = request("hr", "A", [BY_ID, BY_MAIL], project=True)
    b = request("crm", "B", ["person|employeeId=E2", BY_MAIL], project=True)
    net.send(a, b)
    rnd = random.Random(7)
    net.run(rnd)
    projected = {o.mv_id for o in net.outputs if isinstance(o, MVContribution) and o.projected}
    assert len(projected) == 1  # they share the mail: one metaverse object
    assert {frozenset(v) for v in linked(net.outputs).values()} == {frozenset(projected)}
    net.quiet()


def test_lock_order_is_global_so_crossed_groups_do_not_deadlock() -> None:
    # a's groups in one order, b's in the other: sorted claiming cannot deadlock
    for seed in range(30):
        net = Network()
        net.send(request("hr", "A", [BY_ID, BY_MAIL], project=True))
        net.send(request("crm", "B", [BY_MAIL, BY_ID], project=True))
        net.run(random.Random(seed))
        net.quiet()
        assert len({o.mv_id for o in net.outputs if isinstance(o, MVContribution)}) == 1


# --------------------------------------------------------------------------- resolver hook
def hook_rules(name: str) -> Rules:
    return compile_rules(config(resolver=f"tests.engine.hooks:{name}"))


def test_resolver_chooses_among_candidates() -> None:
    net = Network(hook_rules("same_department"))
    net.send(
        register(BY_ID, "mv-eng", {"department": ["Engineering"]}),
        register(BY_ID, "mv-ops", {"department": ["Operations"]}),
    )
    net.run()
    net.send(
        request(
            "hr",
            "E1",
            [BY_ID, BY_MAIL],
            project=True,
            attrs={"department": ["Operations"]},
            object_type="employee",
        )
    )
    net.run()
    assert [(lk.outcome, lk.mv_id) for lk in net.links()] == [("joined", "mv-ops")]
    assert net.errors() == []


def test_resolver_none_passes_to_the_next_group_then_projection() -> None:
    net = Network(hook_rules("refuse"))
    net.send(register(BY_ID, "mv-a"), register(BY_MAIL, "mv-b"))
    net.run()
    net.send(request("hr", "E1", [BY_ID, BY_MAIL], project=True, attrs={}, object_type="employee"))
    net.run()
    [link] = net.links()
    # no group gave a match: projection, although both routes have (refused) candidates
    assert link.outcome == "projected" and link.mv_id == mv_id_for(BY_ID, 0)
    net.quiet()


def test_resolver_exception_is_a_per_object_resolver_error() -> None:
    net = Network(hook_rules("explode"))
    net.send(register(BY_ID, "mv-a"))
    net.run()
    net.send(request("hr", "E1", [BY_ID, BY_MAIL], project=True, attrs={}, object_type="employee"))
    net.run()
    [link] = net.links()
    assert link.outcome == "ambiguous"  # stays a disconnector
    [err] = net.errors()
    assert (err.error_type, err.algorithm_step, err.anchor) == ("resolver-error", "join", "E1")
    assert "RuntimeError: no rule for E1" in err.message
    assert err.detail is not None and "Traceback" in err.detail and "explode" in err.detail
    net.quiet()


def test_resolver_choosing_a_stranger_is_a_resolver_error() -> None:
    net = Network(hook_rules("stranger"))
    net.send(register(BY_ID, "mv-a"))
    net.run()
    net.send(request("hr", "E1", [BY_ID, BY_MAIL], project=True, attrs={}, object_type="employee"))
    net.run()
    [err] = net.errors()
    assert err.error_type == "resolver-error" and "not-a-candidate" in err.message


# --------------------------------------------------------------------------- property: any arrival order
IDS = ["E1", "E2", "E3"]
MAILS = ["x", "y"]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[JoinRequest], random.Random]:
    requests: list[JoinRequest] = []
    for i, connector in enumerate(["hr", "crm", "ldap", "badge", "sap"]):
        emp = draw(st.sampled_from([*IDS, None]))
        mail = draw(st.sampled_from([*MAILS, None]))
        routes = [r for r in (emp and f"person|employeeId={emp}", mail and f"person|mail={mail}") if r]
        if draw(st.booleans()):
            routes.reverse()  # groups in either order
        project = i < 2 or draw(st.booleans())
        if not routes:
            if not project:
                continue
            routes = [f"person|cs|{connector}|{i}"]
        for version in range(1, draw(st.integers(1, 2)) + 1):
            requests.append(request(connector, str(i), routes, project=project, version=version))
    return requests, draw(st.randoms(use_true_random=False))


@settings(max_examples=250, deadline=None)
@given(scenario())
def test_any_arrival_order_never_gives_two_objects_one_join_value(
    case: tuple[list[JoinRequest], Any],
) -> None:
    requests, rnd = case
    net = Network()
    order = list(requests)
    rnd.shuffle(order)
    # each object's own requests stay in version order (staging emits them in order)
    by_object: dict[str, list[JoinRequest]] = defaultdict(list)
    for r in order:
        by_object[r.connector].append(r)
    for reqs in by_object.values():
        reqs.sort(key=lambda r: r.cs_version)
    pending = {k: deque(v) for k, v in by_object.items()}
    while pending:
        key = rnd.choice(sorted(pending))
        net.send(pending[key].popleft())
        if not pending[key]:
            del pending[key]
        # interleave deliveries with arrivals
        for _ in range(rnd.randint(0, 3)):
            ready = sorted(r for r, q in net.queues.items() if q)
            if not ready:
                break
            route = rnd.choice(ready)
            msg = net.queues[route].popleft()
            entry, outputs = join_step(net.entries.get(route), msg)
            assert entry is not None
            net.entries[route] = entry
            for out in outputs:
                if isinstance(out, JoinRequest | JoinIndexUpdate):
                    net.send(out)
                else:
                    net.outputs.append(out)
    net.run(rnd)
    net.quiet()
    # invariant 2: every join value (route) finds at most one metaverse object
    for route, entry in net.entries.items():
        assert len(candidates(entry)) <= 1, (route, candidates(entry))
    # invariant 1: an object links to one metaverse object, whatever the attempts
    links = linked(net.outputs)
    assert all(len(v) == 1 for v in links.values()), links
    for r in requests:
        member = f"{r.connector}|{r.anchor}"
        routes = r.routes or [r.route]
        found = {m for route in routes for m in candidates(net.entries.get(route, JoinEntry()))}
        if r.project:
            assert member in links, member  # projected or joined, never left behind
        elif member not in links:
            assert not found, (member, found)  # waiting only while nothing matches (invariant 3)
    assert not [e for e in net.errors() if e.error_type != "ambiguous-join"]


# --------------------------------------------------------------------------- staging -> join -> metaverse
def test_directory_object_joins_by_second_group_over_a_metaverse_value() -> None:
    cfg = demo_config_dict()
    ldap = cfg["inbound"][2]
    ldap.pop("join")
    ldap["join_groups"] = [
        [{"cs": "employeeNumber", "mv": "employeeId"}],
        [{"cs": "mail", "mv": "mail", "normalize": ["trim", "lower"]}],
    ]
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    net = Network(rules)
    mvs: dict[str, MVObject | None] = {}

    def flow(outputs: list[object]) -> None:
        """Join messages to the index, contributions to the metaverse step, until quiet."""
        todo = list(outputs)
        while todo:
            for o in todo:
                if isinstance(o, JoinRequest | JoinIndexUpdate):
                    net.send(o)
            todo = [o for o in todo if isinstance(o, MVContribution)] + net.run()
            nxt: list[object] = []
            for o in todo:
                if isinstance(o, MVContribution):
                    mvs[o.mv_id], out = metaverse_step(rules, mvs.get(o.mv_id), o)
                    nxt += out
            todo = [o for o in nxt if isinstance(o, JoinIndexUpdate | JoinRequest)]

    # hr projects by employeeId only; the metaverse step registers the person's mail for ldap's second group
    _cs, outputs = inbound_route(rules, stage(None, record(after=hr_attrs())), ts_ms=1)
    flow(list(outputs))
    [mv_id] = mvs
    assert candidates(net.entries["person|mail=gabriel.white@example.org"]) == [mv_id]
    # an existing directory entry without employeeNumber, mail in another case
    entry = {"mail": ["Gabriel.White@example.org"], "cn": ["Gabriel White"]}
    staged = stage(None, record("uuid-9", entry, connector="ldap", object_type="person", dn="cn=gw,dc=org"))
    cs, outputs = inbound_route(rules, staged, ts_ms=2)
    assert cs is not None and cs.join_route == "person|mail=gabriel.white@example.org"
    flow(list(outputs))
    joined = [lk for lk in net.links() if lk.connector == "ldap"]
    assert [(lk.outcome, lk.mv_id) for lk in joined] == [("joined", mv_id)]
    mv = mvs[mv_id]
    assert mv is not None and set(mv.links) == {"hr", "ldap"}


def test_staging_keeps_routes_while_ambiguous_and_drops_them_when_unlinked() -> None:
    cs = replace(cs_object(join_route=BY_ID), join_routes=[BY_ID, BY_MAIL])
    assert apply_link(cs, None, "ambiguous").join_routes == [BY_ID, BY_MAIL]
    unlinked = apply_link(cs, None, "unlinked")
    assert unlinked.join_route is None and unlinked.join_routes == []
    joined = apply_link(cs, "mv-1", "joined")
    assert joined.mv_id == "mv-1" and joined.join_routes == [BY_ID, BY_MAIL]


def test_connected_object_leaving_tells_its_home_to_forget_the_join() -> None:
    rules = compile_rules(config())
    cs = replace(cs_object(mv_id="mv-1", join_route=BY_ID), join_routes=[BY_ID, BY_MAIL])
    _cs, outputs = inbound_route(rules, stage(cs, record(op="d", version=2)), ts_ms=5)
    assert [type(o) for o in outputs] == [MVDisconnect, JoinIndexUpdate]
    leave = outputs[1]
    assert isinstance(leave, JoinIndexUpdate) and (leave.route, leave.op) == (BY_ID, "leave")
    # at the home: the ticket no longer points at the object it joined
    net = Network()
    net.send(register(BY_MAIL, "mv-1"))
    net.run()
    net.send(request("hr", "E1", [BY_ID, BY_MAIL], project=False))
    net.run()
    assert net.entries[BY_ID].tickets["hr|E1"].linked == "mv-1"
    net.send(leave)
    net.run()
    assert net.entries[BY_ID].tickets["hr|E1"].linked is None
