"""The delta watermark: one position per object type, as compact, deterministic JSON.

Watermark-column mode, ``{"value": V, "anchors": [...]}``: every row with column value < V has been read,
and of the rows with value == V exactly the listed anchors. The next delta reads ``column >= V`` and skips
those anchors, so a row committed later with the same value as the last one read (a same-timestamp tie) is
not lost, and nothing already read at the boundary is read again.

Change-table mode, ``{"hi": H, "seen": [[lo, hi], ...]}``: the highest change id read, and which ids in
``(H - window, H]`` have been read. The next delta re-reads that window and skips the ids seen, so a change
row whose transaction committed after a higher id had been read (concurrent writers) is still picked up.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from connectors.base import CursorExpired

VERSION = 1


# --------------------------------------------------------------------------- raw values
def encode_raw(value: object) -> list[Any] | None:
    """A raw column value as a tagged JSON value that decodes to an equal Python value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, Decimal):
        return ["dec", str(value)]
    if isinstance(value, float):
        return ["float", repr(value)]
    if isinstance(value, dt.datetime):
        return ["datetime", value.isoformat()]
    if isinstance(value, dt.date):
        return ["date", value.isoformat()]
    if isinstance(value, dt.time):
        return ["time", value.isoformat()]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", base64.b64encode(bytes(value)).decode("ascii")]
    if isinstance(value, str):
        return ["str", value]
    raise TypeError(f"a watermark column value of type {type(value).__name__} is not supported")


def decode_raw(data: object) -> object:
    if data is None:
        return None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)):
        raise ValueError(f"not a tagged value: {data!r}")
    tag, value = data
    if tag == "bool" and isinstance(value, bool):
        return value
    if tag == "int" and isinstance(value, int):
        return value
    if isinstance(value, str):
        decoders: dict[str, Any] = {
            "dec": Decimal,
            "float": float,
            "datetime": dt.datetime.fromisoformat,
            "date": dt.date.fromisoformat,
            "time": dt.time.fromisoformat,
            "bytes": lambda v: base64.b64decode(v, validate=True),
            "str": str,
        }
        if tag in decoders:
            return decoders[tag](value)
    raise ValueError(f"unknown tagged value {data!r}")


# --------------------------------------------------------------------------- id ranges
@dataclass
class IdRanges:
    """A set of integers kept as sorted, disjoint, non-adjacent inclusive ranges."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]

    def add(self, value: int) -> None:
        i = bisect.bisect_right(self.starts, value) - 1
        if i >= 0 and value <= self.ends[i]:
            return
        joins_left = i >= 0 and self.ends[i] == value - 1
        joins_right = i + 1 < len(self.starts) and self.starts[i + 1] == value + 1
        if joins_left and joins_right:
            self.ends[i] = self.ends[i + 1]
            del self.starts[i + 1], self.ends[i + 1]
        elif joins_left:
            self.ends[i] = value
        elif joins_right:
            self.starts[i + 1] = value
        else:
            self.starts.insert(i + 1, value)
            self.ends.insert(i + 1, value)

    def prune(self, floor: int) -> None:
        """Forget every value <= floor."""
        keep = bisect.bisect_right(self.ends, floor)
        del self.starts[:keep], self.ends[:keep]
        if self.starts and self.starts[0] <= floor:
            self.starts[0] = floor + 1

    def to_json(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self.starts, self.ends, strict=True)]

    @classmethod
    def from_json(cls, data: object) -> IdRanges:
        out = cls()
        if not isinstance(data, list):
            raise ValueError("seen must be a list of [first, last] ranges")
        for item in data:
            if not (isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)):
                raise ValueError(f"bad range {item!r}")
            if item[0] > item[1]:
                raise ValueError(f"empty range {item!r}")
            out.add_range(item[0], item[1])
        return out

    def add_range(self, first: int, last: int) -> None:
        """Add every value in ``first..last``."""
        self.add(first)
        i = bisect.bisect_right(self.starts, first) - 1
        self.ends[i] = max(self.ends[i], last)
        while i + 1 < len(self.starts) and self.starts[i + 1] <= self.ends[i] + 1:
            self.ends[i] = max(self.ends[i], self.ends[i + 1])
            del self.starts[i + 1], self.ends[i + 1]


# --------------------------------------------------------------------------- positions
@dataclass
class ColumnPosition:
    """Watermark-column mode: rows below ``value`` read, and these anchors at ``value``."""

    value: object = None
    anchors: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"value": encode_raw(self.value), "anchors": sorted(self.anchors)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnPosition:
        anchors = data.get("anchors")
        if not isinstance(anchors, list) or not all(isinstance(a, str) for a in anchors):
            raise ValueError("anchors must be a list of strings")
        return cls(value=decode_raw(data.get("value")), anchors=set(anchors))


@dataclass
class ChangePosition:
    """Change-table mode: the highest change id read (None: the table was empty) and the recent ids read."""

    hi: int | None = None
    seen: IdRanges = field(default_factory=IdRanges)

    def to_json(self) -> dict[str, Any]:
        return {"hi": self.hi, "seen": self.seen.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChangePosition:
        hi = data.get("hi")
        if hi is not None and type(hi) is not int:
            raise ValueError("hi must be an integer")
        return cls(hi=hi, seen=IdRanges.from_json(data.get("seen", [])))


Position = ColumnPosition | ChangePosition


def dump(positions: dict[str, Position]) -> str:
    types = {name: {"mode": _mode(p), **p.to_json()} for name, p in sorted(positions.items())}
    return json.dumps({"v": VERSION, "types": types}, sort_keys=True, separators=(",", ":"))


def _mode(position: Position) -> str:
    return "watermark" if isinstance(position, ColumnPosition) else "changes"


def load(text: str, modes: dict[str, str]) -> dict[str, Position]:
    """Positions per object type; CursorExpired when the watermark does not fit this configuration."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != VERSION or not isinstance(data.get("types"), dict):
            raise ValueError(f"not a version {VERSION} SQL watermark")
        out: dict[str, Position] = {}
        for name, mode in modes.items():
            entry = data["types"].get(name)
            if not isinstance(entry, dict):
                raise CursorExpired(
                    f"The watermark has no position for object type {name!r} (added since it was taken)"
                )
            if entry.get("mode") != mode:
                raise CursorExpired(
                    f"The watermark of object type {name!r} is for {entry.get('mode')!r} mode, "
                    f"the configuration now uses {mode!r}"
                )
            out[name] = (
                ColumnPosition.from_json(entry) if mode == "watermark" else ChangePosition.from_json(entry)
            )
        return out
    except CursorExpired:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CursorExpired(f"The stored SQL watermark cannot be read: {exc}") from None
