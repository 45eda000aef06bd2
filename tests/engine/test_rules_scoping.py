"""Scoping and filter operators: lessthan, greaterthan, ismemberof, isbitset (and the config checks)."""

from __future__ import annotations

import pytest

from engine.export import plan_exports
from engine.provisioning import desired
from engine.rules import compile_rules
from engine.values import condition_holds
from schemas.config import ConditionConfig, IdsyncConfig
from schemas.records import Attrs
from schemas.state import MVObject
from schemas.wire import PendingExport

from .helpers import demo_config_dict

ADMINS = "cn=Admins,ou=groups,dc=example,dc=org"


def holds(attribute: str, operator: str, value: object, attrs: Attrs) -> bool:
    cond = ConditionConfig.model_validate({"attribute": attribute, "operator": operator, "value": value})
    return condition_holds(cond, attrs)


@pytest.mark.parametrize(
    ("op", "value", "attr", "expected"),
    [
        ("lessthan", "10", ["9"], True),  # numeric: 9 < 10 (as text "9" > "10")
        ("lessthan", "10", ["10"], False),
        ("greaterthan", "10", ["10.5"], True),
        ("greaterthan", "-1", ["-2"], False),
        ("lessthan", 100, ["99"], True),  # a YAML int
        ("lessthan", "2024-06-01", ["2024-05-31T23:00:00Z"], True),  # ISO-8601 as text
        ("greaterthan", "2024-06-01", ["2024-06-01T00:00:01Z"], True),
        ("lessthan", "m", ["Alice"], True),  # text, case-folded
        ("greaterthan", "10", ["abc"], True),  # not both numbers: text ("abc" > "10")
        ("lessthan", "10", [], False),  # no value: no clause holds
        ("greaterthan", "5", ["1", "7"], True),  # any value may satisfy it
    ],
)
def test_ordering_operators(op: str, value: object, attr: list[str], expected: bool) -> None:
    assert holds("x", op, value, {"x": attr}) is expected


def test_ismemberof_compares_group_dns_like_dns() -> None:
    member = {"memberOf": ["cn=Staff,ou=groups,dc=example,dc=org", "CN=admins, OU=Groups,DC=example,DC=org"]}
    assert holds("memberOf", "ismemberof", ADMINS, member)
    assert not holds("memberOf", "ismemberof", "cn=Other,ou=groups,dc=example,dc=org", member)
    assert not holds("memberOf", "ismemberof", ADMINS, {})


@pytest.mark.parametrize(
    ("mask", "uac", "expected"),
    [
        (2, "514", True),  # ACCOUNTDISABLE in 512 + 2
        (2, "512", False),
        ("0x2", "514", True),
        (514, "514", True),  # every bit of the mask
        (6, "514", False),
        (2, "not-a-number", False),
        (2, "2.5", False),
    ],
)
def test_isbitset(mask: object, uac: str, expected: bool) -> None:
    assert holds("userAccountControl", "isbitset", mask, {"userAccountControl": [uac]}) is expected


@pytest.mark.parametrize(
    ("operator", "value", "message"),
    [
        ("isbitset", "two", "positive integer bit mask"),
        ("isbitset", "0", "positive integer bit mask"),
        ("lessthan", ["1", "2"], "needs a single value"),
        ("ismemberof", None, "needs a value"),
    ],
)
def test_operator_values_are_checked(operator: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConditionConfig.model_validate({"attribute": "a", "operator": operator, "value": value})


def test_outbound_scope_with_new_operators() -> None:
    cfg = demo_config_dict()
    cfg["outbound"][0]["scope"] = [
        [
            {"attribute": "memberOf", "operator": "ismemberof", "value": ADMINS},
            {"attribute": "userAccountControl", "operator": "isbitset", "value": 2},
        ],
        [{"attribute": "level", "operator": "greaterthan", "value": 5}],
    ]
    cfg["outbound"][0]["flows"].append({"target": "cn2", "expression": 'mv.givenName + " " + mv.sn'})
    rules = compile_rules(IdsyncConfig.model_validate(cfg))
    [rule] = rules.outbound["person"]
    base = {"givenName": ["Ada"], "sn": ["L"], "uid": ["al"]}

    def mv(**extra: list[str]) -> MVObject:
        return MVObject(mv_id="m", object_type="person", attributes={**base, **extra})

    assert desired(rule, mv(memberOf=[ADMINS], userAccountControl=["514"])).in_scope
    assert not desired(rule, mv(memberOf=[ADMINS], userAccountControl=["512"])).in_scope
    assert desired(rule, mv(level=["6"])).in_scope
    assert not desired(rule, mv(level=["5"])).in_scope
    [add] = plan_exports(mv(level=["10"]), rule, ts_ms=1)
    assert isinstance(add, PendingExport) and add.attributes["cn2"].values == ["Ada L"]
