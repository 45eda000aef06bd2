"""aiokafka's produce requests encoded in one copy.

aiokafka encodes a request field by field through nested ``Schema``/``Array``/``Bytes`` encoders, each of
which joins its children into new bytes: every record batch is copied once per level (six times) before
the request reaches the socket, in pure Python. A stage flush sends tens of topic-partitions at once, and a
large group's state is megabytes: profiled, this encoding was ~5% of the worker's time during a load and a
fifth of it for one change of a 10,000-member group (docs/benchmarks.md, sixteenth session).

``install`` gives the ``ProduceRequest`` structs of the layouts below an ``encode`` that collects the
fields' bytes and joins them once. It produces exactly aiokafka's bytes (compared by
tests/streams/test_produce_encoding.py); a version whose schema is not one of these layouts keeps
aiokafka's own encoder.
"""

from __future__ import annotations

import struct
from typing import Any

from aiokafka.protocol import produce
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.types import Array, Bytes, Int16, Int32, Schema, String

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_NULL_STRING = _I16.pack(-1)
_NULL_BYTES = _I32.pack(-1)


def _string(value: str | None) -> bytes:
    if value is None:
        return _NULL_STRING
    data = value.encode("utf-8")
    return _I16.pack(len(data)) + data


def _topics(parts: list[Any], topics: list[tuple[str, list[tuple[int, Any]]]]) -> None:
    parts.append(_I32.pack(len(topics)))
    for topic, partitions in topics:
        parts.append(_string(topic))
        parts.append(_I32.pack(len(partitions)))
        for partition, data in partitions:
            if data is None:
                parts.append(_I32.pack(partition) + _NULL_BYTES)
            else:
                parts.append(_I32.pack(partition) + _I32.pack(len(data)))
                parts.append(data)


def encode_v0(self: Any) -> bytes:
    """ProduceRequest v0-v2: required_acks, timeout, [topic, [partition, records]]."""
    d = self.__dict__
    parts: list[Any] = [_I16.pack(d["required_acks"]), _I32.pack(d["timeout"])]
    _topics(parts, d["topics"])
    return b"".join(parts)


def encode_v3(self: Any) -> bytes:
    """ProduceRequest v3 and later: transactional_id first, then as v0."""
    d = self.__dict__
    parts: list[Any] = [
        _string(d["transactional_id"]),
        _I16.pack(d["required_acks"]),
        _I32.pack(d["timeout"]),
    ]
    _topics(parts, d["topics"])
    return b"".join(parts)


def _layout(schema: Schema) -> tuple[Any, ...]:
    """A schema's field names and types, nested: what an encoder must agree with."""
    out: list[Any] = []
    for name, field in zip(schema.names, schema.fields, strict=True):
        if isinstance(field, Array):
            inner = field.array_of
            out.append((name, "array", _layout(inner) if isinstance(inner, Schema) else inner))
        elif isinstance(field, String):
            out.append((name, "string", field.encoding))
        elif isinstance(field, Schema):
            out.append((name, "schema", _layout(field)))
        else:
            out.append((name, field))
    return tuple(out)


_PARTITIONS = ("partitions", "array", (("partition", Int32), ("messages", Bytes)))
_TOPICS = ("topics", "array", (("topic", "string", "utf-8"), _PARTITIONS))
#: The layouts the encoders above write, and the encoder for each.
LAYOUTS = {
    (("required_acks", Int16), ("timeout", Int32), _TOPICS): encode_v0,
    (
        ("transactional_id", "string", "utf-8"),
        ("required_acks", Int16),
        ("timeout", Int32),
        _TOPICS,
    ): encode_v3,
}


def install(module: Any = produce) -> list[int]:
    """Give every ProduceRequest version of ``module`` (aiokafka's) with a known layout the one-copy
    encoder (idempotent). Returns the versions it applies to."""
    versions = []
    for name in dir(module):
        found = getattr(module, name)
        if not (isinstance(found, type) and name.startswith("ProduceRequest_v")):
            continue
        cls: Any = found
        encoder = LAYOUTS.get(_layout(cls.SCHEMA))
        if encoder is not None:
            cls.encode = encoder
            versions.append(int(name.removeprefix("ProduceRequest_v")))
        elif cls.encode in LAYOUTS.values():
            cls.encode = Struct.encode  # inherited from a version it took over: not its layout
    return sorted(versions)
