"""Reference answers deferred while the worker is behind its input (``pipeline.reference_defer_ms``), on a
real broker: kept as one key each instead of applied, applied before any later message of their object,
carried by the saved state to a worker that takes the partition over, and applied when the worker has
caught up or they have waited long enough."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.references import in_route
from schemas.codec import pack
from schemas.errors import IdsyncError
from schemas.messages import RefRegister, RefValue
from streams.app import create_app
from streams.broker import EmbeddedBroker
from streams.output import partition_for
from streams.runtime import Runtime, Settings
from streams.stages import metaverse as metaverse_stage
from streams.stages.metaverse import DEFERRED, MetaverseStage
from streams.sync import drained

from .helpers import empty_bench_config, until
from .test_reftable import (
    MANAGER_DN,
    ROUTE,
    Ev,
    Message,
    contribution,
    group_contribution,
    owning,
    people_in,
    publish,
    register_managers,
    runtime,
    shut_down,
    stop,
    stored,
    taking_over,
)

pytestmark = pytest.mark.integration


def behind_switch(monkeypatch: pytest.MonkeyPatch, *runtimes: Runtime) -> dict[str, bool]:
    """Whether the workers are behind their input, set by the test (the real signal is their stages'
    consumer lag: ``test_a_stage_is_behind_while_its_batches_leave_records_waiting``, test_consumer.py)."""
    state = {"behind": True}
    for rt in runtimes:
        monkeypatch.setattr(rt, "behind", lambda *_a, **_k: state["behind"])
    return state


async def managed(
    broker: EmbeddedBroker, tmp: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> tuple[Runtime, int, list[str], dict[str, bool], tuple[MetaverseStage, Any, Any]]:
    """A worker owning partition 0 whose ``n`` people have registered to their manager's DN, not behind
    yet, deferring every object's answers (``reference_defer_from`` 0): (runtime, partition, people, its
    behind switch, (stage, table reader, applier))."""
    a = runtime(broker.bootstrap, tmp, "a", reference_defer_from=0)
    people = people_in(a, 0, n)
    switch = behind_switch(monkeypatch, a)
    switch["behind"] = False
    running = await owning(a, 0)
    await register_managers(a, running[0], 0, people)
    return a, 0, people, switch, running


def held(stage: MetaverseStage, p: int, mv_id: str, attribute: str) -> list[str]:
    """An object's attribute as the stage holds it (unsaved state first, then the database)."""
    mv = stored(stage.store.partition(p), mv_id)
    return list(mv.attributes.get(attribute, [])) if mv is not None else []


def manager(stage: MetaverseStage, p: int, mv_id: str) -> list[str]:
    """The person's manager as the stage holds it."""
    return held(stage, p, mv_id, "manager")


def deferred_keys(stage: MetaverseStage, p: int) -> list[bytes]:
    """Deferred answers in partition ``p``'s registrations store, saved or not."""
    part = stage.refs.partition(p)
    keys = {k for k, _ in part.scan(DEFERRED)}
    for k in part.unsaved_under(DEFERRED):
        if part.unsaved[k] is None:
            keys.discard(k)
        else:
            keys.add(k)
    return sorted(keys)


def test_answers_deferred_while_behind_are_applied_before_the_objects_next_message_or_once_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a", reference_defer_from=0)
            p = 0
            people = people_in(a, p)
            switch = behind_switch(monkeypatch, a)
            stage, reader, applier = await owning(a, p)
            switch["behind"] = False
            await register_managers(a, stage, p, people)
            assert [manager(stage, p, m) for m in people] == [[]] * 5

            # Behind: the manager joins, and the table's answer to its five referrers is kept, not applied.
            switch["behind"] = True
            await publish(a, RefValue(route=ROUTE, value="M-one", ts_ms=3))
            await until(lambda: a.counters.steps["ref-answers-deferred"] == 5, 10)
            assert [manager(stage, p, m) for m in people] == [[]] * 5
            assert len(deferred_keys(stage, p)) == 5 and a.counters.deferred == 5
            # The manager changes again: the later answer replaces the earlier one (still one key each).
            await publish(a, RefValue(route=ROUTE, value="M-one-b", ts_ms=4))
            await until(lambda: a.counters.steps["ref-answers-deferred"] == 10, 10)
            assert len(deferred_keys(stage, p)) == 5

            # A message for one of them: its deferred answer is applied first, then the message — here
            # it leaves its manager: the answer must not bring the manager back after it.
            first, second = people[0], people[1]
            leave = RefRegister(
                mv_id=first,
                op="unrefer",
                connector="hr",
                keys=[MANAGER_DN],
                attribute="manager",
                anchor="E10",
                ts_ms=5,
            )
            update = msgspec.structs.replace(contribution(second, "E11"), cs_version=2)
            topic = a.names.mv_topic()
            async with stage.lock:
                await stage.process(
                    [Ev(Message(topic, p, 100), pack(leave)), Ev(Message(topic, p, 101), pack(update))]
                )
            assert manager(stage, p, first) == []
            assert manager(stage, p, second) == ["M-one-b"]  # deferred answer applied before the update
            assert a.counters.deferred == 3 and len(deferred_keys(stage, p)) == 3
            async with stage.lock:
                await stage.checkpoint()

            # The worker stops with three referrers' answers deferred: they are in its saved state, and
            # the worker that takes the partition over applies them once it is not behind.
            await stop(applier, reader)
            b, other, reader_b = await taking_over(broker.bootstrap, tmp_path, p)
            switch_b = behind_switch(monkeypatch, b)
            await asyncio.wait_for(other.table.ready.wait(), 30)
            async with other.lock:
                await other.assigned([p], [])
            rest = people[2:]
            assert b.counters.deferred == 3 and [manager(other, p, m) for m in rest] == [[]] * 3

            # Still behind: nothing has waited ``reference_defer_ms`` yet, nothing is applied.
            await other.release_due()
            assert [manager(other, p, m) for m in rest] == [[]] * 3
            # Caught up: all of them are.
            switch_b["behind"] = False
            await other.release_due()
            assert [manager(other, p, m) for m in rest] == [["M-one-b"]] * 3
            assert b.counters.deferred == 0
            async with other.lock:
                await other.checkpoint()
            assert deferred_keys(other, p) == []
            assert manager(other, p, first) == [] and manager(other, p, second) == ["M-one-b"]
            assert a.errors == [] and b.errors == []

            await stop(reader_b)
            await shut_down((a, stage), (b, other))

    asyncio.run(scenario())


def test_answers_deferred_longer_than_the_limit_are_applied_while_still_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that never catches up (a sustained overload) still applies what it deferred, once it has
    waited ``reference_defer_ms``: the oldest first, by the app's release task."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a, p, people, switch, (stage, reader, applier) = await managed(broker, tmp_path, monkeypatch, 3)
            stage._defer_s = 1.0
            releaser = asyncio.ensure_future(stage.release_deferred())
            switch["behind"] = True
            started = time.monotonic()
            await publish(a, RefValue(route=ROUTE, value="M-one", ts_ms=3))
            await until(lambda: a.counters.steps["ref-answers-deferred"] == 3, 10)
            assert [manager(stage, p, m) for m in people] == [[]] * 3
            # Applied once committed (the count drops when they are taken, before their batch's outputs
            # are acknowledged: waiting for it alone raced the commit on a loaded machine).
            await until(lambda: [manager(stage, p, m) for m in people] == [["M-one"]] * 3, 10)
            assert time.monotonic() - started >= 1.0
            assert a.counters.deferred == 0

            await stop(releaser, applier, reader)
            await shut_down((a, stage))

    asyncio.run(scenario())


def test_an_answer_applied_at_once_comes_after_those_deferred_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught up, the applier answers a referrer directly: what was deferred for it is applied first, so
    the newer value is the one that stays."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a, p, people, switch, (stage, reader, applier) = await managed(broker, tmp_path, monkeypatch, 2)
            switch["behind"] = True
            await publish(a, RefValue(route=ROUTE, value="M-one", ts_ms=3))
            await until(lambda: a.counters.deferred == 2, 10)
            switch["behind"] = False  # caught up; no release task runs here: only the applier
            await publish(a, RefValue(route=ROUTE, value="M-two", ts_ms=4))
            await until(lambda: a.counters.deferred == 0, 10)
            assert [manager(stage, p, m) for m in people] == [["M-two"]] * 2
            assert deferred_keys(stage, p) == []

            await stop(applier, reader)
            await shut_down((a, stage))

    asyncio.run(scenario())


def test_the_pipeline_is_not_drained_while_answers_are_deferred(tmp_path: Path) -> None:
    rt = runtime("127.0.0.1:1", tmp_path, "a")
    rt.counters.last_activity = 0
    rt.counters.deferred = 2
    with pytest.raises(IdsyncError, match="2 objects' deferred reference answers"):
        asyncio.run(drained(rt, settle_s=0, timeout_s=0.2))
    rt.counters.deferred = 0
    asyncio.run(drained(rt, settle_s=0, timeout_s=0.2))


def test_the_backlog_that_defers_answers_is_that_of_the_stages_feeding_the_metaverse(tmp_path: Path) -> None:
    """The app tells the metaverse stage which consumers' lag counts: staging, join and its own, never an
    export's (a slow target system holds no group change back)."""
    config = empty_bench_config(tmp_path, "inputs", 2)
    pipeline = create_app(Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path / "w"), config)
    try:
        consumers = {c.stage: c for c in pipeline.consumers}
        assert any(name.startswith("export") for name in consumers)  # the bench's directory target
        mv = consumers["metaverse"].process.__self__
        assert isinstance(mv, MetaverseStage)
        assert sorted(mv.input_stages) == ["join", "metaverse", "staging"]
    finally:
        pipeline.close()
        pipeline.rt.close_stores()


def test_a_table_applier_with_a_backlog_defers_answers_while_the_inputs_are_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load's tail: the stages have caught up with their inputs, but the reference table's applier has
    many routes left to apply (each person provisioned publishes its target DN). While it has at least
    ``BEHIND_RECORDS`` left, its answers are deferred, and applied together once it has caught up; with
    fewer, they are applied at once. (The threshold is lowered here: the real one is 2,000 routes.)"""

    async def take_at_once(a: Runtime, stage: MetaverseStage, applier: Any, values: list[RefValue]) -> Any:
        """Publish ``values`` while the applier is stopped, so that it takes them all in one go."""
        await stop(applier)
        await publish(a, *values)
        await until(lambda: stage.table.backlog() == len(values), 10)
        return asyncio.ensure_future(stage.apply_table())

    def others(tag: str) -> list[RefValue]:
        return [RefValue(route=f"ref|hr|other-{tag}-{i}", value=f"X-{i}", ts_ms=3) for i in range(4)]

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a, p, people, switch, (stage, reader, applier) = await managed(broker, tmp_path, monkeypatch, 3)
            assert switch["behind"] is False  # the inputs are caught up throughout

            # Five routes in one take, the threshold six: applied at once.
            monkeypatch.setattr(metaverse_stage, "BEHIND_RECORDS", 6)
            values = [RefValue(route=ROUTE, value="M-one", ts_ms=3), *others("a")]
            applier = await take_at_once(a, stage, applier, values)
            await until(lambda: [manager(stage, p, m) for m in people] == [["M-one"]] * 3, 10)
            assert a.counters.steps["ref-answers-deferred"] == 0

            # Five routes in one take, the threshold three: the applier is behind, its answers wait.
            monkeypatch.setattr(metaverse_stage, "BEHIND_RECORDS", 3)
            values = [RefValue(route=ROUTE, value="M-two", ts_ms=4), *others("b")]
            applier = await take_at_once(a, stage, applier, values)
            await until(lambda: a.counters.steps["ref-answers-deferred"] == 3, 10)
            await until(lambda: stage.table.backlog() == 0 and stage.table.applied == stage.table.read, 10)
            assert [manager(stage, p, m) for m in people] == [["M-one"]] * 3
            assert a.counters.deferred == 3 and len(deferred_keys(stage, p)) == 3
            # The take applied, nothing read since: caught up, and what was deferred is applied.
            await stage.release_due()
            assert [manager(stage, p, m) for m in people] == [["M-two"]] * 3
            assert a.counters.deferred == 0 and a.errors == []

            await stop(applier, reader)
            await shut_down((a, stage))

    asyncio.run(scenario())


def test_only_the_answers_of_objects_holding_many_references_are_deferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pipeline.reference_defer_from`` (3 here): while behind, a person's answer (one manager) is applied
    at once, a new group's (four member DNs registered, none resolved yet) deferred. What the worker
    learnt of an object's size holds while it keeps the partition: after the partition is taken again,
    the group's next answers are applied at once (that sync finds four resolved references) and the
    ones after them deferred."""

    def member_dn(i: int) -> str:
        return f"employeeNumber=G{i},ou=people,o=hr"

    def members(stage: MetaverseStage, p: int, mv_id: str) -> list[str]:
        return sorted(held(stage, p, mv_id, "member"))

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            a = runtime(broker.bootstrap, tmp_path, "a", reference_defer_from=3)
            p = 0
            [person] = people_in(a, p, 1)
            group = next(
                g for g in (f"G-{i}" for i in range(60)) if partition_for(g.encode(), a.partitions) == p
            )
            switch = behind_switch(monkeypatch, a)
            switch["behind"] = False
            stage, reader, applier = await owning(a, p)
            await register_managers(a, stage, p, [person])
            topic = a.names.mv_topic()
            async with stage.lock:
                await stage.process(
                    [
                        Ev(
                            Message(topic, p, 100),
                            pack(group_contribution(group, [member_dn(i) for i in range(4)])),
                        )
                    ]
                )
                await stage.checkpoint()
            assert members(stage, p, group) == []

            def member_values(tag: str) -> list[RefValue]:
                return [
                    RefValue(route=in_route("hr", member_dn(i)), value=f"P{tag}-{i}", ts_ms=3)
                    for i in range(4)
                ]

            switch["behind"] = True
            await publish(a, RefValue(route=ROUTE, value="M-one", ts_ms=3), *member_values("a"))
            await until(lambda: manager(stage, p, person) == ["M-one"], 10)
            await until(lambda: a.counters.steps["ref-answers-deferred"] == 4, 10)
            assert manager(stage, p, person) == ["M-one"]
            assert a.counters.steps["ref-answers-deferred"] == 4
            assert members(stage, p, group) == [] and a.counters.deferred == 1
            assert {k.split(b"\x00")[1] for k in deferred_keys(stage, p)} == {group.encode()}

            switch["behind"] = False
            await stage.release_due()
            assert members(stage, p, group) == [f"Pa-{i}" for i in range(4)] and a.counters.deferred == 0

            # The partition taken again: the group's size is not known until a sync tells it.
            async with stage.lock:
                await stage.checkpoint()
                await stage.assigned([p], [])
            switch["behind"] = True
            # All four answers in one take of the applier (in two, the second would find the size known).
            await stop(applier)
            await publish(a, *member_values("b"))
            await until(lambda: stage.table.backlog() == 4, 10)
            applier = asyncio.ensure_future(stage.apply_table())
            await until(lambda: members(stage, p, group) == [f"Pb-{i}" for i in range(4)], 10)
            assert a.counters.steps["ref-answers-deferred"] == 4
            await publish(a, *member_values("c"))
            await until(lambda: a.counters.steps["ref-answers-deferred"] == 8, 10)
            assert a.counters.steps["ref-answers-deferred"] == 8
            assert members(stage, p, group) == [f"Pb-{i}" for i in range(4)] and a.counters.deferred == 1
            assert a.errors == []

            await stop(applier, reader)
            await shut_down((a, stage))

    asyncio.run(scenario())
