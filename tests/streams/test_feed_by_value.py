"""A large group's member change goes on ``mv.changes`` by value (``MVChange`` version 2) only once the
metaverse stage has published the group whole itself since it took the partition: after a start, a
rebalance or a crash (``MetaverseStage.assigned``) the group's first record is whole again, so a consumer
that folded a history the new owner processes again otherwise is set right; and whole again once
``pipeline.mv_changes_whole_every_s`` has passed since the last whole one. On a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.references import in_route, out_route
from engine.values import dn_key
from schemas.codec import pack
from schemas.messages import RefRegister, RefValue
from schemas.records import MVChange
from streams.bench.kafka import read_all
from streams.broker import EmbeddedBroker
from streams.output import partition_for
from streams.runtime import Runtime

from .helpers import bench_runtime
from .test_reftable import Ev, Message, group_contribution, owning, publish, shut_down, stop

pytestmark = pytest.mark.integration

P = 0
ANCHOR = "g-staff"


def runtime(bootstrap: str, tmp: Path) -> Runtime:
    """The bench's configuration, member changes by value from 3 members."""
    return bench_runtime(bootstrap, tmp, "a", "feed", 4, mv_changes_by_value_from=3)


def source_dn(i: int) -> str:
    return f"employeeNumber=E{i},ou=people,o=hr"


def person(i: int) -> str:
    return f"P-{i}"


def member_added(group: str, i: int) -> RefRegister:
    """What staging sends when member ``i`` joins the group: its DN registered."""
    return RefRegister(
        mv_id=group,
        op="refer",
        connector="hr",
        keys=[dn_key(source_dn(i))],
        attribute="member",
        anchor=ANCHOR,
        ts_ms=10 + i,
    )


def test_member_changes_go_by_value_after_the_worker_published_the_group_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = runtime(broker.bootstrap, tmp_path)
            group = next(
                g for g in (f"G-{i}" for i in range(60)) if partition_for(g.encode(), rt.partitions) == P
            )
            # The reference table knows every member: its hr DN's mv_id, and its DN in the directory.
            await publish(
                rt,
                *(RefValue(route=in_route("hr", source_dn(i)), value=person(i), ts_ms=1) for i in range(9)),
                *(
                    RefValue(
                        route=out_route("dir", person(i)),
                        value=f"uid=p{i},ou=people,dc=example,dc=org",
                        ts_ms=1,
                    )
                    for i in range(9)
                ),
            )
            stage, reader, applier = await owning(rt, P)
            offsets = iter(range(1_000))

            async def step(*msgs: object) -> list[MVChange]:
                """Process ``msgs`` as one batch of the partition; the group's new mv.changes records."""
                before = len(await feed())
                topic = rt.names.mv_topic()
                async with stage.lock:
                    await stage.process([Ev(Message(topic, P, next(offsets)), pack(m)) for m in msgs])
                return (await feed())[before:]

            async def feed() -> list[MVChange]:
                records = []
                async for _tp, batch in read_all(broker.bootstrap, [rt.names.mv_changes_topic()], 30):
                    records += [MVChange.model_validate_json(r.value) for r in batch]
                return [r for r in records if r.mv_id == group]

            try:
                projected = await step(group_contribution(group, [source_dn(i) for i in range(4)], ANCHOR))
                assert projected and projected[-1].version == 1
                assert projected[-1].attributes["member"] == sorted(person(i) for i in range(4))

                # Published whole by this worker: a member change goes by value.
                [by_value] = await step(member_added(group, 4))
                assert (by_value.version, by_value.added, by_value.removed) == (
                    2,
                    {"member": [person(4)]},
                    None,
                )
                assert by_value.counts == {"member": 5} and "member" not in by_value.attributes

                # The partition is taken again (after a restart, a rebalance): whole first, then by value.
                await stage.assigned([P], [])
                [whole] = await step(member_added(group, 5))
                assert (whole.version, whole.added, whole.counts) == (1, None, None)
                assert whole.attributes["member"] == sorted(person(i) for i in range(6))
                [again] = await step(member_added(group, 6))
                assert (again.version, again.added, again.counts) == (
                    2,
                    {"member": [person(6)]},
                    {"member": 7},
                )

                # Its last whole record older than mv_changes_whole_every_s: whole again, then by value.
                stage._fed_whole[P][group] -= rt.config.pipeline.mv_changes_whole_every_s
                [periodic] = await step(member_added(group, 7))
                assert periodic.version == 1 and periodic.attributes["member"] == sorted(
                    map(person, range(8))
                )
                [last] = await step(member_added(group, 8))
                assert (last.version, last.added) == (2, {"member": [person(8)]})
            finally:
                await stop(reader, applier)
                await shut_down((rt, stage))

    asyncio.run(scenario())
