"""Import and export flow kinds, CEL expressions, projection conditions, rule configuration errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engine.flow import evaluate_export_flows, evaluate_import_flows
from engine.inbound import route
from engine.metaverse import metaverse_step
from engine.rules import compile_rules
from engine.staging import stage
from schemas.config import ExportFlowConfig, IdsyncConfig, ImportFlowConfig
from schemas.errors import ConfigError
from schemas.messages import JoinRequest, MVContribution
from schemas.wire import ErrorRecord, PendingExport
from streams.config import parse_config

from .helpers import HR_CSV, cs_object, demo_config_dict, hr_attrs, hr_contribution, of_type, record

DN = r"cn=White\, Gabriel,ou=people,dc=example,dc=org"


def flows(*specs: dict[str, Any]) -> list[ImportFlowConfig]:
    return [ImportFlowConfig.model_validate(s) for s in specs]


def run(specs: list[dict[str, Any]], attrs: dict[str, list[str]], **kw: Any) -> tuple[Any, Any]:
    return evaluate_import_flows(flows(*specs), attrs, **kw)


# --------------------------------------------------------------------------- import flow kinds
def test_direct_constant_template() -> None:
    values, issues = run(
        [
            {"mv": "sn", "source": "last_name"},
            {"mv": "kind", "constant": "employee"},
            {"mv": "tags", "constant": ["a", "b"]},
            {"mv": "displayName", "template": "{first_name} {last_name}"},
            {"mv": "missing", "template": "{nope}"},
        ],
        hr_attrs(),
    )
    assert issues == []
    assert values == {
        "sn": ["White"],
        "kind": ["employee"],
        "tags": ["a", "b"],
        "displayName": ["Gabriel White"],
        "missing": [],
    }


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('cs.first_name + "." + cs.last_name.lowerAscii()', ["Gabriel.white"]),
        ('cs.department == "Engineering" ? "ENG" : "OTHER"', ["ENG"]),
        ("cs.nope", []),  # a missing attribute is null, as in a template
        ('has(cs.nope) ? cs.nope : "default"', ["default"]),
        ("cs_all.groups", ["g1", "g2"]),
        ("cs_all.groups.map(g, g.upperAscii())", ["G1", "G2"]),
        ("size(cs_all.groups) > 1", ["true"]),
        ("int(cs.level) * 2", ["14"]),
        ('cs.first_name.startsWith("X")', ["false"]),
        ('""', []),
        ("null", []),
        ("dn", [DN]),
        ('timestamp("2024-03-05T01:02:03Z")', ["2024-03-05T01:02:03+00:00"]),
    ],
)
def test_expression_flow(expression: str, expected: list[str]) -> None:
    attrs = {**hr_attrs(), "groups": ["g1", "g2"], "level": ["7"]}
    values, issues = run([{"mv": "out", "expression": expression}], attrs, dn=DN)
    assert issues == []
    assert values == {"out": expected}


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("cs.first_name + 1", "TypeError"),
        ("1 / 0", "ZeroDivisionError"),
        ('{"a": "b"}', "dict"),
        ("[[1], [2]]", "list of lists"),
    ],
)
def test_expression_failing_on_an_object_is_a_per_object_issue(expression: str, why: str) -> None:
    values, issues = run(
        [{"mv": "out", "expression": expression}, {"mv": "sn", "source": "last_name"}], hr_attrs()
    )
    assert values == {"sn": ["White"]}  # the other flows still compute
    [issue] = issues
    assert issue.attribute == "out" and issue.error_type == "expression-error" and why in issue.message


@pytest.mark.parametrize(
    ("index", "expected"),
    [(1, ["White, Gabriel"]), (2, ["people"]), (-1, ["org"]), (-2, ["example"]), (9, [])],
)
def test_dn_component(index: int, expected: list[str]) -> None:
    values, _ = run([{"mv": "part", "dn_component": index}], {}, dn=DN)
    assert values == {"part": expected}


def test_dn_component_without_dn_is_null_and_hex_escapes_are_decoded() -> None:
    assert run([{"mv": "p", "dn_component": 1}], {})[0] == {"p": []}
    assert run([{"mv": "p", "dn_component": 1}], {}, dn=r"cn=Caf\C3\A9,dc=org")[0] == {"p": ["Café"]}
    assert run([{"mv": "p", "dn_component": 1}], {}, dn="cn=a+uid=b,dc=org")[0] == {"p": ["a"]}


def test_exists_flow() -> None:
    values, _ = run([{"mv": "hasMail", "exists": "email"}, {"mv": "hasFax", "exists": "fax"}], hr_attrs())
    assert values == {"hasMail": ["true"], "hasFax": ["false"]}


def test_multi_values_into_single_valued_attribute() -> None:
    attrs = {"phones": ["1", "2", "3"]}
    values, issues = run([{"mv": "phone", "source": "phones"}], attrs, single_valued={"phone"})
    assert values == {}
    [issue] = issues
    assert issue.error_type == "flow-multi-values-to-single-value" and "multi_to_single" in issue.message
    # undeclared (or multi-valued) metaverse attributes take every value
    assert run([{"mv": "phone", "source": "phones"}], attrs)[0] == {"phone": ["1", "2", "3"]}
    for how, expected in [("first", ["1"]), ("last", ["3"]), ("join:; ", ["1; 2; 3"]), ("join:", ["123"])]:
        spec = {"mv": "phone", "source": "phones", "multi_to_single": how}
        assert run([spec], attrs, single_valued={"phone"}) == ({"phone": expected}, [])


def test_flow_config_needs_exactly_one_kind() -> None:
    with pytest.raises(ValueError, match=r"exactly one of .* \(got source, exists\)"):
        ImportFlowConfig.model_validate({"mv": "x", "source": "a", "exists": "b"})
    with pytest.raises(ValueError, match="not 0"):
        ImportFlowConfig.model_validate({"mv": "x", "dn_component": 0})
    with pytest.raises(ValueError, match="multi_to_single"):
        ImportFlowConfig.model_validate({"mv": "x", "source": "a", "multi_to_single": "middle"})


# --------------------------------------------------------------------------- through the inbound step
def declared_single(**rule: Any) -> IdsyncConfig:
    cfg = demo_config_dict()
    cfg["metaverse"]["person"]["attributes"] = {"phone": {}, "groups": {"multi_valued": True}}
    cfg["inbound"][0]["flows"] = [*cfg["inbound"][0]["flows"], {"mv": "phone", "source": "phones"}]
    cfg["inbound"][0].update(rule)
    return IdsyncConfig.model_validate(cfg)


def test_flow_error_reaches_nothing_and_is_reported_with_mim_names() -> None:
    rules = compile_rules(declared_single())
    attrs = {**hr_attrs(), "phones": ["1", "2"]}
    cs, outputs = route(rules, stage(None, record(after=attrs, locator="hr.csv:3")), ts_ms=7)
    assert cs is not None
    [err] = outputs
    assert isinstance(err, ErrorRecord)
    assert (err.error_type, err.algorithm_step) == ("flow-multi-values-to-single-value", "import-flow")
    assert (err.connector, err.anchor, err.locator) == ("hr", "E1", "hr.csv:3")
    # fixed at the source: the next change joins as usual
    cs, outputs = route(rules, stage(cs, record(after={**hr_attrs(), "phones": ["1"]}, version=2)), ts_ms=8)
    [req] = outputs
    assert isinstance(req, JoinRequest) and req.flows["phone"] == ["1"]


def test_connected_object_with_flow_error_sends_no_contribution() -> None:
    rules = compile_rules(declared_single())
    current = cs_object(mv_id="mv-1", join_route="person|employeeId=E1")
    _cs, outputs = route(
        rules, stage(current, record(after={**hr_attrs(), "phones": ["1", "2"]}, version=2)), ts_ms=7
    )
    assert not of_type(outputs, MVContribution)
    assert [e.error_type for e in of_type(outputs, ErrorRecord)] == ["flow-multi-values-to-single-value"]


def test_project_when_scopes_projection() -> None:
    rules = compile_rules(
        declared_single(project_when=[[{"attribute": "status", "operator": "equal", "value": "active"}]])
    )
    _cs, [active] = route(rules, stage(None, record(after=hr_attrs())), ts_ms=7)
    assert isinstance(active, JoinRequest) and active.project is True
    _cs, [inactive] = route(rules, stage(None, record(after=hr_attrs(status="leaver"))), ts_ms=7)
    assert isinstance(inactive, JoinRequest) and inactive.project is False  # may still join
    # no join value and no projection: nothing to do
    cs, outputs = route(
        rules, stage(None, record(after=hr_attrs(status="leaver", employee_id=None))), ts_ms=7
    )
    assert outputs == [] and cs is not None and cs.join_route is None


def test_join_groups_request_carries_routes_and_resolver_input() -> None:
    cfg = demo_config_dict()
    hr = cfg["inbound"][0]
    hr.pop("join")
    hr["join_groups"] = [[{"cs": "employee_id", "mv": "employeeId"}], [{"cs": "email", "mv": "mail"}]]
    hr["resolver"] = "tests.engine.hooks:refuse"
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    cs, [req] = route(rules, stage(None, record(after=hr_attrs())), ts_ms=7)
    assert isinstance(req, JoinRequest)
    assert req.routes == ["person|employeeId=E1", "person|mail=gabriel.white@example.org"]
    assert req.route == req.routes[0] and req.object_type == "employee"
    assert req.cs_attributes == hr_attrs()
    assert cs is not None and cs.join_routes == req.routes
    # deleted while waiting: it withdraws from every route
    _cs, outputs = route(rules, stage(cs, record(op="d", version=2)), ts_ms=8)
    assert sorted(o.route for o in outputs) == sorted(req.routes)


# --------------------------------------------------------------------------- export flows
def test_export_expression_flow() -> None:
    specs = [
        ExportFlowConfig(target="mail", expression='mv.uid + "@corp.example"'),
        ExportFlowConfig(target="groups", expression='mv_all.groups.filter(g, g != "b")'),
        ExportFlowConfig(target="x", expression="mv.nothing"),
    ]
    values, issues = evaluate_export_flows(specs, {"uid": ["gw"], "groups": ["a", "b", "c"]})
    assert issues == []
    assert values == {"mail": ["gw@corp.example"], "groups": ["a", "c"]}  # null, not allow_null: unmanaged


def test_export_expression_error_is_reported_and_the_attribute_left_alone() -> None:
    cfg = demo_config_dict()
    cfg["outbound"][0]["flows"] = [*cfg["outbound"][0]["flows"], {"target": "x", "expression": "int(mv.uid)"}]
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    _mv, outputs = metaverse_step(rules, None, hr_contribution(rules, "mv-1", projected=True))
    [add] = of_type(outputs, PendingExport)
    assert "x" not in add.attributes and add.attributes["uid"].values == ["gwhite"]
    [err] = of_type(outputs, ErrorRecord)
    assert (err.error_type, err.algorithm_step, err.connector) == ("expression-error", "export-flow", "ldap")


# --------------------------------------------------------------------------- configuration errors
def parse(cfg: dict[str, Any]) -> IdsyncConfig:
    return parse_config(cfg, Path(HR_CSV).parent)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cs.first_name +", "inbound[0].flows[2].expression: syntax error at 1:16"),
        ('shout(cs.first_name) + "!"', "inbound[0].flows[2].expression: undefined function 'shout'"),
        ("   ", "inbound[0].flows[2].expression: empty expression"),
    ],
)
def test_bad_import_expression_is_a_config_error_naming_the_flow(expression: str, message: str) -> None:
    cfg = demo_config_dict()
    cfg["inbound"][0]["flows"][2] = {"mv": "sn", "expression": expression}
    with pytest.raises(ConfigError) as exc:
        parse(cfg)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_bad_export_expression_is_a_config_error_naming_the_flow() -> None:
    cfg = demo_config_dict()
    cfg["outbound"][0]["flows"][1] = {"target": "cn", "expression": "mv.givenName.nosuch()"}
    with pytest.raises(
        ConfigError, match=r"^outbound\[0\]\.flows\[1\]\.expression: undefined function 'nosuch'"
    ):
        parse(cfg)


def test_good_expressions_load() -> None:
    cfg = demo_config_dict()
    cfg["inbound"][0]["flows"][2] = {"mv": "sn", "expression": "cs.last_name.upperAscii()"}
    config = parse(cfg)
    assert config.inbound[0].flows[2].expression == "cs.last_name.upperAscii()"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_pkg.mod:fn", "inbound[0].resolver: cannot import 'no_such_pkg.mod' (ModuleNotFoundError"),
        (
            "tests.engine.hooks:missing",
            "inbound[0].resolver: 'tests.engine.hooks' has no attribute 'missing'",
        ),
        (
            "tests.engine.hooks:NOT_CALLABLE",
            "inbound[0].resolver: 'tests.engine.hooks:NOT_CALLABLE' is not callable",
        ),
        ("not a path", "inbound.0.resolver: String should match pattern"),
    ],
)
def test_bad_resolver_is_a_config_error_naming_the_rule(path: str, message: str) -> None:
    cfg = demo_config_dict()
    cfg["inbound"][0]["resolver"] = path
    with pytest.raises(ConfigError) as exc:
        parse(cfg)
    assert str(exc.value).startswith(message)


def test_resolver_is_loaded_once_and_handed_to_the_engine() -> None:
    from tests.engine import hooks

    cfg = demo_config_dict()
    cfg["inbound"][0]["resolver"] = "tests.engine.hooks:same_department"
    rules = compile_rules(parse(cfg))
    assert rules.resolver("hr", "employee") is hooks.same_department
    assert rules.resolver("ldap", "person") is None
    # the file keeps the path (the JSON schema and a dump show a string)
    assert rules.config.model_dump()["inbound"][0]["resolver"] == "tests.engine.hooks:same_department"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"join_groups": [[{"cs": "a", "mv": "b"}]]},
            "give join (one mapping group) or join_groups, not both",
        ),
        ({"join": [], "join_groups": [[]]}, "a mapping group needs at least one criterion"),
        (
            {"project": False, "project_when": [[{"attribute": "a", "operator": "isnotnull"}]]},
            "project_when needs project: true",
        ),
        ({"join": [], "project": False}, "inbound[0]: neither join nor project"),
    ],
)
def test_join_and_projection_config_errors(change: dict[str, Any], message: str) -> None:
    cfg = demo_config_dict()
    cfg["inbound"][0].update(change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(cfg)


def test_demo_yaml_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.setenv("IDSYNC_DEMO_HR", str(HR_CSV))
    monkeypatch.setenv("IDSYNC_LDAP_URI", "ldap://127.0.0.1:1")
    monkeypatch.setenv("IDSYNC_LDAP_PASSWORD", "x")
    demo = Path(__file__).resolve().parents[2] / "streams" / "samples" / "demo.yaml"
    config = parse_config(yaml.safe_load(demo.read_text()), demo.parent)
    rules = compile_rules(config)
    assert [len(r.mapping_groups()) for r in config.inbound] == [1, 1]
    assert rules.join_signatures == {"person": ((("employeeId", ("trim", "nfc")),),)}
