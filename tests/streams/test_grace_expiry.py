"""The metaverse stage's sweep of deletion grace periods (``MetaverseStage._expire_due``), on a real broker:
an object whose source left it with a grace period is marked, not deleted; once the grace period has
ended the sweep deletes it (its deletion on ``mv.changes``, its state gone from the store and its saved
state, or kept deleted until its deprovisioning is confirmed), leaves objects not due alone, and forgets
what it knew of a deleted object's size."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import pack
from schemas.messages import MVDisconnect
from schemas.records import MVChange
from streams.bench.kafka import read_all
from streams.broker import EmbeddedBroker
from streams.output import partition_for

from .helpers import bench_runtime
from .test_reftable import (
    Ev,
    Message,
    _decode,
    contribution,
    group_contribution,
    owning,
    people_in,
    shut_down,
    stop,
    stored,
)

pytestmark = pytest.mark.integration

GRACE_S = 60


def with_grace(config: dict[str, Any]) -> None:
    """A grace period of ``GRACE_S`` on the deletion rules of people and groups; groups provisioned without
    waiting for a member (the test's members are made-up DNs that never exist in the directory, and the
    group must be provisioned to be kept until its deprovisioning is confirmed)."""
    for mv_type in ("person", "group"):
        config["metaverse"][mv_type]["deletion"]["grace_period_s"] = GRACE_S
    for rule in config["outbound"]:
        rule.pop("requires", None)


def left(mv_id: str, anchor: str, ts_ms: int) -> MVDisconnect:
    """The hr object ``anchor`` of ``mv_id`` was deleted at ``ts_ms``."""
    return MVDisconnect(
        mv_id=mv_id,
        connector="hr",
        anchor=anchor,
        reason="deleted",
        cs_version=2,
        event_id=f"hr:{anchor}:2",
        ts_ms=ts_ms,
    )


def test_the_sweep_deletes_objects_whose_grace_period_ended_and_only_those(tmp_path: Path) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            rt = bench_runtime(
                broker.bootstrap, tmp_path, "a", "grace", 4, edit=with_grace, reference_defer_from=3
            )
            p = 0
            leaving, staying = people_in(rt, p, 2)
            group = next(
                g for g in (f"G-{i}" for i in range(60)) if partition_for(g.encode(), rt.partitions) == p
            )
            stage, reader, applier = await owning(rt, p)
            part = stage.store.partition(p)
            topic = rt.names.mv_topic()
            offsets = iter(range(1_000))

            async def process(*msgs: object) -> None:
                async with stage.lock:
                    await stage.process([Ev(Message(topic, p, next(offsets)), pack(m)) for m in msgs])
                    await stage.checkpoint()

            async def deletions() -> list[str]:
                records: list[MVChange] = []
                async for _tp, batch in read_all(broker.bootstrap, [rt.names.mv_changes_topic()], 30):
                    records += [MVChange.model_validate_json(r.value) for r in batch]
                return sorted(r.mv_id for r in records if r.op == "delete")

            try:
                await process(
                    contribution(leaving, "E10"),
                    contribution(staying, "E11"),
                    group_contribution(group, [f"employeeNumber=G{i},ou=people,o=hr" for i in range(4)]),
                )
                # four member DNs registered: the stage defers the group's answers (reference_defer_from 3)
                assert group.encode() in stage._many[p]

                ts = 1_000_000
                await process(left(leaving, "E10", ts), left(group, "g-staff", ts))
                due = ts + GRACE_S * 1000
                marked = [stored(part, m) for m in (leaving, group)]
                assert [m.delete_due_ms if m is not None else None for m in marked] == [due, due]
                assert await deletions() == []

                async with stage.lock:
                    await stage._expire_due(due - 1)
                assert all(stored(part, m) is not None for m in (leaving, staying, group))
                assert await deletions() == []

                async with stage.lock:
                    await stage._expire_due(due)
                    await stage.checkpoint()
                # The person is gone; the group, provisioned in the directory, is kept deleted until its
                # deprovisioning is confirmed (it holds no references any more).
                assert stored(part, leaving) is None and part.get(leaving.encode()) is None
                gone = stored(part, group)
                assert gone is not None and gone.deleted and gone.attributes == {}
                assert _decode(part.get(group.encode()) or b"").deleted
                alive = stored(part, staying)
                assert alive is not None and alive.delete_due_ms is None and not alive.deleted
                assert await deletions() == sorted([leaving, group])
                assert group.encode() not in stage._many.get(p, set())

                # A second sweep finds nothing more to do.
                async with stage.lock:
                    await stage._expire_due(due + 10_000)
                assert await deletions() == sorted([leaving, group])
            finally:
                await stop(reader, applier)
                await shut_down((rt, stage))

    asyncio.run(scenario())
