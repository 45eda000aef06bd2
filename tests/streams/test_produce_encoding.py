"""The one-copy produce request encoder writes exactly aiokafka's bytes, for every version it takes over."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka.protocol import produce
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.types import Int16, Int32, Schema, String
from hypothesis import given
from hypothesis import strategies as st

from streams import produce_encoding

Partition = tuple[int, bytes | None]
partitions = st.lists(st.tuples(st.integers(0, 2**31 - 1), st.none() | st.binary(max_size=300)), max_size=5)
topics = st.lists(st.tuples(st.text(max_size=20), partitions), max_size=5)


def test_it_takes_over_every_version_aiokafka_sends() -> None:
    # An aiokafka whose produce schema changed keeps its own encoder: this says so (not a silent slowdown).
    assert produce_encoding.install() == list(range(9))
    assert produce.ProduceRequest_v8.encode is produce_encoding.encode_v3
    assert produce.ProduceRequest_v0.encode is produce_encoding.encode_v0


@given(
    st.none() | st.text(max_size=10),
    st.sampled_from([-1, 0, 1]),
    st.integers(0, 2**31 - 1),
    topics,
    st.integers(3, 8),
)
def test_v3_and_later_encode_as_aiokafka_does(
    txn: str | None,
    acks: int,
    timeout: int,
    data: list[tuple[str, list[tuple[int, bytes | None]]]],
    version: int,
) -> None:
    request = getattr(produce, f"ProduceRequest_v{version}")(txn, acks, timeout, data)
    assert request.encode() == Struct.encode(request)


@given(st.sampled_from([-1, 0, 1]), st.integers(0, 2**31 - 1), topics, st.integers(0, 2))
def test_v0_to_v2_encode_as_aiokafka_does(
    acks: int, timeout: int, data: list[tuple[str, list[Partition]]], version: int
) -> None:
    request = getattr(produce, f"ProduceRequest_v{version}")(acks, timeout, data)
    assert request.encode() == Struct.encode(request)


def test_an_unknown_layout_keeps_aiokafkas_encoder() -> None:
    class ProduceRequest_v9(produce.ProduceRequest_v8):
        SCHEMA = Schema(("transactional_id", String("utf-8")), ("required_acks", Int16), ("timeout", Int32))

    module = SimpleNamespace(ProduceRequest_v8=produce.ProduceRequest_v8, ProduceRequest_v9=ProduceRequest_v9)
    assert produce_encoding.install(module) == [8]
    assert ProduceRequest_v9.encode is Struct.encode
