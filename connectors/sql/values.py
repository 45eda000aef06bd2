"""Column values <-> idsync strings.

Rows are read as the driver returns them (no SQLAlchemy result processing: SQLite hands back text for dates,
and one malformed value must not break a whole import), then rendered by the column's declared type:
NULL and '' -> no value, booleans "true"/"false", dates ISO 8601, binary base64, JSON canonical text.
Export values go the other way and are bound through the column's SQLAlchemy type.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import types as sat
from sqlalchemy.dialects.mysql import TINYINT

Kind = Literal[
    "text", "integer", "decimal", "float", "boolean", "datetime", "date", "time", "interval", "binary",
    "uuid", "json",
]  # fmt: skip
Syntax = Literal["string", "integer", "boolean", "binary", "reference", "datetime"]

#: Accepted on export for binary columns, as the LDAP connector writes non-UTF-8 values.
BINARY_PREFIX = "base64:"
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
_DURATION = re.compile(r"^(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE)
_SYNTAX: dict[Kind, Syntax] = {
    "integer": "integer",
    "boolean": "boolean",
    "binary": "binary",
    "datetime": "datetime",
    "date": "datetime",
}


def _python_type(type_: sat.TypeEngine[Any]) -> type | None:
    try:
        return type_.python_type
    except NotImplementedError:
        return None


@dataclass(frozen=True, slots=True)
class Codec:
    """How one column's values become strings and back."""

    kind: Kind = "text"
    #: Digits after the decimal point of a NUMERIC(p, s) column: values are rendered with exactly s.
    scale: int | None = None
    #: A timestamp column that stores time zones (timestamptz).
    timezone: bool = False

    @property
    def syntax(self) -> Syntax:
        return _SYNTAX.get(self.kind, "string")

    # ------------------------------------------------------------------ column -> strings
    def to_strings(self, raw: object) -> list[str]:
        """The idsync values of one raw column value (a PostgreSQL array gives several)."""
        if raw is None:
            return []
        if isinstance(raw, list | tuple) and self.kind != "json":
            return [s for item in raw for s in self.to_strings(item)]
        text = self._render(raw)
        return [text] if text != "" else []

    def _render(self, raw: object) -> str:
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, int):
            if self.kind == "boolean" and raw in (0, 1):
                return "true" if raw else "false"
            if self.kind == "decimal":
                return self._number(Decimal(raw))  # SQLite keeps 3.00 in a NUMERIC column as 3
            if self.kind == "float":
                return repr(float(raw))
            return str(raw)
        if isinstance(raw, float | Decimal):
            return self._number(raw)
        if isinstance(raw, dt.datetime | dt.date | dt.time):
            return raw.isoformat()
        if isinstance(raw, dt.timedelta):
            return iso_duration(raw)
        if isinstance(raw, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(raw)).decode("ascii")
        if isinstance(raw, dict | list | tuple):
            return _canonical_json(raw)
        if isinstance(raw, str):
            return self._normalize_text(raw)
        return str(raw)  # UUID, ipaddress, ranges: their text form

    def _number(self, raw: float | Decimal) -> str:
        if self.kind == "decimal" and self.scale is not None:
            try:
                value = raw if isinstance(raw, Decimal) else Decimal(repr(raw))
                return format(value.quantize(Decimal(1).scaleb(-self.scale)), "f")
            except InvalidOperation:
                return str(raw)
        if isinstance(raw, Decimal):
            return format(raw, "f") if raw.is_finite() else str(raw)
        return repr(raw)

    def _normalize_text(self, text: str) -> str:
        """Text stored in a typed column (SQLite keeps dates and numbers as text): the canonical form."""
        if self.kind in ("datetime", "date", "time", "decimal", "json", "boolean"):
            try:
                return self._render(self.from_string(text))
            except ValueError:
                return text  # not what the type says: shown as stored
        return text

    # ------------------------------------------------------------------ string -> column
    def from_string(self, text: str) -> Any:
        """The Python value to bind for an idsync string; ValueError when it does not fit the column."""
        kind = self.kind
        if kind == "text":
            return text
        s = text.strip()
        if kind == "integer":
            return int(s)
        if kind == "boolean":
            low = s.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"{text!r} is not a boolean (true/false)")
        if kind == "decimal":
            try:
                return Decimal(s)
            except InvalidOperation:
                raise ValueError(f"{text!r} is not a decimal number") from None
        if kind == "float":
            return float(s)
        if kind == "datetime":
            value = dt.datetime.fromisoformat(s)
            if value.tzinfo is not None and not self.timezone:
                # A column without time zones holds UTC for values that came with an offset.
                value = value.astimezone(dt.UTC).replace(tzinfo=None)
            return value
        if kind == "date":
            return dt.date.fromisoformat(s)
        if kind == "time":
            return dt.time.fromisoformat(s)
        if kind == "interval":
            return parse_duration(s)
        if kind == "binary":
            if s.startswith(BINARY_PREFIX):
                s = s[len(BINARY_PREFIX) :]
            try:
                return base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{text!r} is not base64") from None
        if kind == "uuid":
            return uuid.UUID(s)
        try:
            return json.loads(s)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{text!r} is not JSON ({exc.msg})") from None

    def normalize(self, text: str) -> str:
        """The canonical string of an export value (to compare it with what the column holds)."""
        try:
            values = self.to_strings(self.from_string(text))
        except (ValueError, TypeError, OverflowError):
            return text
        return values[0] if values else ""


TEXT = Codec()


def codec_for(type_: sat.TypeEngine[Any] | None) -> Codec:
    """The codec of a reflected column type (``None``: a query column of unknown type)."""
    if type_ is None or isinstance(type_, sat.NullType):
        return TEXT
    if isinstance(type_, sat.Boolean):
        return Codec("boolean")
    if isinstance(type_, TINYINT) and type_.display_width == 1:
        # MySQL/MariaDB spell BOOLEAN as TINYINT(1) (JDBC's tinyInt1isBit does the same).
        return Codec("boolean")
    if isinstance(type_, sat.JSON):
        return Codec("json")
    if isinstance(type_, sat.Float):
        return Codec("float")
    if isinstance(type_, sat.Numeric) and not isinstance(type_, sat.Integer):
        return Codec("decimal", scale=type_.scale if type_.asdecimal else None)
    if isinstance(type_, sat.DateTime):
        return Codec("datetime", timezone=bool(type_.timezone))
    python = _python_type(type_)
    by_python: dict[type, Kind] = {
        bool: "boolean",
        int: "integer",
        float: "float",
        Decimal: "decimal",
        dt.datetime: "datetime",
        dt.date: "date",
        dt.time: "time",
        dt.timedelta: "interval",
        bytes: "binary",
        uuid.UUID: "uuid",
        dict: "json",
    }
    if python is not None and python in by_python:
        return Codec(by_python[python])
    if isinstance(type_, sat.Uuid):
        return Codec("uuid") if type_.as_uuid else TEXT
    return TEXT


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def iso_duration(value: dt.timedelta) -> str:
    """An ISO 8601 duration: P1DT2H3M4.5S."""
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    out = f"{sign}P"
    if value.days:
        out += f"{value.days}D"
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if seconds or value.microseconds or (not value.days and not time):
        frac = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
        time += f"{seconds}{frac}S"
    return out + ("T" + time if time else "")


def parse_duration(text: str) -> dt.timedelta:
    match = _DURATION.match(text)
    if match is None or text.upper() in ("P", "-P", "PT", "-PT"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration (P1DT2H3M4S)")
    sign, days, hours, minutes, seconds = match.groups()
    value = dt.timedelta(
        days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0)
    )
    return -value if sign else value
