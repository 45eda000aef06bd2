"""``python -m streams.bench.topic_bytes``: what a topic's newest records weigh and which keys wrote them,
read from a real (embedded) broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams.bench import kafka
from streams.bench.topic_bytes import TopicBytes, key_kind, main, topic_bytes
from streams.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


async def _fill(bootstrap: str) -> None:
    """``t.changelog.mv``: a group written again and again (ten 2,000-byte values, one per batch), and
    people written once each (five of 100 bytes); ``t.other``: one record."""
    await kafka.create_topic(bootstrap, "t.changelog.mv", 2)
    await kafka.create_topic(bootstrap, "t.other", 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="zstd")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(
                "t.changelog.mv", b"p" * 100, key=f"person-{i}".encode(), partition=1
            )
        for _ in range(10):
            await producer.send_and_wait("t.changelog.mv", b"g" * 2_000, key=b"group", partition=0)
        await producer.send_and_wait("t.other", b"x", key=b"k", partition=0)
        await producer.send_and_wait("t.other", None, key=b"k", partition=0)
    finally:
        await producer.stop()


def test_the_largest_writers_of_a_topic_are_named_with_their_bytes(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[TopicBytes], list[TopicBytes], list[TopicBytes]]:
        with EmbeddedBroker(tmp_path) as broker:
            await _fill(broker.bootstrap)
            whole = await topic_bytes(broker.bootstrap, ["changelog.mv"], top=2)
            newest = await topic_bytes(broker.bootstrap, ["changelog.mv"], last=3, top=2)
            every = await topic_bytes(broker.bootstrap)
            return whole, newest, every

    whole, newest, every = asyncio.run(scenario())
    (mv,) = whole
    assert mv.topic == "t.changelog.mv"
    # sizes as the consumer sees them (uncompressed): key + value
    assert mv.records == 15 and mv.bytes == 10 * (5 + 2_000) + 5 * (8 + 100)
    assert mv.top[0] == ("group", 10 * 2_005, 10)
    assert mv.top[1][1:] == (108, 1) and len(mv.top) == 2
    # --last: the newest three of each partition
    (tail,) = newest
    assert tail.records == 6 and tail.top[0] == ("group", 3 * 2_005, 3)
    assert tail.bytes == 3 * 2_005 + 3 * 108
    # no topics named: all of them (the broker's own internal topics may be listed too)
    assert {"t.changelog.mv", "t.other"} <= {r.topic for r in every}
    # per kind of key: records, tombstones, bytes
    assert mv.kinds["group"] == [10, 0, 10 * 2_005] and mv.kinds["person-3"] == [1, 0, 108]
    (other,) = [r for r in every if r.topic == "t.other"]
    assert other.kinds == {"k": [2, 1, 3]}


def test_a_keys_kind_is_its_layout_without_ids() -> None:
    ident = "12345678-90ab-cdef-1234-567890abcdef"
    assert key_kind(ident.encode()) == "<id>"
    assert key_kind(b"ref|hr|cn=a,o=x") == "ref|" and key_kind(b"xref|dir|" + ident.encode()) == "xref|"
    assert key_kind(b"hr\x00E1001") == "hr\\x00"
    assert key_kind(b"\x00\x01mv\x00" + ident.encode() + b"\x00member\x00") == "\\x00\\x01mv\\x00"
    assert key_kind(b"deferred\x00" + ident.encode()) == "deferred\\x00"
    assert key_kind(b"plain") == "plain" and key_kind(None) == "(none)"


def test_the_command_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmbeddedBroker(tmp_path) as broker:
        asyncio.run(_fill(broker.bootstrap))
        out = tmp_path / "bytes.json"
        main(
            ["--bootstrap-servers", broker.bootstrap, "--topics", "t.other,changelog.mv", "--json", str(out)]
        )
    printed = capsys.readouterr().out
    assert "t.changelog.mv" in printed and "group: 0.02 in 10" in printed
    rows = json.loads(out.read_text())
    assert [r["topic"] for r in rows] == ["t.changelog.mv", "t.other"]
    assert rows[1]["records"] == 2 and rows[1]["top"] == [["k", 3, 2]]
    assert "k 2 (1)" in printed
