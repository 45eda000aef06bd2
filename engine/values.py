"""Value helpers shared by the stages: normalization, conditions, templates, DN escaping."""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation

from schemas.config import ConditionConfig, bit_mask
from schemas.records import Attrs


def normalize(value: str, ops: Iterable[str]) -> str:
    """Normalize a join value: ``trim`` (and fold inner whitespace), ``lower``, ``nfc``."""
    for op in ops:
        if op == "trim":
            value = " ".join(value.split())
        elif op == "lower":
            value = value.casefold()
        elif op == "nfc":
            value = unicodedata.normalize("NFC", value)
    return value


def first(attrs: Attrs, name: str) -> str | None:
    """The first non-empty value of an attribute, or None."""
    for v in attrs.get(name, ()):
        if v != "":
            return v
    return None


def same_values(a: Sequence[str] | None, b: Sequence[str] | None) -> bool:
    """Equal as value sets (directories do not keep the order of multi-valued attributes)."""
    if a == b:
        return True  # the common case, without sorting
    if len(a or ()) != len(b or ()):
        return False  # as the sorted lists would say, without sorting a large group's members
    return sorted(a or ()) == sorted(b or ())


def sorted_set(values: Iterable[str], previous: list[str] | None = None) -> list[str]:
    """``sorted(set(values))``, from the sorted list it was before (``previous``) when that is close: a
    reference answer or two changed among a large group's members. Then the unchanged members are not
    sorted again: the few removed are taken out, the few added appended, and the sort finds the long
    sorted run and merges the tail into it."""
    now = set(values)
    if previous is None or len(previous) < 64:
        return sorted(now)
    before = set(previous)
    gone, came = before - now, now - before
    if len(gone) + len(came) > len(now) // 16 or len(before) != len(previous):
        return sorted(now)
    if not gone and not came:
        return list(previous)
    if len(gone) <= 32:
        out = list(previous)
        for value in gone:
            out.remove(value)  # a C-level scan each
    else:
        out = [v for v in previous if v not in gone]
    out.extend(came)
    out.sort()
    return out


def condition_holds(cond: ConditionConfig, attrs: Attrs) -> bool:
    """Evaluate one filter clause against an object's attributes (any value may satisfy it)."""
    values = [v for v in attrs.get(cond.attribute, ()) if v != ""]
    op = cond.operator
    if op == "isnull":
        return not values
    if op == "isnotnull":
        return bool(values)
    want = cond.value
    if op in ("isin", "isnotin"):
        options = {w.casefold() for w in (want if isinstance(want, list) else [want or ""])}
        hit = any(v.casefold() in options for v in values)
        return hit if op == "isin" else not hit
    target = (want if isinstance(want, str) else "").casefold()
    folded = [v.casefold() for v in values]
    if op == "equal":
        return target in folded
    if op == "notequal":
        return target not in folded
    if op == "startswith":
        return any(v.startswith(target) for v in folded)
    if op == "endswith":
        return any(v.endswith(target) for v in folded)
    if op == "contains":
        return any(target in v for v in folded)
    if op in ("lessthan", "greaterthan"):
        want_text = want if isinstance(want, str) else ""
        return any(_compare(v, want_text) == (-1 if op == "lessthan" else 1) for v in values)
    if op == "ismemberof":
        group = dn_key(want if isinstance(want, str) else "")
        return any(dn_key(v) == group for v in values)
    if op == "isbitset":
        mask = bit_mask(want if isinstance(want, str) else "") or 0
        return mask > 0 and any((n := _integer(v)) is not None and n & mask == mask for v in values)
    raise ValueError(f"unknown operator {op!r}")


def _number(text: str) -> Decimal | None:
    try:
        n = Decimal(text.strip())
    except InvalidOperation:
        return None
    return n if n.is_finite() else None


def _integer(text: str) -> int | None:
    n = _number(text)
    return int(n) if n is not None and n == n.to_integral_value() else None


def _compare(a: str, b: str) -> int:
    """-1, 0 or 1: numerically when both are numbers, else as case-folded text (ISO-8601 timestamps of
    one format and zone compare correctly as text)."""
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    fa, fb = a.strip().casefold(), b.strip().casefold()
    return (fa > fb) - (fa < fb)


def any_group_holds(groups: Sequence[Sequence[ConditionConfig]], attrs: Attrs) -> bool:
    """OR of AND-ed clause groups; no groups -> False."""
    return any(all(condition_holds(c, attrs) for c in group) for group in groups)


def render(template: str, attrs: Attrs, escape: bool = False) -> str | None:
    """Fill ``{attr}`` placeholders with first values; None when one is missing."""
    out: list[str] = []
    for literal, name in template_parts(template):
        out.append(literal)
        if name:
            value = first(attrs, name)
            if value is None:
                return None
            out.append(escape_rdn_value(value) if escape else value)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def template_parts(template: str) -> tuple[tuple[str, str], ...]:
    """A template as (literal text, placeholder name or "") pairs, parsed once per template."""
    parts: list[tuple[str, str]] = []
    i = 0
    while i < len(template):
        start = template.find("{", i)
        if start < 0:
            parts.append((template[i:], ""))
            break
        end = template.index("}", start)
        parts.append((template[i:start], template[start + 1 : end]))
        i = end + 1
    return tuple(parts)


_RDN_SPECIAL = re.compile(r'[,+"\\<>;=\x00]|^[# ]| $')


def escape_rdn_value(value: str) -> str:
    """Escape an attribute value for use in a DN (RFC 4514 section 2.4)."""
    if not _RDN_SPECIAL.search(value):
        return value  # the common case: nothing to escape
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ch == "\x00":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def split_dn(dn: str) -> list[str]:
    """Split a DN into its RDN strings, honouring backslash escapes.

    Unescaped spaces around separators are dropped; an escaped one (``\\ `` at the end of a value) stays.
    """
    parts: list[str] = []
    cur: list[str] = []
    keep = 0  # length of cur that must survive stripping (up to the last escaped character)
    escaped = False

    def close() -> None:
        text = "".join(cur)
        tail = text[keep:].rstrip()
        parts.append((text[:keep] + tail).lstrip())

    for ch in dn:
        if escaped:
            cur.append(ch)
            keep = len(cur)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == ",":
            close()
            cur = []
            keep = 0
        else:
            cur.append(ch)
    if cur or parts:
        close()
    return parts


def dn_key(dn: str | None) -> str:
    """A comparison key for DNs: case-insensitive, spaces around separators ignored."""
    if dn is None:
        return ""
    return _dn_key(dn)


#: Comparison keys of DNs seen (a group's members are compared by DN on every change of the group). A
#: plain dict of strings: the garbage collector does not track it, as it would an lru_cache's nodes.
_DN_KEYS: dict[str, str] = {}
DN_KEY_CACHE = 1 << 18


def _unspaced(dn: str) -> bool:
    """No whitespace next to a separator nor at either end (what a DN key strips). Every whitespace
    character but the ASCII space is unprintable, so a printable DN has only spaces to look for."""
    return (
        dn.isprintable()
        and " ," not in dn
        and ", " not in dn
        and " =" not in dn
        and "= " not in dn
        and not dn.startswith(" ")
        and not dn.endswith(" ")
    )


def _dn_key(dn: str) -> str:
    key = _DN_KEYS.get(dn)
    if key is None:
        if len(_DN_KEYS) >= DN_KEY_CACHE:
            for old in list(itertools.islice(_DN_KEYS, DN_KEY_CACHE // 10)):
                del _DN_KEYS[old]  # the oldest tenth
        if "\\" in dn:
            key = _parsed_dn_key(dn)
        elif _unspaced(dn):
            key = dn.casefold()  # no escapes, no space around a separator: nothing to strip
        else:
            # No escapes: the separators are every "," and the first "=" of each RDN (split_dn's walk,
            # one character at a time in Python, is for escaped DNs; a 50,000-member group's keys are
            # computed here whenever they fell out of the cache).
            key = ",".join("=".join(p.strip() for p in rdn.split("=", 1)) for rdn in dn.split(",")).casefold()
        _DN_KEYS[dn] = key
    return key


def _parsed_dn_key(dn: str) -> str:
    return ",".join("=".join(p.strip() for p in rdn.split("=", 1)).casefold() for rdn in split_dn(dn))


#: From this many DNs on, ``dn_keys`` first tries the whole list at once (``_plain_keys``).
PLAIN_KEYS_FROM = 64


#: Printable ASCII (what a plain DN of ASCII characters is made of).
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def _plain_keys(dns: list[str]) -> list[str] | None:
    """The keys of DNs that need no parsing — no escape, no space next to a separator or at either end,
    printable (``_unspaced``) — all at once: the checks and the case folding run over the joined list in
    C. A large group's members usually are such DNs, and their keys then cost no Python per member when
    they are not cached. None when one of them needs more (the caller keys them one by one)."""
    joined = "\x00".join(dns)
    if joined.count("\x00") != len(dns) - 1 or "\\" in joined:
        return None  # a DN holding the separator itself, or an escape
    if " " in joined:
        for bad in (" ,", ", ", " =", "= ", "\x00 ", " \x00"):
            if bad in joined:
                return None
        if joined.startswith(" ") or joined.endswith(" "):
            return None
    if joined.isascii():
        # Printable unless a control character is left once the printable ones are taken out (the
        # separators are); lower case is the case folding of ASCII.
        if len(joined.encode("ascii").translate(None, _PRINTABLE_ASCII)) != len(dns) - 1:
            return None
        return joined.lower().split("\x00")
    if not all(map(str.isprintable, dns)):
        return None
    # Case folding maps each character on its own (never to NUL), so folding the joined DNs folds each.
    return joined.casefold().split("\x00")


def dn_keys(dns: Iterable[str]) -> list[str]:
    """``dn_key`` of each DN, in order. A group has many members: plain DNs are keyed in one C-level pass
    (``_plain_keys``), others' cached keys are looked up in one, and only those not cached are parsed."""
    dns = dns if isinstance(dns, list) else list(dns)
    keys = list(map(_DN_KEYS.get, dns))
    if None in keys and len(dns) >= PLAIN_KEYS_FROM:
        plain = _plain_keys(dns)
        if plain is not None:
            return plain
    if None in keys:
        return [key if key is not None else _dn_key(dn) for key, dn in zip(keys, dns, strict=True)]
    return keys  # type: ignore[return-value]  # no None left


def unescape_rdn_value(value: str) -> str:
    """Undo RFC 4514 escapes in an attribute value of a DN (``\\,`` and ``\\2C`` give ``,``)."""
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out.extend(value[i + 1].encode())
            i += 2
            continue
        out.extend(ch.encode())
        i += 1
    return out.decode("utf-8", "replace")


def dn_component(dn: str | None, index: int) -> str | None:
    """Value of one RDN of a DN (MIM's DN component): 1 = the first (leftmost), -1 = the last; None when
    the DN is missing or has no such component. A multi-valued RDN (``cn=a+uid=b``) gives its first value."""
    if not dn or index == 0:
        return None
    rdns = split_dn(dn)
    pos = index - 1 if index > 0 else len(rdns) + index
    if not 0 <= pos < len(rdns):
        return None
    rdn = rdns[pos]
    # The first unescaped "+" ends the first attribute of a multi-valued RDN.
    i, escaped = 0, False
    while i < len(rdn):
        if escaped:
            escaped = False
        elif rdn[i] == "\\":
            escaped = True
        elif rdn[i] == "+":
            break
        i += 1
    _attr, sep, value = rdn[:i].partition("=")
    return unescape_rdn_value(value.strip()) if sep else None
