"""engine.values: normalization, filter conditions, templates, DN escaping and comparison."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine import values
from engine.values import (
    any_group_holds,
    condition_holds,
    dn_key,
    escape_rdn_value,
    first,
    normalize,
    render,
    same_values,
    split_dn,
)
from schemas.config import ConditionConfig


def cond(attribute: str, operator: str, value: str | list[str] | None = None) -> ConditionConfig:
    return ConditionConfig.model_validate({"attribute": attribute, "operator": operator, "value": value})


# --------------------------------------------------------------------------- normalize, first, same_values
def test_normalize_trim_folds_inner_whitespace() -> None:
    assert normalize("  Anna \t  Maria\n ", ["trim"]) == "Anna Maria"


def test_normalize_lower_casefolds() -> None:
    assert normalize("Straße ÉCOLE", ["lower"]) == "strasse école"


def test_normalize_nfc_composes() -> None:
    decomposed = "Chloe\u0301"
    assert decomposed != "Chloé"
    assert normalize(decomposed, ["nfc"]) == "Chloé"


def test_normalize_default_ops_make_equal_join_values_equal() -> None:
    ops = ["trim", "nfc"]
    assert normalize(" Chloe\u0301  Novak ", ops) == normalize("Chloé Novak", ops)
    # case is kept without "lower"
    assert normalize("E1", ops) != normalize("e1", ops)
    assert normalize("E1", [*ops, "lower"]) == normalize("e1", [*ops, "lower"])


def test_normalize_without_ops_is_identity() -> None:
    assert normalize("  X ", []) == "  X "


def test_first_skips_empty_values() -> None:
    assert first({"a": ["", "x", "y"]}, "a") == "x"
    assert first({"a": [""]}, "a") is None
    assert first({}, "a") is None


def test_same_values_ignores_order_not_case() -> None:
    assert same_values(["a", "b"], ["b", "a"])
    assert same_values(None, [])
    assert not same_values(["a"], ["A"])
    assert not same_values(["a"], ["a", "a"])


# --------------------------------------------------------------------------- conditions
ATTRS = {"status": ["Active"], "groups": ["Staff", "VPN-Users"], "empty": [""], "mail": ["a.b@Example.org"]}


@pytest.mark.parametrize(
    ("attribute", "operator", "value", "expected"),
    [
        ("status", "equal", "active", True),
        ("status", "equal", "inactive", False),
        ("groups", "equal", "vpn-users", True),  # any value may satisfy it
        ("missing", "equal", "x", False),
        ("status", "notequal", "terminated", True),
        ("status", "notequal", "ACTIVE", False),
        ("missing", "notequal", "terminated", True),
        ("groups", "notequal", "staff", False),
        ("missing", "isnull", None, True),
        ("empty", "isnull", None, True),
        ("status", "isnull", None, False),
        ("status", "isnotnull", None, True),
        ("empty", "isnotnull", None, False),
        ("mail", "startswith", "A.B", True),
        ("mail", "startswith", "b", False),
        ("mail", "endswith", "@example.ORG", True),
        ("mail", "endswith", "@example.com", False),
        ("mail", "contains", "B@EX", True),
        ("mail", "contains", "zz", False),
        ("status", "isin", ["inactive", "ACTIVE"], True),
        ("status", "isin", ["inactive"], False),
        ("groups", "isin", ["x", "staff"], True),
        ("missing", "isin", ["x"], False),
        ("status", "isnotin", ["terminated", "leaver"], True),
        ("status", "isnotin", ["active"], False),
        ("missing", "isnotin", ["x"], True),
    ],
)
def test_condition_operators(attribute: str, operator: str, value: object, expected: bool) -> None:
    assert condition_holds(cond(attribute, operator, value), ATTRS) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("operator", "value"), [("equal", None), ("startswith", None), ("isin", "x"), ("isnotin", "x")]
)
def test_condition_value_is_validated(operator: str, value: str | None) -> None:
    with pytest.raises(ValidationError):
        cond("a", operator, value)


def test_any_group_holds_is_or_of_ands() -> None:
    active = cond("status", "equal", "active")
    staff = cond("groups", "equal", "staff")
    contractor = cond("groups", "equal", "contractor")
    assert any_group_holds([[active, staff]], ATTRS)
    assert not any_group_holds([[active, contractor]], ATTRS)
    assert any_group_holds([[active, contractor], [staff]], ATTRS)
    assert not any_group_holds([], ATTRS)


# --------------------------------------------------------------------------- render
def test_render_fills_placeholders_with_first_values() -> None:
    attrs = {"givenName": ["Gabriel"], "sn": ["White", "Other"], "uid": ["gwhite"]}
    assert render("{givenName} {sn} ({uid})", attrs) == "Gabriel White (gwhite)"
    assert render("no placeholder", attrs) == "no placeholder"


def test_render_missing_or_empty_value_is_none() -> None:
    assert render("{givenName} {sn}", {"givenName": ["G"]}) is None
    assert render("{givenName} {sn}", {"givenName": ["G"], "sn": [""]}) is None


def test_render_escapes_values_for_dn_only_when_asked() -> None:
    attrs = {"sn": ["White, Jr"], "givenName": [" Ann"]}
    assert render("cn={givenName} {sn},ou=p", attrs) == "cn= Ann White, Jr,ou=p"
    assert render("cn={sn},ou=p", attrs, escape=True) == r"cn=White\, Jr,ou=p"
    assert render("cn={givenName},ou=p", attrs, escape=True) == r"cn=\ Ann,ou=p"


# --------------------------------------------------------------------------- escape_rdn_value
@pytest.mark.parametrize("special", [",", "+", '"', "\\", "<", ">", ";"])
def test_escape_rfc4514_specials_anywhere(special: str) -> None:
    assert escape_rdn_value(f"a{special}b") == f"a\\{special}b"
    assert escape_rdn_value(f"{special}b") == f"\\{special}b"
    assert escape_rdn_value(f"a{special}") == f"a\\{special}"


def test_escape_leading_hash_only() -> None:
    assert escape_rdn_value("#1") == r"\#1"
    assert escape_rdn_value("a#1#") == "a#1#"


def test_escape_leading_and_trailing_space_only() -> None:
    assert escape_rdn_value(" a b ") == r"\ a b\ "
    assert escape_rdn_value("a b") == "a b"
    assert escape_rdn_value(" ") == r"\ "


def test_escape_nul() -> None:
    assert escape_rdn_value("a\x00b") == r"a\00b"


def test_escape_plain_and_unicode_unchanged() -> None:
    assert escape_rdn_value("Chloé Novak (cnovak)") == "Chloé Novak (cnovak)"
    assert escape_rdn_value("") == ""


# --------------------------------------------------------------------------- split_dn, dn_key
def test_split_dn_honours_escaped_commas() -> None:
    assert split_dn(r"cn=White\, Jr (gw),ou=people,dc=example,dc=org") == [
        r"cn=White\, Jr (gw)",
        "ou=people",
        "dc=example",
        "dc=org",
    ]


def test_split_dn_escaped_backslash_before_comma_separates() -> None:
    assert split_dn("cn=a\\\\,ou=x") == ["cn=a\\\\", "ou=x"]


def test_split_dn_strips_spaces_around_separators() -> None:
    assert split_dn("cn=a , ou=x") == ["cn=a", "ou=x"]


def test_split_dn_edge_cases() -> None:
    assert split_dn("") == []
    assert split_dn("dc=org") == ["dc=org"]


def test_split_dn_keeps_escaped_trailing_space() -> None:
    assert split_dn(r"cn=gw\ ,ou=people") == [r"cn=gw\ ", "ou=people"]


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=20,
    ).filter(lambda v: not v[-1].isspace())  # unescaped trailing whitespace is not part of a value
)
def test_escaped_value_is_one_rdn(value: str) -> None:
    rdn = f"cn={escape_rdn_value(value)}"
    parts = split_dn(f"{rdn},ou=people,dc=org")
    assert parts == [rdn, "ou=people", "dc=org"]


def test_dn_key_ignores_case_and_spaces_around_separators() -> None:
    assert dn_key("CN=Gabriel White , OU=People,DC=Example,dc=org") == dn_key(
        "cn=gabriel white,ou=people,dc=example,dc=org"
    )
    assert dn_key("cn = a,ou= b") == dn_key("cn=a,ou=b")
    assert dn_key(None) == ""


#: Attribute-name-ish and value-ish parts of unescaped DNs: spaces, case, "=" inside values, casefolds
#: that change length (ß, İ); never a backslash or a comma inside a part. ``_ODD``: whitespace other than
#: the space (unprintable, as are control characters), put somewhere into some of the DNs.
_NAMES = st.text(alphabet=" cnoCN=", max_size=4)
_VALUES = st.text(alphabet=" aBß=İx()", max_size=8)
_ODD = st.sampled_from(["", "", "\t", "\xa0", "\x01", "\u2028"])


@settings(max_examples=400)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=5), st.booleans(), _ODD, st.integers(0, 60))
def test_fast_dn_key_equals_the_parsed_one(
    rdns: list[tuple[str, str]], tail: bool, odd: str, at: int
) -> None:
    parts = [f"{a}={v}" if i % 2 == 0 else f"{a}{v}" for i, (a, v) in enumerate(rdns)]
    dn = ",".join(parts) + ("," if tail else "")
    dn = dn[:at] + odd + dn[at:]
    values._DN_KEYS.pop(dn, None)
    assert dn_key(dn) == values._parsed_dn_key(dn)


def test_dn_key_distinguishes_escaped_comma_from_separator() -> None:
    assert dn_key(r"cn=White\, Jr,ou=p") != dn_key("cn=White,cn=Jr,ou=p")
    assert dn_key(r"cn=White\, Jr,ou=p") == dn_key(r"CN=white\, jr, OU=P")


def test_dn_key_distinguishes_different_values() -> None:
    assert dn_key("cn=a,ou=people") != dn_key("cn=a,ou=disabled")
    assert dn_key("cn=a b,ou=p") != dn_key("cn=ab,ou=p")


PLAIN_PARTS = st.sampled_from(["uid=a", "UID=B", "cn=Ünïcode", "ou=People", "dc=ORG", "ß", "cn=ΣΑΣ", ""])
ODD_PARTS = st.sampled_from(["cn=x\\,y", " ", ", ", " =", "\x00", "\t", "=  "])


def _dn_lists(parts: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.lists(parts, max_size=4).map(",".join), min_size=values.PLAIN_KEYS_FROM, max_size=90)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_dn_lists(PLAIN_PARTS), _dn_lists(st.one_of(PLAIN_PARTS, PLAIN_PARTS, ODD_PARTS))))
def test_a_large_list_of_dns_is_keyed_as_each_dn_is(dns: list[str]) -> None:
    """``dn_keys`` keys a large list at once when its DNs need no parsing: the keys are those ``dn_key``
    gives one DN at a time, whatever the list holds (escapes, spaces, NULs, tabs, case folding)."""
    values._DN_KEYS.clear()
    expected = [values._dn_key(d) for d in dns]
    values._DN_KEYS.clear()
    assert values.dn_keys(dns) == expected


def test_plain_dns_are_keyed_without_the_cache() -> None:
    dns = [f"UID=E{i},OU=People,DC=Example,DC=Org" for i in range(100)]
    values._DN_KEYS.clear()
    assert values.dn_keys(dns) == [d.lower() for d in dns]
    assert values._DN_KEYS == {}  # keyed in one pass, not one by one
    assert values.dn_keys([*dns, "cn=a\\,b"])[-1] == "cn=a\\,b" and values._DN_KEYS  # the slow path


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 1000),
    st.sets(st.integers(0, 1000), max_size=50),
    st.lists(st.integers(0, 1100), max_size=6),
)
def test_sorted_set_from_the_previous_list_is_sorted_set(n: int, removed: set[int], added: list[int]) -> None:
    """However few or many values moved since the previous sorted list, and whether the added ones were
    there already: ``sorted(set(values))``."""
    previous = [f"m{i:04d}" for i in range(n)]
    now = [v for i, v in enumerate(previous) if i not in removed] + [f"m{i:04d}" for i in added]
    assert values.sorted_set(now, previous) == sorted(set(now))
    assert values.sorted_set(now) == sorted(set(now))


def test_sorted_set_with_many_removed_among_many() -> None:
    previous = [f"m{i:04d}" for i in range(1000)]
    now = [v for i, v in enumerate(previous) if i % 25 != 3] + ["m0003", "x"]  # 39 removed, one back
    assert values.sorted_set(now, previous) == sorted(set(now))
