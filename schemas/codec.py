"""Encoding and decoding on the hot path (msgspec): MessagePack for state and internal messages, JSON for
the public topics.

One encoder and one decoder per type, built once. Decoding validates: a malformed record raises
``msgspec.ValidationError`` / ``msgspec.DecodeError`` (both ``ValueError``s), which the stages
dead-letter.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar, cast

import msgspec

from schemas.wire import ChangeRecord, RunMarker

T = TypeVar("T")

_PACK = msgspec.msgpack.Encoder()
_JSON = msgspec.json.Encoder()

#: Errors a decoder raises for a malformed record (both are ValueErrors).
DecodeErrors = (msgspec.ValidationError, msgspec.DecodeError)


def as_dict(obj: msgspec.Struct, drop_none: bool = False) -> dict[str, Any]:
    """A struct as plain builtins, every field included (defaults too), nested structs as dicts;
    ``drop_none``: without the top-level fields that are None."""
    data = {f: _builtins(getattr(obj, f)) for f in obj.__struct_fields__}
    return {k: v for k, v in data.items() if v is not None} if drop_none else data


def _builtins(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return as_dict(value)
    if isinstance(value, dict):
        return {k: _builtins(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_builtins(v) for v in value]
    return value


def pack(obj: Any) -> bytes:
    """MessagePack: state values, changelog records and internal messages."""
    return _PACK.encode(obj)


def to_json(obj: Any) -> bytes:
    """JSON: records on the public topics (``mv.changes``, ``export.<c>``, ``errors``, ...)."""
    return _JSON.encode(obj)


@cache
def unpacker(kind: Any) -> msgspec.msgpack.Decoder[Any]:
    """A MessagePack decoder for a type or a tagged union of structs."""
    return msgspec.msgpack.Decoder(kind)


@cache
def json_decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    """A JSON decoder for a type or a tagged union of structs."""
    return msgspec.json.Decoder(kind)


def unpack(raw: bytes, kind: type[T]) -> T:
    result: T = unpacker(cast(Any, kind)).decode(raw)
    return result


def from_json(raw: bytes, kind: type[T]) -> T:
    result: T = json_decoder(cast(Any, kind)).decode(raw)
    return result


# External producers write these topics: numbers given as strings are accepted, as pydantic (the
# contract, lax mode) accepts them.
_RECORD = msgspec.json.Decoder(ChangeRecord, strict=False)
_MARKER = msgspec.json.Decoder(RunMarker, strict=False)


def decode_import(raw: bytes) -> ChangeRecord | RunMarker:
    """A record of an ``import.<connector>`` topic: a change record or a full-import run marker.

    The two share ``op`` with several values each (msgspec tags need one per type), so a run marker is
    recognised by its ``op`` first; what is not a valid run marker must be a valid change record."""
    if b'"run-' in raw:
        try:
            marker: RunMarker = _MARKER.decode(raw)
            return marker
        except msgspec.ValidationError:
            pass
    record: ChangeRecord = _RECORD.decode(raw)
    return record
