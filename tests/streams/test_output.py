"""The partitioner is Kafka's: keys land where any Kafka client would put them."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams import output
from streams.output import murmur2, partition_for


@given(st.binary(max_size=100))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_the_java_clients_partitions(key: bytes, partition: int) -> None:
    # What Kafka's own partitioner gives these keys with 1,000 partitions (kafka-python's test vectors).
    assert partition_for(key, 1000) == partition


def test_the_hash_cache_stays_bounded(monkeypatch: object) -> None:
    output._HASHES.clear()
    for i in range(output.HASH_CACHE + 10):
        key = f"key-{i}".encode()
        assert partition_for(key, 7) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % 7
    assert len(output._HASHES) <= output.HASH_CACHE
    assert b"key-0" not in output._HASHES and f"key-{output.HASH_CACHE + 9}".encode() in output._HASHES
    output._HASHES.clear()
