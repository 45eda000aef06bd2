"""The partitioner is Kafka's: keys land where any Kafka client would put them; ``after`` records are
produced once the others are acknowledged."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import pack
from schemas.messages import JoinRequest
from streams.broker import EmbeddedBroker
from streams.output import Outputs, murmur2, partition_for
from tests.fixtures.kafka import create_topic
from tests.streams.helpers import Ev, Message, bench_runtime


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


def spy_sends(producer: AIOKafkaProducer) -> list[tuple[str, bool]]:
    """Record each batch ``producer`` sends: its topic, and whether every batch sent before it was
    acknowledged by then."""
    sent: list[tuple[str, bool]] = []
    futures: list[asyncio.Future[Any]] = []
    send_batch = producer.send_batch

    async def spy(batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        sent.append((topic, all(f.done() for f in futures)))
        fut = await send_batch(batch, topic, partition=partition)
        futures.append(fut)
        return fut

    producer.send_batch = spy  # type: ignore[method-assign]
    return sent


def test_after_records_go_out_once_the_others_are_acknowledged(tmp_path: Path) -> None:
    """An ``after`` record (the join's answer to staging) is sent only when every other record of the flush
    (the contribution it answers, on another topic) is on record: across topics Kafka keeps no order."""

    async def run(bootstrap: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        sent = spy_sends(producer)
        try:
            out = Outputs(producer, {"mv": 2, "links": 2}, Counter())
            out.add("links", b"anchor-1", b"link-1", after=True)
            for i in range(20):
                out.add("mv", f"mv-{i}".encode(), b"contribution")
            assert len(out) == 21
            ends = await out.flush()
            assert len(out) == 0
            # Every contribution batch went out before the link, and none was waiting for its ack then.
            topics = [topic for topic, _ in sent]
            assert topics[-1] == "links" and "links" not in topics[:-1] and len(topics) >= 2
            assert sent[-1][1] is True
            assert ends[("links", partition_for(b"anchor-1", 2))] == 1
            assert sum(end for (topic, _p), end in ends.items() if topic == "mv") == 20
        finally:
            await producer.stop()

    with EmbeddedBroker(tmp_path) as broker:
        create_topic(broker.bootstrap, "mv", 2)
        create_topic(broker.bootstrap, "links", 2)
        asyncio.run(run(broker.bootstrap))


def test_the_join_answers_staging_only_once_its_contribution_is_on_record(tmp_path: Path) -> None:
    """A projection's contribution (metaverse topic) is acknowledged before its link (links topic) is
    sent: staging's registrations in answer to the link land after the keys the contribution carried."""
    from streams.app import ensure_topics
    from streams.stages.join import JoinStage

    async def run(bootstrap: str) -> None:
        rt = bench_runtime(bootstrap, tmp_path, "w", "order", 2)
        await ensure_topics(rt)
        sent = spy_sends(await rt.producer())
        stage = JoinStage(rt)
        request = JoinRequest(
            route="person|employeeId=E1",
            mv_type="person",
            connector="hr",
            anchor="E1",
            dn=None,
            cs_version=1,
            event_id="hr:E1:1",
            project=True,
            flows={"employeeId": ["E1"]},
            ts_ms=1,
            ref_keys={"manager": ["uid=e0,ou=people"]},
        )
        value = pack(request)
        p = partition_for(request.route.encode(), rt.topic_partitions()[rt.names.join_topic()])
        await stage.process([Ev(Message(rt.names.join_topic(), p, 0), value)])
        topics = [topic for topic, _ in sent]
        assert topics == [rt.names.mv_topic(), rt.names.links_topic()]
        assert sent[1] == (rt.names.links_topic(), True)  # the contribution was acknowledged by then
        await rt.stop()

    with EmbeddedBroker(tmp_path / "broker") as broker:
        asyncio.run(run(broker.bootstrap))
