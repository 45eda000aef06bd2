"""The bench's labels for internal messages (``streams.bench.kafka.message_kind``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas.codec import pack
from schemas.messages import (
    CSLink,
    JoinIndexUpdate,
    JoinRequest,
    RefRegister,
    RefResolved,
    RefUpdate,
    RefValue,
)
from streams.bench import kafka
from streams.bench.kafka import message_kind
from streams.broker import EmbeddedBroker


def test_each_internal_message_is_labelled_by_its_role() -> None:
    refer_in = RefRegister(
        mv_id="m2", op="refer", connector="hr", keys=["cn=a"], attribute="manager", ts_ms=1
    )
    own_in = RefUpdate(route="ref|hr|cn=a", op="own", connector="hr", key="cn=a", owner="a", ts_ms=1)
    value_out = RefValue(route="xref|dir|m1", value="cn=m1", ts_ms=1)
    join = JoinRequest(
        route="r",
        mv_type="person",
        connector="hr",
        anchor="a",
        dn=None,
        cs_version=1,
        event_id="e",
        project=True,
        flows={},
        ts_ms=1,
        phase="lock",
    )
    assert message_kind(pack(refer_in)) == "ref-register refer/in"
    assert message_kind(pack(own_in)) == "ref own"
    assert message_kind(pack(value_out)) == "ref-value xref"
    assert message_kind(pack(join)) == "join lock"
    assert message_kind(pack(JoinIndexUpdate(route="r", op="register", ts_ms=1))) == "index register"
    answer = RefResolved(mv_id="m", direction="out", connector="dir", key="k", value=None, ts_ms=1)
    assert message_kind(pack(answer)) == "ref-resolved out"
    link = CSLink(connector="hr", anchor="a", mv_id="m", outcome="joined", ts_ms=1)
    assert message_kind(pack(link)) == "link"
    assert message_kind(b"\xc1not msgpack") == "undecodable"
    assert message_kind(pack([1, 2])) == "undecodable"
    assert message_kind(None) == "undecodable"


@pytest.mark.integration
def test_message_kinds_counts_a_topic_from_its_beginning_or_says_it_ran_out_of_time(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, dict[str, int]], bool]:
        with EmbeddedBroker(tmp_path) as broker:
            await kafka.create_topic(broker.bootstrap, "internal", 2)
            producer = await kafka.producer(broker.bootstrap)
            link = pack(CSLink(connector="hr", anchor="a", mv_id="m", outcome="joined", ts_ms=1))
            index = pack(JoinIndexUpdate(route="r", op="register", ts_ms=1))
            for i, value in enumerate([link, link, index]):
                await producer.send_and_wait("internal", value, partition=i % 2)
            await producer.stop()
            counted = await kafka.message_kinds(broker.bootstrap, ["internal"], timeout_s=30)
            try:
                await kafka.message_kinds(broker.bootstrap, ["internal"], timeout_s=0)
            except TimeoutError:
                return counted, True
            return counted, False

    counted, timed_out = asyncio.run(scenario())
    assert counted == {"internal": {"link": 2, "index register": 1}}
    assert timed_out
