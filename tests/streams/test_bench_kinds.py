"""The bench's labels for internal messages (``streams.bench.kafka.message_kind``)."""

from __future__ import annotations

from schemas.codec import pack
from schemas.messages import CSLink, JoinIndexUpdate, JoinRequest, RefResolved, RefUpdate
from streams.bench.kafka import message_kind


def test_each_internal_message_is_labelled_by_its_role() -> None:
    refer_out = RefUpdate(
        route="xref|dir|m1", op="refer", direction="out", connector="dir", key="m1", referrer="m2", ts_ms=1
    )
    own_in = RefUpdate(route="ref|hr|cn=a", op="own", connector="hr", key="cn=a", owner="a", ts_ms=1)
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
    assert message_kind(pack(refer_out)) == "ref refer/out/xref"
    assert message_kind(pack(own_in)) == "ref own/in/ref"
    assert message_kind(pack(join)) == "join lock"
    assert message_kind(pack(JoinIndexUpdate(route="r", op="register", ts_ms=1))) == "index register"
    answer = RefResolved(mv_id="m", direction="out", connector="dir", key="k", value=None, ts_ms=1)
    assert message_kind(pack(answer)) == "ref-resolved out"
    link = CSLink(connector="hr", anchor="a", mv_id="m", outcome="joined", ts_ms=1)
    assert message_kind(pack(link)) == "link"
    assert message_kind(b"\xc1not msgpack") == "undecodable"
    assert message_kind(pack([1, 2])) == "undecodable"
    assert message_kind(None) == "undecodable"
