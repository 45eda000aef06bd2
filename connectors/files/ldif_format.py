"""LDIF (RFC 2849): reading content and change records, writing content records.

Reading works on bytes so that byte offsets can serve as watermarks: :func:`chunks` splits a buffer into
records at empty lines (unfolding continuation lines, dropping comments) and :func:`parse_chunk` turns one
chunk into a :class:`Record`, raising :class:`LdifError` for a malformed one. Values are UTF-8 text; a
base64 value (``attr:: ...``) that is not UTF-8, or any value of an ``;binary`` attribute, becomes
``base64:<b64>`` text, as the LDAP connector represents binary values. Values given by URL (``attr:< url``)
are never read: reading arbitrary local files on behalf of a data file is not something a connector does.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from ldap3.utils.dn import escape_rdn

from connectors.ldap.connector import BINARY_PREFIX, encode_value
from connectors.ldap.dn import dn_key, split_dn
from schemas.errors import DataError

ChangeType = Literal["content", "add", "delete", "modify", "modrdn"]
ModOp = Literal["add", "delete", "replace"]

#: An attribute description: a name or an OID, with options (``userCertificate;binary``).
_ATTR_DESC = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*$")
#: ``name: value``, ``name:: base64`` or ``name:< url``.
_LINE = re.compile(rb"^([^:]*):(:|<)?(.*)$", re.DOTALL)
#: RFC 2849 SAFE-STRING, and no trailing space (which many readers would strip).
_SAFE = re.compile(rb"^(?:[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*)?$")
#: Longest physical line written (RFC 2849 recommends folding at 76 columns).
LINE_WIDTH = 76


class LdifError(Exception):
    """A malformed LDIF record: the physical line it was noticed on and what is wrong."""

    def __init__(self, line: int, message: str, error_type: str = "import-malformed-record") -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class Chunk:
    """The lines of one record, as found between empty lines."""

    #: Physical line number of its first line (1-based).
    line: int
    #: Byte offset of its first line, and just past the empty line that ends it (a record boundary).
    start: int
    end: int
    #: Logical lines (continuations unfolded, comments dropped), each with its first physical line number.
    lines: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Mod:
    op: ModOp
    attribute: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Record:
    """A content record (``change`` = "content") or a change record."""

    #: Line of its ``dn:``.
    line: int
    dn: str
    change: ChangeType
    #: Content and add records: (attribute, value) pairs in file order.
    attributes: tuple[tuple[str, str], ...] = ()
    #: Modify records.
    mods: tuple[Mod, ...] = ()
    #: Modrdn / moddn records.
    new_rdn: str | None = None
    delete_old_rdn: bool = False
    new_superior: str | None = None


# ====================================================================== reading
def chunks(data: bytes, *, offset: int = 0, line: int = 1, complete_only: bool = False) -> Iterator[Chunk]:
    """The records of ``data`` from ``offset`` (which is on line ``line``), split at empty lines.

    With ``complete_only`` a last record not followed by an empty line is left out: in a file that is being
    appended to, it may still be half written.
    """
    pos, number = offset, line
    size = len(data)
    start = start_line = -1
    logical: list[tuple[int, bytearray]] = []
    in_comment = False
    while pos < size:
        nl = data.find(b"\n", pos)
        nxt = size if nl < 0 else nl + 1
        raw = data[pos : size if nl < 0 else nl]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            if start >= 0:
                yield Chunk(start_line, start, nxt, tuple((n, bytes(b)) for n, b in logical))
                start, logical, in_comment = -1, [], False
        else:
            if start < 0:
                start, start_line = pos, number
            if raw.startswith(b" "):
                if in_comment:
                    pass  # a folded comment
                elif logical:
                    logical[-1][1].extend(raw[1:])
                else:
                    logical.append((number, bytearray(raw)))  # nothing to continue: reported on parsing
            elif raw.startswith(b"#"):
                in_comment = True
            else:
                in_comment = False
                logical.append((number, bytearray(raw)))
        pos, number = nxt, number + 1
    if start >= 0 and not complete_only:
        yield Chunk(start_line, start, size, tuple((n, bytes(b)) for n, b in logical))


def boundary(data: bytes) -> int:
    """Offset just past the last complete record of ``data`` (0 when there is none)."""
    end = 0
    for chunk in chunks(data, complete_only=True):
        end = chunk.end
    return end


def record_line(chunk: Chunk) -> int:
    """The line a human looks for a record at: its ``dn:`` line (else its first line)."""
    for number, raw in chunk.lines:
        if raw[:3].lower() == b"dn:":
            return number
    return chunk.lines[0][0] if chunk.lines else chunk.line


def _split(line: int, raw: bytes) -> tuple[str, bytes, bytes]:
    """``name``, the value kind (b"" plain, b":" base64, b"<" URL) and the raw value of one logical line."""
    if raw.startswith(b" "):
        raise LdifError(line, "continuation line with no line to continue")
    m = _LINE.match(raw)
    if m is None:
        raise LdifError(line, f"expected 'attribute: value', got {_show(raw)}")
    try:
        name = m.group(1).decode("ascii")
    except UnicodeDecodeError:
        raise LdifError(line, f"invalid attribute name {_show(m.group(1))}") from None
    if not _ATTR_DESC.match(name):
        raise LdifError(line, f"invalid attribute name {name!r}")
    return name, m.group(2) or b"", m.group(3).lstrip(b" ")


def _show(raw: bytes, limit: int = 60) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _text(line: int, name: str, kind: bytes, raw: bytes) -> str:
    """A value that must be text (a DN, a new RDN, a changetype)."""
    value = _value(line, name, kind, raw)
    if value.startswith(BINARY_PREFIX) and kind == b":":
        raise LdifError(line, f"{name}: base64 value is not UTF-8 text")
    return value


def _value(line: int, name: str, kind: bytes, raw: bytes) -> str:
    if kind == b"<":
        url = raw.decode("utf-8", errors="replace").strip()
        raise LdifError(
            line,
            f"{name}: value given by URL ({url}) is not read; "
            "put the value itself in the file (base64 with '::')",
            error_type="import-url-value-rejected",
        )
    binary = ";binary" in name.lower()
    if kind == b":":
        try:
            data = base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            raise LdifError(line, f"{name}: invalid base64 value") from None
        if not binary:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return BINARY_PREFIX + base64.b64encode(data).decode("ascii")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        message = f"{name}: value is not valid UTF-8 (give it base64-encoded with '::')"
        raise LdifError(line, message) from None
    return BINARY_PREFIX + base64.b64encode(raw).decode("ascii") if binary else text


def _dn(line: int, kind: bytes, raw: bytes, what: str = "dn") -> str:
    dn = _text(line, what, kind, raw)
    if not dn.strip():
        raise LdifError(line, f"empty {what}")
    try:
        split_dn(dn)
    except DataError as exc:
        raise LdifError(line, f"invalid {what} {dn!r}: {exc.message}") from None
    return dn


def parse_chunk(chunk: Chunk, *, first: bool = False) -> Record | None:
    """The record in ``chunk`` (None for a chunk of comments, or the version line); ``first``: the chunk
    opens the file, where ``version: 1`` may come before the first record."""
    lines = list(chunk.lines)
    if first and lines and lines[0][1].lower().startswith(b"version:"):
        number, raw = lines.pop(0)
        name, kind, value = _split(number, raw)
        if kind or value.strip() != b"1":
            raise LdifError(number, f"unsupported LDIF version {_show(value)} (only 'version: 1' exists)")
    if not lines:
        return None
    number, raw = lines[0]
    name, kind, value = _split(number, raw)
    if name.lower() != "dn":
        what = "a version line only opens a file" if name.lower() == "version" else f"got {name!r}"
        raise LdifError(number, f"a record starts with 'dn:', {what}")
    dn = _dn(number, kind, value)
    after = lines[1:]
    head = _split(*after[0]) if after else None
    if head is not None and head[0].lower() == "control":
        raise LdifError(after[0][0], "LDAP controls in change records are not supported")
    if head is None or head[0].lower() != "changetype":
        return Record(number, dn, "content", attributes=_attrvals(after, dn, number))
    ct_line = after[0][0]
    changetype = _text(ct_line, "changetype", head[1], head[2]).strip().lower()
    body = after[1:]
    if changetype == "add":
        return Record(number, dn, "add", attributes=_attrvals(body, dn, number))
    if changetype == "delete":
        if body:
            raise LdifError(body[0][0], "a delete record has nothing after 'changetype: delete'")
        return Record(number, dn, "delete")
    if changetype == "modify":
        return Record(number, dn, "modify", mods=_mods(body, ct_line))
    if changetype in ("modrdn", "moddn"):
        return _modrdn(number, dn, body, ct_line)
    raise LdifError(ct_line, f"unknown changetype {changetype!r} (add, delete, modify, modrdn, moddn)")


def _attrvals(lines: list[tuple[int, bytes]], dn: str, dn_line: int) -> tuple[tuple[str, str], ...]:
    if not lines:
        raise LdifError(dn_line, f"entry {dn!r} has no attributes")
    out: list[tuple[str, str]] = []
    for number, raw in lines:
        name, kind, value = _split(number, raw)
        out.append((name, _value(number, name, kind, value)))
    return tuple(out)


def _mods(lines: list[tuple[int, bytes]], ct_line: int) -> tuple[Mod, ...]:
    """``add:`` / ``delete:`` / ``replace:`` blocks, each closed by ``-`` (optional after the last one)."""
    mods: list[Mod] = []
    i = 0
    while i < len(lines):
        number, raw = lines[i]
        name, kind, value = _split(number, raw)
        op = name.lower()
        if op not in ("add", "delete", "replace"):
            hint = " (RFC 4525 increment is not supported)" if op == "increment" else ""
            raise LdifError(number, f"expected 'add:', 'delete:' or 'replace:', got {name!r}{hint}")
        attribute = _text(number, op, kind, value).strip()
        if not _ATTR_DESC.match(attribute):
            raise LdifError(number, f"invalid attribute name {attribute!r}")
        values: list[str] = []
        i += 1
        while i < len(lines) and lines[i][1] != b"-":
            n, r = lines[i]
            vname, vkind, vraw = _split(n, r)
            if vname.lower() != attribute.lower():
                raise LdifError(n, f"value of {vname!r} inside the '{op}: {attribute}' block (missing '-'?)")
            values.append(_value(n, vname, vkind, vraw))
            i += 1
        i += 1  # past the "-"
        mod_op: ModOp = "add" if op == "add" else "delete" if op == "delete" else "replace"
        if mod_op == "add" and not values:
            raise LdifError(number, f"'add: {attribute}' has no values")
        mods.append(Mod(mod_op, attribute, tuple(values)))
    if not mods:
        raise LdifError(ct_line, "a modify record has no 'add:', 'delete:' or 'replace:'")
    return tuple(mods)


def _modrdn(line: int, dn: str, lines: list[tuple[int, bytes]], ct_line: int) -> Record:
    fields: dict[str, tuple[int, bytes, bytes]] = {}
    for n, raw in lines:
        name, kind, value = _split(n, raw)
        key = name.lower()
        if key not in ("newrdn", "deleteoldrdn", "newsuperior"):
            raise LdifError(n, f"unexpected {name!r} in a modrdn record")
        if key in fields:
            raise LdifError(n, f"{name!r} given twice")
        fields[key] = (n, kind, value)
    if "newrdn" not in fields or "deleteoldrdn" not in fields:
        raise LdifError(ct_line, "a modrdn record needs 'newrdn:' and 'deleteoldrdn:'")
    n, kind, raw = fields["newrdn"]
    new_rdn = _dn(n, kind, raw, "newrdn")
    if len(split_dn(new_rdn)) != 1:
        raise LdifError(n, f"newrdn {new_rdn!r} is not a single RDN")
    n, kind, raw = fields["deleteoldrdn"]
    flag = _text(n, "deleteoldrdn", kind, raw).strip()
    if flag not in ("0", "1"):
        raise LdifError(n, f"deleteoldrdn must be 0 or 1, got {flag!r}")
    superior = None
    if "newsuperior" in fields:
        n, kind, raw = fields["newsuperior"]
        superior = _dn(n, kind, raw, "newsuperior")
    return Record(line, dn, "modrdn", new_rdn=new_rdn, delete_old_rdn=flag == "1", new_superior=superior)


def normalize_dn(dn: str) -> str:
    """A DN in one canonical spelling: attribute types lower case, values NFC, spaces collapsed and case
    folded, multi-valued RDNs sorted, re-escaped. Raises ``DataError`` (invalid-dn) when malformed."""
    return ",".join("+".join(f"{attr}={escape_rdn(value)}" for attr, value in rdn) for rdn in dn_key(dn))


def is_attribute_name(name: str) -> bool:
    return bool(_ATTR_DESC.match(name))


# ====================================================================== writing
def _fold(line: bytes) -> bytes:
    if len(line) <= LINE_WIDTH:
        return line + b"\n"
    parts = [line[:LINE_WIDTH]]
    parts += [b" " + line[i : i + LINE_WIDTH - 1] for i in range(LINE_WIDTH, len(line), LINE_WIDTH - 1)]
    return b"\n".join(parts) + b"\n"


def format_line(name: str, value: str, *, text: bool = False) -> bytes:
    """``name: value``, or ``name:: base64`` when the value is not a safe string; folded at 76 columns.

    A ``base64:`` value (binary, see the LDAP connector) is written as its bytes, unless ``text``.
    """
    encoded = value if text else encode_value(value)
    data = encoded if isinstance(encoded, bytes) else encoded.encode("utf-8")
    if isinstance(encoded, str) and _SAFE.match(data) and not data.endswith(b" "):
        line = name.encode("ascii") + (b": " + data if data else b":")
    else:
        line = name.encode("ascii") + b":: " + base64.b64encode(data)
    return _fold(line)


def write_entry(out: BinaryIO, dn: str, attributes: Iterable[tuple[str, list[str]]]) -> None:
    """One content record, followed by the empty line that ends it."""
    out.write(format_line("dn", dn, text=True))
    for name, values in attributes:
        for value in values:
            out.write(format_line(name, value))
    out.write(b"\n")
