"""DN parsing and building (RFC 4514): values are kept unescaped in memory and escaped when joined."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import escape_rdn, parse_dn

from schemas.errors import DataError


@dataclass(frozen=True, slots=True)
class Ava:
    """One ``attr=value`` of an RDN, value unescaped."""

    attr: str
    value: str


Rdn = tuple[Ava, ...]


def unescape_value(value: str) -> str:
    """Undo RFC 4514 escapes: ``\\,`` -> ``,`` and ``\\c3\\a9`` -> ``é`` (hex pairs are UTF-8 bytes)."""
    if "\\" not in value:
        return value
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
            out += value[i + 1].encode()
            i += 2
            continue
        out += ch.encode()
        i += 1
    return out.decode("utf-8", errors="replace")


def split_dn(dn: str) -> list[Rdn]:
    """``dn`` as a list of RDNs, leftmost first; raises ``DataError`` (invalid-dn) when malformed."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError as exc:
        raise DataError(f"Invalid DN {dn!r}: {exc}", error_type="invalid-dn") from None
    rdns: list[Rdn] = []
    current: list[Ava] = []
    for attr, value, sep in parts:
        current.append(Ava(attr, unescape_value(value)))
        if sep != "+":
            rdns.append(tuple(current))
            current = []
    if current:
        rdns.append(tuple(current))
    return rdns


def rdn_str(rdn: Rdn) -> str:
    """One RDN as text, every value escaped."""
    return "+".join(f"{ava.attr}={escape_rdn(ava.value)}" for ava in rdn)


def join_dn(rdns: Sequence[Rdn]) -> str:
    return ",".join(rdn_str(rdn) for rdn in rdns)


def parent_dn(dn: str) -> str | None:
    """The parent DN, or None for a one-RDN DN."""
    rdns = split_dn(dn)
    return join_dn(rdns[1:]) if len(rdns) > 1 else None


def dn_depth(dn: str) -> int:
    return len(split_dn(dn))


def _fold(value: str, case_sensitive: bool) -> str:
    # Approximates caseIgnoreMatch: NFC, collapsed spaces, casefold. Good enough to compare our own DNs.
    value = " ".join(unicodedata.normalize("NFC", value).split())
    return value if case_sensitive else value.casefold()


def dn_key(dn: str, *, case_sensitive: bool = False) -> tuple[tuple[tuple[str, str], ...], ...]:
    """A comparable form of ``dn``: attribute types folded, AVAs sorted, values folded unless asked not to."""
    return tuple(
        tuple(sorted((ava.attr.lower(), _fold(ava.value, case_sensitive)) for ava in rdn))
        for rdn in split_dn(dn)
    )


def same_dn(a: str, b: str, *, case_sensitive: bool = False) -> bool:
    return dn_key(a, case_sensitive=case_sensitive) == dn_key(b, case_sensitive=case_sensitive)


def is_within(dn: str, base: str) -> bool:
    """True when ``dn`` is ``base`` or below it."""
    d, b = dn_key(dn), dn_key(base)
    return len(d) >= len(b) and d[len(d) - len(b) :] == b
